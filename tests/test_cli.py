"""``clzoo-run`` end to end, as a user runs it: one run folder with everything, and a Hydra multirun sweep.
(``python -m clzoo`` is exercised by test_ledger.py::test_cli_sizes_the_auto_buffer_from_the_budget.)"""
from __future__ import annotations

import csv
import json

import pytest

from clzoo.engine import metrics as M

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_default_run_writes_every_artifact(cli, run_dir):
    proc = cli(f"hydra.run.dir={run_dir}")  # the default job: split_digits, er, seed 0
    assert proc.returncode == 0, proc.stderr
    assert f"results: {run_dir}/results.json" in proc.stdout and "final accuracy" in proc.stdout

    results = json.loads((run_dir / "results.json").read_text())
    for key in ("config", "seed", "versions", "stream", "method", "acc_matrix", "acc_matrix_task_il", "metrics",
                "time", "memory"):
        assert key in results, key
    assert results["seed"] == 0 and results["config"]["seed"] == 0 and results["method"] == "er"
    assert results["config"]["stream"]["name"] == "split_digits"
    assert {"clzoo", "python", "torch"} <= set(results["versions"])
    stream = results["stream"]
    assert (stream["name"], stream["n_tasks"], stream["scenario"]) == ("split_digits", 5, "class_il")
    assert stream["class_order"] == list(range(10))

    T = 5
    for name in ("acc_matrix", "acc_matrix_task_il"):
        R = results[name]
        assert len(R) == T and all(len(row) == T and all(0.0 <= a <= 1.0 for a in row) for row in R)
    R, R_til = results["acc_matrix"], results["acc_matrix_task_il"]
    assert all(R[i][j] == 0.0 for i in range(T) for j in range(i + 1, T))  # unseen classes are masked out
    assert sum(R_til[i][i] for i in range(T)) / T > 0.8  # each task is learnt when it is trained

    metrics = results["metrics"]
    assert set(metrics) >= {"final_acc", "final_acc_task_il", "avg_incremental_acc", "forgetting", "bwt", "fwt"}
    assert metrics["final_acc"] == pytest.approx(M.final_accuracy(R))
    assert metrics["final_acc_task_il"] == pytest.approx(M.final_accuracy(R_til))
    assert metrics["avg_incremental_acc"] == pytest.approx(M.average_incremental_accuracy(R))
    assert metrics["forgetting"] == pytest.approx(M.forgetting(R))
    assert metrics["bwt"] == pytest.approx(M.backward_transfer(R))
    assert metrics["fwt"] == pytest.approx(M.forward_transfer(R, results["acc_init"]))

    timing = results["time"]
    assert timing["train_s"] > 0 and timing["eval_s"] > 0 and len(timing["per_task_s"]) == T
    assert timing["train_s"] == pytest.approx(sum(timing["per_task_s"]))
    memory = results["memory"]
    # er keeps 500 digits: 500 x 64 bytes of uint8 images, 500 x (2 + 2) bytes of labels and task ids + 16
    assert memory["by_category"]["exemplars"] == 32_000 and memory["by_category"]["exemplar_extras"] == 2_016
    assert memory["budgeted_bytes"] == 34_016 and len(memory["per_task"]) == T and memory["violations"] == []

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["after_task"]) for r in rows] == list(range(T))
    assert float(rows[-1]["avg_acc"]) == pytest.approx(metrics["final_acc"], abs=1e-6)
    assert all(int(r["memory_bytes"]) == memory["total_bytes"] for r in rows)

    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    for png in ("accuracy_curve.png", "acc_matrix.png", "forgetting.png"):
        assert (run_dir / png).read_bytes()[:8] == PNG_MAGIC, png
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == [f"task_{t:03d}.pt" for t in range(T)]


def test_multirun_sweeps_seeds(cli, tmp_path, digits_root):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "seed=0,1", "stream.train_per_task=50", "stream.test_per_task=30", "log.plots=false",
               "log.tensorboard=false", f"data.root={digits_root}", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_er_seed0", "1_er_seed1"]
    results = [json.loads((job / "results.json").read_text()) for job in jobs]
    assert [r["seed"] for r in results] == [0, 1]
    assert all(r["stream"]["train_sizes"] == [50] * 5 and len(r["acc_matrix"]) == 5 for r in results)
    assert results[0]["acc_matrix"] != results[1]["acc_matrix"]  # the training seed matters
