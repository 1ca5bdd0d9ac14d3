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


def test_multirun_sweeps_seeds_and_ends_with_a_table(cli, tmp_path, digits_root):
    """Every swept key is in the sub-folder names, and the sweep ends with mean +- std over seeds per
    configuration (printed, and written as sweep_summary.md / .csv)."""
    import statistics

    sweep = tmp_path / "sweep"
    proc = cli("-m", "seed=0,1", "budget.mb=0.02,0.05", "stream.train_per_task=50", "stream.test_per_task=30",
               "log.plots=false", "log.tensorboard=false", f"data.root={digits_root}", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("_")[0]))
    assert [p.name for p in jobs] == [
        f"{n}_budget.mb={mb},seed={seed},stream.test_per_task=30,stream.train_per_task=50"
        for n, (seed, mb) in enumerate([(0, 0.02), (0, 0.05), (1, 0.02), (1, 0.05)])]
    results = [json.loads((job / "results.json").read_text()) for job in jobs]
    assert [r["seed"] for r in results] == [0, 0, 1, 1]
    assert all(r["stream"]["train_sizes"] == [50] * 5 and len(r["acc_matrix"]) == 5 for r in results)
    assert results[0]["acc_matrix"] != results[2]["acc_matrix"]  # the training seed matters
    assert all((job / "cli.log").read_text().count("final accuracy") == 1 for job in jobs)

    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [r["budget.mb"] for r in rows] == ["0.02", "0.05"] and all(r["seeds"] == "0,1" for r in rows)
    for row, (a, b) in zip(rows, [(0, 2), (1, 3)]):
        accs = [100 * results[k]["metrics"]["final_acc"] for k in (a, b)]
        assert row["final acc"] == f"{statistics.fmean(accs):.2f} +- {statistics.stdev(accs):.2f}"
        mem = (results[a]["memory"]["total_bytes"] + results[b]["memory"]["total_bytes"]) / 2 / 2**20
        assert row["memory MB"] == f"{mem:.3f}" and row["view"] == "class-IL" and row["status"] == "2 complete"
    assert "sweep summary" in proc.stdout and rows[0]["final acc"] in proc.stdout
    md_rows = [ln for ln in (sweep / "sweep_summary.md").read_text().splitlines() if ln.startswith("| 0.0")]
    assert len(md_rows) == 2


def test_leaderboard_sweep_builds_the_table_from_any_folder(tmp_path):
    """``clzoo-leaderboard sweep FOLDER`` on runs that were not made by a sweep (hand-made results)."""
    from clzoo.leaderboard.cli import main

    def fake(folder, method, seed, acc, til=0.9):
        folder.mkdir(parents=True)
        R = [[acc, 0.0], [acc, acc]]
        res = {"config": {"seed": seed, "method": {"_target_": method}, "log": {"plots": seed == 0},
                          "_choices": {"method": method, "stream": "s"}},
               "seed": seed, "status": "complete", "stream": {"scenario": "task_il"},
               "metrics": M.all_metrics(R, [0, 0]) | M.all_metrics([[til, til], [til, til]], [0, 0], "_task_il"),
               "memory": {"total_bytes": 2**20}}
        (folder / "results.json").write_text(json.dumps(res))

    fake(tmp_path / "a" / "1", "er", 0, 0.5, til=0.8)
    fake(tmp_path / "a" / "2", "er", 1, 0.7, til=0.9)
    fake(tmp_path / "b", "der", 0, 0.6)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    assert main(["sweep", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    assert [(r["method"], r["seeds"], r["view"]) for r in rows] == [("er", "0,1", "task-IL"), ("der", "0", "task-IL")]
    assert rows[0]["final acc"] == "85.00 +- 7.07" and rows[0]["other view: final acc"] == "60.00 +- 14.14"
    assert "c: boom" in (tmp_path / "sweep_summary.md").read_text()
