"""Metrics from an accuracy matrix R[i][j] (after task i, on task j), against numbers worked out by hand."""
from __future__ import annotations

import csv

import pytest

from clzoo.engine import metrics as M
from clzoo.engine.reporting import summary, write_metrics_csv

# R[i][j]; task 0's accuracy *rises* after task 1 (0.9 -> 0.95), so forgetting (best - final) and BWT
# (diagonal - final) differ
R = [[0.90, 0.10, 0.20],
     [0.95, 0.80, 0.30],
     [0.50, 0.50, 0.70]]
R0 = [0.10, 0.20, 0.05]  # the untrained model

# by hand:
#   final               (0.5 + 0.5 + 0.7) / 3                              = 0.566667
#   avg incremental     (0.9 + (0.95 + 0.8) / 2 + 1.7 / 3) / 3 = (0.9 + 0.875 + 0.566667) / 3 = 0.780556
#   forgetting          ((max(0.9, 0.95) - 0.5) + (0.8 - 0.5)) / 2 = (0.45 + 0.3) / 2 = 0.375
#   BWT                 ((0.5 - 0.9) + (0.5 - 0.8)) / 2 = (-0.4 - 0.3) / 2 = -0.35
#   FWT                 ((0.1 - 0.2) + (0.3 - 0.05)) / 2 = (-0.1 + 0.25) / 2 = 0.075
EXPECTED = {"final_acc": 0.566667, "avg_incremental_acc": 0.780556, "forgetting": 0.375, "bwt": -0.35,
            "fwt": 0.075}

# a class-IL-like matrix: nothing known of a task before it is trained, heavy forgetting
R_CIL = [[1.0, 0.0, 0.0],
         [0.2, 0.9, 0.0],
         [0.1, 0.3, 0.8]]
# final (0.1 + 0.3 + 0.8) / 3 = 0.4; avg incremental (1.0 + 0.55 + 0.4) / 3 = 0.65;
# forgetting ((1.0 - 0.1) + (0.9 - 0.3)) / 2 = 0.75; BWT ((0.1 - 1.0) + (0.3 - 0.9)) / 2 = -0.75; FWT 0
EXPECTED_CIL = {"final_acc": 0.4, "avg_incremental_acc": 0.65, "forgetting": 0.75, "bwt": -0.75, "fwt": 0.0}


@pytest.mark.parametrize("matrix, init, expected", [(R, R0, EXPECTED), (R_CIL, [0.0] * 3, EXPECTED_CIL)])
def test_metrics_match_hand_computed_values(matrix, init, expected):
    got = M.all_metrics(matrix, init)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert M.final_accuracy(matrix) == pytest.approx(expected["final_acc"], abs=1e-6)
    assert M.average_incremental_accuracy(matrix) == pytest.approx(expected["avg_incremental_acc"], abs=1e-6)
    assert M.forgetting(matrix) == pytest.approx(expected["forgetting"], abs=1e-6)
    assert M.backward_transfer(matrix) == pytest.approx(expected["bwt"], abs=1e-6)
    assert M.forward_transfer(matrix, init) == pytest.approx(expected["fwt"], abs=1e-6)


def test_forgetting_per_task_and_suffix():
    assert M.forgetting_per_task(R) == pytest.approx([0.45, 0.3, 0.0])
    assert M.forgetting_per_task(R_CIL) == pytest.approx([0.9, 0.6, 0.0])
    til = M.all_metrics(R, R0, "_task_il")
    assert set(til) == {"final_acc_task_il", "avg_incremental_acc_task_il", "forgetting_task_il", "bwt_task_il",
                        "fwt_task_il"}
    assert til["bwt_task_il"] == pytest.approx(-0.35)


def test_single_task_stream_has_no_forgetting_bwt_fwt():
    got = M.all_metrics([[0.7]], [0.1])
    assert got == {"final_acc": pytest.approx(0.7), "avg_incremental_acc": pytest.approx(0.7), "forgetting": None,
                   "bwt": None, "fwt": None}
    assert M.forgetting_per_task([[0.7]]) == [0.0]


def test_metrics_csv_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics_csv(path, R, R_CIL, [1.5, 2.0, 2.5], [100, 200, 300])
    rows = list(csv.DictReader(path.open()))
    assert [r["after_task"] for r in rows] == ["0", "1", "2"]
    # average over the tasks seen so far: 0.9, (0.95 + 0.8) / 2, 1.7 / 3
    assert [float(r["avg_acc"]) for r in rows] == pytest.approx([0.9, 0.875, 0.566667], abs=1e-6)
    assert [float(r["avg_acc_task_il"]) for r in rows] == pytest.approx([1.0, 0.55, 0.4], abs=1e-6)
    assert [int(r["memory_bytes"]) for r in rows] == [100, 200, 300]
    assert float(rows[1]["acc_task_0"]) == pytest.approx(0.95) and float(rows[2]["acc_task_il_1"]) == pytest.approx(0.3)


def test_summary_prints_the_matrix_and_na_for_single_task():
    results = {"acc_matrix": [[0.7]], "method": "er", "seed": 0,
               "stream": {"name": "s", "scenario": "class_il", "n_tasks": 1},
               "metrics": M.all_metrics([[0.7]], [0.0]) | M.all_metrics([[0.9]], [0.0], "_task_il"),
               "memory": {"total_bytes": 2**20, "by_category": {"exemplars": 2**20}, "budget_bytes": None},
               "time": {"train_s": 1.0, "eval_s": 0.5}}
    text = summary(results)
    assert "70.0" in text and "90.00" in text and "n/a" in text and "1.000 MB" in text
