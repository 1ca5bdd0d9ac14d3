"""Continual-learning metrics from an accuracy matrix.

``R[i][j]`` is the accuracy (fraction, 0..1) on task ``j``'s test set after training task ``i``;
``R0[j]`` is the accuracy on task ``j`` of the model before any training (its initialisation).

* final accuracy       ``A_T = mean_j R[T-1][j]``
* average incremental  ``mean_i ( mean_{j<=i} R[i][j] )`` (the mean over steps of the accuracy on tasks seen)
* forgetting           ``mean_{j<T-1} ( max_{j<=i<T-1} R[i][j] - R[T-1][j] )`` (Chaudhry et al., 2018)
* BWT                  ``mean_{j<T-1} ( R[T-1][j] - R[j][j] )`` (Lopez-Paz & Ranzato, 2017)
* FWT                  ``mean_{j>=1} ( R[j-1][j] - R0[j] )``: how much training on tasks before ``j`` helps task
  ``j`` compared with the untrained model (GEM's definition with the initial model as reference)

* seen-sample accuracy  ``A^seen_i = sum_{j<=i} n_j R[i][j] / sum_{j<=i} n_j`` with ``n_j`` the test samples of task
  ``j``: the accuracy over every test sample of the classes seen so far, which the non-exemplar class-incremental
  papers (PASS, NAPA-VQ, PyCIL) report; its mean over steps is their "average incremental accuracy"
  (``avg_incremental_acc_seen``). It differs from the task mean when tasks differ in size (a large first task).

Forgetting, BWT and FWT are ``None`` for a single-task stream.
"""
from __future__ import annotations

from typing import Sequence


def final_accuracy(R: Sequence[Sequence[float]]) -> float:
    last = R[-1]
    return sum(last) / len(last)


def average_incremental_accuracy(R: Sequence[Sequence[float]]) -> float:
    steps = [sum(R[i][: i + 1]) / (i + 1) for i in range(len(R))]
    return sum(steps) / len(steps)


def seen_accuracy_curve(R: Sequence[Sequence[float]], sizes: Sequence[int]) -> list[float]:
    """Accuracy over all test samples of the tasks seen, after each step (tasks weighted by ``sizes``)."""
    return [sum(n * a for n, a in zip(sizes[: i + 1], R[i][: i + 1])) / max(sum(sizes[: i + 1]), 1)
            for i in range(len(R))]


def forgetting(R: Sequence[Sequence[float]]) -> float | None:
    T = len(R)
    if T < 2:
        return None
    drops = [max(R[i][j] for i in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)]
    return sum(drops) / len(drops)


def forgetting_per_task(R: Sequence[Sequence[float]]) -> list[float]:
    """Best-minus-final per task (0 for the last task)."""
    T = len(R)
    return [max(R[i][j] for i in range(j, T - 1)) - R[T - 1][j] if j < T - 1 else 0.0 for j in range(T)]


def backward_transfer(R: Sequence[Sequence[float]]) -> float | None:
    T = len(R)
    if T < 2:
        return None
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forward_transfer(R: Sequence[Sequence[float]], R0: Sequence[float]) -> float | None:
    T = len(R)
    if T < 2:
        return None
    return sum(R[j - 1][j] - R0[j] for j in range(1, T)) / (T - 1)


def all_metrics(R, R0, suffix: str = "", sizes: Sequence[int] | None = None) -> dict[str, float | None]:
    """Every metric of ``R``; with the tasks' test sizes ``sizes`` also the seen-sample ones (``*_seen``)."""
    seen = {}
    if sizes is not None:
        curve = seen_accuracy_curve(R, sizes)
        seen = {f"final_acc_seen{suffix}": curve[-1], f"avg_incremental_acc_seen{suffix}": sum(curve) / len(curve)}
    return {**seen,
        f"final_acc{suffix}": final_accuracy(R),
        f"avg_incremental_acc{suffix}": average_incremental_accuracy(R),
        f"forgetting{suffix}": forgetting(R),
        f"bwt{suffix}": backward_transfer(R),
        f"fwt{suffix}": forward_transfer(R, R0),
    }
