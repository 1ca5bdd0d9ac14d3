"""User errors end in one clear message and a non-zero exit from ``clzoo-run``, never in a traceback."""
from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from clzoo.config import compose
from clzoo.engine import run
from clzoo.methods import Method, NonFiniteLossError
from conftest import TESTS_DIR, error_line


class NaNFromSecondTask(Method):
    """Fine-tuning whose loss turns NaN as soon as it trains task 1 (a stand-in for a diverging method)."""

    def observe(self, x, y, task_id):
        loss = F.cross_entropy(self.model(self.augment(x)), y)
        if task_id >= 1:
            loss = loss * float("nan")
        return self.step(loss)


def test_unknown_method_lists_the_valid_ones(cli, run_dir):
    proc = cli("method=nope", f"hydra.run.dir={run_dir}")
    assert proc.returncode != 0
    assert "Could not find 'method/nope'" in proc.stderr
    assert "Available options in 'method'" in proc.stderr
    for name in ("er", "finetune", "joint"):
        assert f"\t{name}\n" in proc.stderr
    assert "Traceback" not in proc.stderr and not run_dir.exists()


def test_unknown_stream_lists_the_valid_ones(cli, run_dir):
    proc = cli("stream=nope", f"hydra.run.dir={run_dir}")
    assert proc.returncode != 0
    assert "Could not find 'stream/nope'" in proc.stderr
    for name in ("split_digits", "split_mnist", "perm_mnist"):
        assert f"\t{name}\n" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_dataset_names_the_folder_and_the_layout(cli, run_dir, tmp_path):
    empty = tmp_path / "empty_data"
    empty.mkdir()
    proc = cli("stream=split_mnist", f"data.root={empty}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert f"MNIST not found under {empty}/MNIST/raw" in line
    assert "train-images-idx3-ubyte" in line and "t10k-labels-idx1-ubyte" in line and "data.root" in line


def test_impossible_split(cli, run_dir, digits_root):
    proc = cli("stream.n_tasks=3", f"data.root={digits_root}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert "cannot split 10 classes into 3 equal tasks" in line and "choose n_tasks in [1, 2, 5, 10]" in line


def test_budget_too_small(cli, run_dir, digits_root):
    proc = cli("method=er", "budget.mb=0.00001", "method.buffer.capacity=auto", f"data.root={digits_root}",
               f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert "budget.mb=1e-05 (10 bytes) is too small for er" in line
    assert "16 counted bytes" in line and "raise budget.mb to at least 0.0001" in line


def test_nan_loss_names_task_and_step_and_keeps_completed_checkpoints(cli, run_dir, digits_root):
    # task 0 trains normally (50 samples, batch 10: global steps 0-4); task 1's first step (step 5) is NaN
    proc = cli("method=finetune", "method._target_=test_errors.NaNFromSecondTask", "stream.train_per_task=50",
               "log.plots=false", "log.tensorboard=false", f"data.root={digits_root}", f"hydra.run.dir={run_dir}",
               env={"PYTHONPATH": str(TESTS_DIR)})
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "loss became nan at task 1, step 5" in line and "lower trainer.optimizer.lr" in line
    assert [p.name for p in (run_dir / "checkpoints").glob("task_*.pt")] == ["task_000.pt"]
    assert [r["after_task"] for r in csv.DictReader((run_dir / "metrics.csv").open())] == ["0"]
    assert not (run_dir / "results.json").exists()


def test_exploding_learning_rate_is_caught(tmp_path):
    cfg = compose(["log.progress=false", "log.tensorboard=false", "log.plots=false", "trainer.num_threads=1",
                   "stream.train_per_task=50", "trainer.optimizer.lr=1e30"])
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at task 0, step \d+"):
        run(cfg, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nan_via_python_api_keeps_task_0(tmp_path):
    cfg = compose(["log.progress=false", "log.tensorboard=false", "log.plots=false", "trainer.num_threads=1",
                   "stream.train_per_task=30", "method=finetune"])
    cfg["method"]["_target_"] = f"{__name__}.NaNFromSecondTask"
    with pytest.raises(NonFiniteLossError, match="at task 1, step 3"):
        run(cfg, tmp_path / "run", show_progress=False)
    state = torch.load(tmp_path / "run" / "checkpoints" / "task_000.pt", weights_only=False)
    assert state["task_id"] == 0 and len(state["progress"]["R"]) == 1
