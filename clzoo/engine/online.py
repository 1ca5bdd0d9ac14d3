"""Online and task-free training, and anytime evaluation.

* **Online** (``stream.online=true``): one pass over each task's training samples, in ``trainer.batch_size``
  batches (10 in the online literature). ``stream.train_per_task=N`` keeps a seeded subset of N samples per task
  (the 1,000 samples per task of the GSS / MIR MNIST protocols).
* **Task-free** (``stream.task_free=true``): the method is not told where tasks begin or end. The engine calls
  neither ``begin_task`` nor ``end_task`` and passes ``task_id=None`` to ``observe``; the optimizer is built once,
  before the first batch, and kept for the whole stream (rebuilding it at a boundary would tell the method where
  the boundary is). The engine still knows the boundaries, so evaluation fills the usual per-task accuracy
  matrix. A method declares that it works this way with ``supports_task_free = True``; any other method is
  refused before training.
* **Anytime evaluation** (``trainer.anytime_every=N``): every N training samples, the class-IL accuracy on the
  test sets of the tasks seen so far (over the classes seen so far), so an online run has a curve and not only
  task-end points. ``trainer.anytime_test_per_task=M`` evaluates on the first M test samples of each task (cheaper
  on large models). The points go to ``results.json["anytime"]``, ``anytime.csv``, TensorBoard
  (``anytime/acc_seen`` against samples seen) and ``anytime.png``.

**Resume in the middle of a task.** Checkpoints are written at task ends. A run killed in the middle of a task
(online or not) resumes from the checkpoint of the last completed task and trains the interrupted task again from
its start: the checkpoint holds every RNG state, the method's state and, in task-free mode, the optimizer's
state, so the replayed task is bit-identical to what the uninterrupted run does. The cost is at most one task of
training (one pass online); the anytime points of the interrupted task are recomputed, not duplicated.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from ..models import mask_logits
from .checkpoint import atomic_write_text


class TaskFreeError(ValueError):
    """A method that needs task boundaries was asked to run without them."""


def is_task_free(cfg: dict) -> bool:
    return bool((cfg.get("stream") or {}).get("task_free", False))


def check_task_free(method, cfg: dict) -> None:
    """Refuse task-free mode for a method that has not declared ``supports_task_free``."""
    if is_task_free(cfg) and not getattr(method, "supports_task_free", False):
        name = getattr(method, "method_name", "") or type(method).__name__
        raise TaskFreeError(
            f"method '{name}' needs task boundaries and cannot run with stream.task_free=true; choose a task-free "
            f"method (er, er_ace, der, derpp, gss, mir, tf_mas) or set stream.task_free=false")


def enter_task(method, task, task_free: bool) -> None:
    """Before a task's batches: the usual ``start_task`` (optimizer rebuilt, ``begin_task``), or, task-free, only
    the optimizer built once for the whole stream."""
    if not task_free:
        method.start_task(task)
    elif method.opt is None:
        method.reset_optimizer()


def leave_task(method, task, task_free: bool) -> None:
    if not task_free:
        method.end_task(task)


def save_optimizer(method, progress: dict, task_free: bool) -> None:
    """Task-free runs, and methods that declare ``keeps_optimizer``, keep one optimizer over the stream: its state
    travels in the checkpoint."""
    if (task_free or method.keeps_optimizer) and method.opt is not None:
        progress["optimizer_state"] = method.opt.state_dict()


def restore_optimizer(method, progress: dict, task_free: bool) -> None:
    if (task_free or method.keeps_optimizer) and progress.get("optimizer_state") is not None:
        method.reset_optimizer()
        method.opt.load_state_dict(progress["optimizer_state"])


class Anytime:
    """Accuracy on the seen classes every ``every`` training samples (see the module docstring)."""

    def __init__(self, stream, trainer: dict, device, batch_size: int, writer=None):
        every = trainer.get("anytime_every")
        self.every = int(every) if every else 0
        if self.every < 0:
            raise ValueError(f"trainer.anytime_every must be a positive number of samples or null, got {every}")
        per_task = trainer.get("anytime_test_per_task")
        self.per_task = int(per_task) if per_task else None
        self.stream, self.device, self.writer = stream, device, writer
        self.batch_size = batch_size  # the run's evaluation batch (acceleration.eval_batch_size)

    @property
    def enabled(self) -> bool:
        return self.every > 0

    @torch.no_grad()
    def accuracy(self, method, task_id: int) -> float:
        """Class-IL accuracy on the test sets of tasks 0..task_id, over the classes seen so far."""
        stream = self.stream
        n_seen = stream.n_classes if stream.scenario == "domain_il" else stream.classes_seen(task_id)
        was_training = method.training
        method.eval()
        correct = total = 0
        for task in stream.tasks[: task_id + 1]:
            x_all, y_all = task.x_test[: self.per_task], task.y_test[: self.per_task]
            for i in range(0, len(y_all), self.batch_size):
                x = method.preprocess(x_all[i:i + self.batch_size].to(self.device))
                y = y_all[i:i + self.batch_size].to(self.device)
                correct += (mask_logits(method(x, task_id=None), n_seen).argmax(1) == y).sum().item()
            total += len(y_all)
        method.train(was_training)
        return correct / max(total, 1)

    def after_batch(self, method, task_id: int, progress: dict, n: int) -> None:
        """Count ``n`` more training samples; evaluate when a multiple of ``every`` was crossed."""
        before = progress.get("samples", 0)
        progress["samples"] = before + n
        if not self.enabled or before // self.every == progress["samples"] // self.every:
            return
        acc = self.accuracy(method, task_id)
        progress.setdefault("anytime", []).append([progress["samples"], task_id, acc])
        if self.writer is not None:
            self.writer.add_scalar("anytime/acc_seen", acc, progress["samples"])


def anytime_results(progress: dict, trainer: dict) -> dict | None:
    points = progress.get("anytime")
    if not trainer.get("anytime_every"):
        return None
    points = points or []
    return {"every": int(trainer["anytime_every"]), "test_per_task": trainer.get("anytime_test_per_task"),
            "samples": [p[0] for p in points], "task": [p[1] for p in points], "acc": [p[2] for p in points]}


def write_anytime_csv(path: Path, anytime: dict) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["samples", "task", "acc_seen"])
    for s, t, a in zip(anytime["samples"], anytime["task"], anytime["acc"]):
        writer.writerow([s, t, f"{a:.6f}"])
    atomic_write_text(path, buf.getvalue())


def plot_anytime(path: Path, anytime: dict, task_ends: list[int], title: str) -> Path:
    """anytime.png: accuracy on the seen classes against samples seen, task boundaries dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(anytime["samples"], [100 * a for a in anytime["acc"]], ".-", label="seen classes (class-IL)")
    for end in task_ends[:-1]:
        ax.axvline(end, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="training samples seen", ylabel="accuracy (%)", ylim=(0, 101), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
