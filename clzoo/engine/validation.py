"""A validation split for tuning: ``trainer.validation_fraction=f`` holds out ``f`` of every class of every task's
*training* data (class-stratified, seeded by ``trainer.validation_seed`` and the task id, so the same images are
held out whatever the training seed). The method never trains on them; after every task the engine measures
class-IL accuracy on the validation images of the tasks seen so far, and ``results.json`` reports it as
``metrics.final_val_acc`` (the average over the trained tasks after the last one) and ``val_acc_matrix``.
``clzoo-run`` returns ``final_val_acc`` as its objective when the split is on, so a Hydra sweeper (the Optuna
presets of ``conf/hparams_search/``) tunes on validation data and never sees the test set.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..models import mask_logits


def hold_out_validation(stream, fraction: float, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Move ``fraction`` of every task's training data of ``stream`` into a validation split (in place: the
    tasks' ``x_train`` / ``y_train`` lose those samples) and return the ``(x_val, y_val)`` of every task. The split
    is the one a method gets with ``validation_fraction`` (:meth:`clzoo.data.scenarios.Task.training_view`)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"trainer.validation_fraction must be in [0, 1) (0: no validation split), got {fraction}")
    out = []
    for task in stream.tasks:
        view = task.training_view(fraction, seed)
        out.append((view.x_val, view.y_val))
        task.x_train, task.y_train = view.x_train, view.y_train
    return out


@torch.no_grad()
def validation_accuracy(method, stream, val_sets, after_task: int, device, batch_size: int = 1000) -> list[float]:
    """Class-IL accuracy (over the classes seen after ``after_task``) on the validation split of every task."""
    method.eval()
    n_seen = stream.classes_seen(after_task)
    accs = []
    for x_all, y_all in val_sets:
        correct = 0
        for i in range(0, len(y_all), batch_size):
            x = method.preprocess(x_all[i:i + batch_size].to(device))
            y = y_all[i:i + batch_size].to(device)
            correct += (mask_logits(method(x, task_id=None), n_seen).argmax(1) == y).sum().item()
        accs.append(correct / max(len(y_all), 1))
    method.train()
    return accs


def final_validation_accuracy(val_matrix: list[list[float]]) -> float:
    """The average validation accuracy over the trained tasks after the last trained task."""
    last = val_matrix[-1]
    n = len(val_matrix)
    return sum(last[:n]) / n
