"""Runs that cannot mix or lose work: one run per folder (a lock), resume from the newest intact checkpoint,
no temporary files left behind, an unwritable checkpoints/ folder refused before training, the thread count in
the configuration hash, non-finite training inside a method's own loops, and a budget violation before
training recorded."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clzoo.config import compose
from clzoo.engine import run
from clzoo.engine.checkpoint import atomic_torch_save, load_checkpoint
from clzoo.engine.lock import RunDirBusyError, RunDirError
from clzoo.engine.runner import ResumeError
from clzoo.methods import NonFiniteLossError
from conftest import QUIET, error_line

TINY = QUIET + ["stream.train_per_task=60", "stream.test_per_task=30", "log.tensorboard=false", "log.plots=false"]

LOCK_PY = Path(__file__).parents[1] / "clzoo" / "engine" / "lock.py"
# the lock module alone (no torch import: the holder is ready in a fraction of a second)
HOLD = ("import importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('lock', {str(LOCK_PY)!r})\n"
        "lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock)\n"
        "with lock.run_dir_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n")


@pytest.fixture
def holder():
    """``holder(folder)`` starts a process that holds ``folder``'s run lock (killed at the end)."""
    procs = []

    def start(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def partial_tiny(tmp_path_factory):
    """A run stopped after 3 of 5 tasks (its folder is copied by the tests that damage it) and the full run."""
    base = tmp_path_factory.mktemp("partial")
    run(compose(TINY + ["seed=0", "trainer.max_tasks=3"]), base / "run", show_progress=False)
    full = run(compose(TINY + ["seed=0"]), base / "full", show_progress=False)
    return base / "run", full


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".clzoo.lock"))
    return dst


# ------------------------------------------------------------------------------------------------- the lock
def test_second_run_in_a_locked_folder_fails_at_once(holder, tmp_path):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    with pytest.raises(RunDirBusyError, match=rf"{run_dir} is in use by another run \(pid {proc.pid} .*hydra.run.dir"):
        run(compose(TINY), run_dir, show_progress=False)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "results.json").exists()
    proc.send_signal(signal.SIGKILL)  # the lock dies with its process
    proc.wait()
    assert run(compose(TINY + ["trainer.max_tasks=1"]), run_dir, show_progress=False)["completed_tasks"] == 1


def test_clzoo_run_in_a_busy_folder_leaves_the_first_runs_files_alone(holder, cli, tmp_path):
    run_dir = tmp_path / "run"
    holder(run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0  # the first run's\n")
    res = cli("seed=1", f"hydra.run.dir={run_dir}")
    assert res.returncode == 2
    assert "is in use by another run" in error_line(res.stderr)
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "seed: 0  # the first run's\n"
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml"]


# ------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_resume_falls_back_to_the_previous_intact_checkpoint(partial_tiny, tmp_path, capsys, damage):
    src, full = partial_tiny
    run_dir = copy_run(src, tmp_path / "run")
    last = run_dir / "checkpoints" / "task_002.pt"
    data = bytearray(last.read_bytes())
    if damage == "truncate":
        last.write_bytes(bytes(data[: len(data) // 2]))
    else:  # bytes altered inside the file: torch.load would read it; the digest does not match
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
        last.write_bytes(bytes(data))
    capsys.readouterr()
    resumed = run(compose(TINY + ["seed=0", "resume=true"]), run_dir, show_progress=False)
    out = capsys.readouterr().out
    assert "checkpoint task_002.pt is damaged" in out and "set aside as task_002.pt.damaged" in out
    assert "resuming from the previous intact checkpoint, task_001.pt" in out
    assert f"resuming {run_dir} after task 1" in out
    assert resumed["status"] == "complete"
    assert resumed["acc_matrix"] == full["acc_matrix"]  # exact: task 2 trained again from task 1's state
    assert (run_dir / "checkpoints" / "task_002.pt.damaged").is_file()
    load_checkpoint(run_dir / "checkpoints" / "task_002.pt")  # the new one verifies


def test_resume_with_every_checkpoint_damaged_says_so(partial_tiny, tmp_path):
    run_dir = copy_run(partial_tiny[0], tmp_path / "run")
    for ckpt in (run_dir / "checkpoints").glob("task_*.pt"):
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ResumeError, match=r"no intact checkpoint to resume from \(the 3 found are damaged.*resume=false"):
        run(compose(TINY + ["seed=0", "resume=true"]), run_dir, show_progress=False)


def test_temporary_files_are_removed_on_the_next_start(partial_tiny, tmp_path, capsys):
    run_dir = copy_run(partial_tiny[0], tmp_path / "run")
    left = [run_dir / "checkpoints" / ".task_003.pt.tmp-99999", run_dir / ".results.json.tmp-4242",
            run_dir / ".metrics.csv.tmp-17"]
    for f in left:
        f.write_bytes(b"\x00" * 1000)
    run(compose(TINY + ["seed=0", "resume=true"]), run_dir, show_progress=False)
    assert "removed 3 temporary file(s)" in capsys.readouterr().out
    assert not any(f.exists() for f in left)
    assert not list(run_dir.rglob("*.tmp-*"))


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full_disk(obj, fh):
        fh.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_torch_save({"a": 1}, tmp_path / "checkpoints" / "task_000.pt")
    assert list((tmp_path / "checkpoints").iterdir()) == []


def _make_unwritable(folder: Path):
    """Make ``folder`` unwritable even for root (chattr +i), else by permissions; returns the undo, or None."""
    if os.geteuid() == 0:
        if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
            return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)
        return None
    folder.chmod(0o555)
    return lambda: folder.chmod(0o755)


def test_unwritable_checkpoints_folder_fails_before_training(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    undo = _make_unwritable(run_dir / "checkpoints")
    if undo is None:
        pytest.skip("cannot make a folder unwritable here (root without chattr)")
    try:
        with pytest.raises(RunDirError, match=r"cannot write to .*checkpoints .*make it writable"):
            run(compose(TINY), run_dir, show_progress=False)
    finally:
        undo()
    assert "task 0" not in capsys.readouterr().out  # nothing was trained


# ------------------------------------------------------------------------------------------------- threads
def test_thread_count_is_part_of_the_hash_and_resume_refuses_another(tmp_path):
    run_dir = tmp_path / "run"
    one = run(compose(TINY + ["trainer.max_tasks=1"]), run_dir, show_progress=False)  # QUIET: 1 thread
    assert one["num_threads"] == 1
    before = torch.get_num_threads()
    try:
        with pytest.raises(ResumeError, match=r"trained with 1 CPU threads and this run has 2.*trainer.num_threads=1"):
            run(compose(TINY + ["trainer.num_threads=2", "resume=true"]), run_dir, show_progress=False)
    finally:
        torch.set_num_threads(before)
    two = run(compose(TINY + ["trainer.max_tasks=1", "trainer.num_threads=2"]), tmp_path / "two", show_progress=False)
    torch.set_num_threads(before)
    assert two["config_hash"] != one["config_hash"] and two["num_threads"] == 2


# ------------------------------------------------------------------------------------------------- non-finite
def test_gdumb_diverging_refit_stops_with_the_nan_error(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose(TINY + ["method=gdumb", "method.fit_epochs=2", "trainer.optimizer.lr=1e6"])
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at task 0, GDumb's refit on the memory"):
        run(cfg, run_dir, show_progress=False)
    results = run_dir / "results.json"
    assert not results.exists() or json.loads(results.read_text())["status"] != "complete"
    assert not list((run_dir / "checkpoints").glob("task_*.pt"))  # the NaN model was never saved


def test_lwf_diverging_warm_up_stops_with_the_nan_error(tmp_path):
    cfg = compose(TINY + ["method=lwf", "trainer.optimizer.lr=1e12", "trainer.max_tasks=2"])
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at task (0|1)"):
        run(cfg, tmp_path / "run", show_progress=False)


def test_a_plugin_loop_without_the_helper_is_caught_after_end_task(tmp_path, monkeypatch):
    from clzoo.methods.baselines.finetune import Finetune

    def end_task(self, task):  # a method's own fitting that diverged without reporting a loss
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Finetune, "end_task", end_task)
    with pytest.raises(NonFiniteLossError, match=r"parameter model\..* became NaN or infinite at task 0, after end_task"):
        run(compose(TINY + ["method=finetune"]), tmp_path / "run", show_progress=False)


def test_the_parameter_check_reads_the_device_once_and_names_the_bad_parameter():
    from test_acceleration import HostReads  # the suite's counter of reads that make the host wait for a GPU

    from clzoo.methods.base import check_parameters_finite

    net = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(6)))
    with HostReads() as reads:
        check_parameters_finite(net, 3, "after end_task")
    assert reads.calls == ["__bool__"]  # 12 parameter tensors, one read
    with torch.no_grad():
        net[4].bias[2] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"^parameter 4\.bias became NaN or infinite at task 3, after end_task;"):
        check_parameters_finite(net, 3, "after end_task")


# ------------------------------------------------------------------------------------------------- budget
def test_unenforced_budget_records_the_violation_before_training(tmp_path):
    cfg = compose(TINY + ["method=er", "method.buffer.capacity=500", "budget.mb=0.01", "budget.enforce=false",
                          "trainer.max_tasks=1"])
    results = run(cfg, tmp_path / "run", show_progress=False)
    violations = results["memory"]["violations"]
    assert violations[0].startswith("memory over budget before training")
    assert violations[1].startswith("memory over budget after task 0")
