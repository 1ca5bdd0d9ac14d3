"""Checkpoints and resume: a run killed with SIGKILL resumes to exactly the results of an uninterrupted run;
runs are reproducible from their seed; half-written files are ignored; a changed configuration is refused."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from clzoo.config import compose
from clzoo.engine import run
from clzoo.engine.checkpoint import BackgroundCheckpoints, checkpoint_path, checkpoints, load_checkpoint
from clzoo.engine.runner import ResumeError
from conftest import QUIET

TINY = QUIET + ["stream.train_per_task=60", "stream.test_per_task=30", "log.tensorboard=false", "log.plots=false"]


def final_state(run_dir) -> dict:
    last = sorted((run_dir / "checkpoints").glob("task_*.pt"))[-1]
    return torch.load(last, weights_only=False)["method"]


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


@pytest.fixture(scope="module")
def full_tiny(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    return run(compose(TINY + ["seed=0"]), run_dir, show_progress=False), run_dir


def test_killed_run_resumes_to_the_uninterrupted_results(popen_cli, cli, run_dir, tmp_path, digits_root):
    # 10 epochs per task (~290 steps): long enough that the kill lands before the run ends
    args = ["trainer.epochs=10", "stream.test_per_task=40", "log.plots=false", "log.tensorboard=false",
            f"data.root={digits_root}", "seed=3"]
    proc = popen_cli(*args, f"hydra.run.dir={run_dir}")
    first = run_dir / "checkpoints" / "task_000.pt"
    deadline = time.monotonic() + 240
    while not first.exists():
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("task_*.pt"))
    assert kept[0] == "task_000.pt" and len(kept) < 5, kept  # killed part-way
    assert not (run_dir / "results.json").exists()

    resumed = cli(*args, f"hydra.run.dir={run_dir}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} after task {len(kept) - 1}" in resumed.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete" and len(results["acc_matrix"]) == 5

    reference = run(compose(QUIET + args), tmp_path / "reference", show_progress=False)
    assert results["acc_matrix"] == reference["acc_matrix"]  # exactly, not approximately
    assert results["acc_matrix_task_il"] == reference["acc_matrix_task_il"]
    assert results["acc_init"] == reference["acc_init"]
    assert states_equal(final_state(run_dir), final_state(tmp_path / "reference"))



def test_same_seed_gives_identical_results_and_another_seed_differs(full_tiny, tmp_path):
    full, full_dir = full_tiny
    again = run(compose(TINY + ["seed=0"]), tmp_path / "again", show_progress=False)
    assert again["acc_matrix"] == full["acc_matrix"] and again["acc_matrix_task_il"] == full["acc_matrix_task_il"]
    assert states_equal(final_state(tmp_path / "again"), final_state(full_dir))
    other = run(compose(TINY + ["seed=1"]), tmp_path / "other", show_progress=False)
    assert other["acc_matrix"] != full["acc_matrix"]
    assert not states_equal(final_state(tmp_path / "other"), final_state(full_dir))


def test_partial_run_with_half_written_checkpoint_resumes_exactly(full_tiny, tmp_path):
    full, _ = full_tiny
    run_dir = tmp_path / "partial"
    partial = run(compose(TINY + ["seed=0", "trainer.max_tasks=2"]), run_dir, show_progress=False)
    assert partial["status"] == "partial" and partial["completed_tasks"] == 2
    # what a crash in the middle of writing task 2's checkpoint leaves behind
    (run_dir / "checkpoints" / ".task_002.pt.tmp-99999").write_bytes(b"PK\x03\x04 truncated")
    (run_dir / "checkpoints" / "task_002.pt.tmp").write_bytes(b"\x00" * 10)
    resumed = run(compose(TINY + ["seed=0", "resume=true"]), run_dir, show_progress=False)
    assert resumed["status"] == "complete"
    assert resumed["acc_matrix"] == full["acc_matrix"] and resumed["acc_matrix_task_il"] == full["acc_matrix_task_il"]
    assert resumed["time"]["per_task_s"][:2] == partial["time"]["per_task_s"]  # tasks 0-1 were not trained again


def test_resume_with_a_different_config_raises(full_tiny, tmp_path):
    run_dir = tmp_path / "changed"
    run(compose(TINY + ["seed=0", "trainer.max_tasks=1"]), run_dir, show_progress=False)
    for change in ("seed=1", "trainer.optimizer.lr=0.2", "method.minibatch_size=5"):
        with pytest.raises(ResumeError, match=r"holds a run with a different configuration .*same overrides"):
            run(compose(TINY + ["seed=0", change, "resume=true"]), run_dir, show_progress=False)
    assert [p.name for p in (run_dir / "checkpoints").glob("task_*.pt")] == ["task_000.pt"]  # left as it was


def test_resume_without_checkpoint_starts_from_scratch(full_tiny, tmp_path):
    full, _ = full_tiny
    fresh = run(compose(TINY + ["seed=0", "resume=true"]), tmp_path / "fresh", show_progress=False)
    assert fresh["acc_matrix"] == full["acc_matrix"]


def test_fresh_run_in_a_used_folder_drops_the_old_checkpoints(full_tiny, tmp_path):
    full, _ = full_tiny
    run_dir = tmp_path / "reused"
    run(compose(TINY + ["seed=1"]), run_dir, show_progress=False)  # an earlier, complete run with another seed
    assert len(list((run_dir / "checkpoints").glob("task_*.pt"))) == 5
    run(compose(TINY + ["seed=0", "trainer.max_tasks=1"]), run_dir, show_progress=False)  # fresh, stops early
    assert [p.name for p in (run_dir / "checkpoints").glob("task_*.pt")] == ["task_000.pt"]
    resumed = run(compose(TINY + ["seed=0", "resume=true"]), run_dir, show_progress=False)
    assert resumed["acc_matrix"] == full["acc_matrix"]  # continued the new run, not the old one


def test_background_checkpoint_holds_the_state_when_submitted(tmp_path):
    """The writer works on a snapshot: weights and progress changed after submit() (the next task training) are
    not in the file; the files appear in task order and keep_last prunes as the synchronous write does."""
    net = torch.nn.Linear(3, 2)
    progress = {"R": [[0.5]]}
    writer = BackgroundCheckpoints()
    expected = []
    for task in range(3):
        expected.append(net.weight.detach().clone())
        writer.submit(tmp_path, task, net.state_dict(), progress, keep_last=2)
        with torch.no_grad():
            net.weight.add_(1.0)
        progress["R"].append([0.6 + task])
    writer.close()
    assert [p.name for p in checkpoints(tmp_path)] == ["task_001.pt", "task_002.pt"]
    for task in (1, 2):
        ckpt = load_checkpoint(checkpoint_path(tmp_path, task))
        assert torch.equal(ckpt["method"]["weight"], expected[task])
        assert ckpt["progress"]["R"] == [[0.5]] + [[0.6 + t] for t in range(task)]
        assert hasattr(ckpt["method"], "_metadata")  # the state dict's version information is kept


def test_background_checkpoint_failure_surfaces(tmp_path):
    occupied = tmp_path / "run"
    occupied.write_text("a file where the run folder should be")
    writer = BackgroundCheckpoints()
    writer.submit(occupied, 0, {"w": torch.zeros(2)}, {})
    with pytest.raises(OSError):
        writer.close()
