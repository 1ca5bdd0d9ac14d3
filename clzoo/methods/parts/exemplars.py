"""iCaRL's exemplar management, shared by every method that keeps a fixed total of herded exemplars.

Rebuffi et al., CVPR 2017, Alg. 4-5 (also MEMO's and DER's memory, Zhou et al. 2023 / Yan et al. 2021): the total
``capacity`` is shared equally by the classes seen so far, ``m = capacity // n_seen`` per class. At a task end each
old class keeps the first ``m`` of its exemplars (they are stored in herding order, so the first ``m`` are the best
``m``) and each new class gets ``m`` exemplars chosen by herding on the features ``features(x)`` gives.
"""
from __future__ import annotations

import torch

from ...memory.selection import herding
from .prototypes import extract_features


@torch.no_grad()
def update_herding_exemplars(buffer, task, n_seen: int, features) -> None:
    """Reduce the old classes' exemplar sets and herd ``m`` exemplars for every class of ``task`` into ``buffer``.

    ``features`` maps stored inputs to (normalised) feature rows; ``n_seen`` is the number of classes seen after
    ``task``."""
    m = buffer.capacity // n_seen
    old = buffer.all()
    keep = torch.cat([(old.y == c).nonzero().squeeze(1)[:m] for c in old.y.unique()]) if len(old.y) else old.y
    xs, ys, ts = [old.x[keep]], [old.y[keep]], [old.task[keep]]
    dev = buffer.x.device
    x_task, y_task = task.x_train.to(dev), task.y_train.to(dev)
    for c in task.classes:
        x_c = x_task[y_task == c]
        chosen = herding(features(x_c), m)
        xs.append(x_c[chosen])
        ys.append(torch.full((len(chosen),), c, dtype=torch.long, device=dev))
        ts.append(torch.full((len(chosen),), task.id, dtype=torch.long, device=dev))
    buffer.set_contents(torch.cat(xs), torch.cat(ys), torch.cat(ts))


def with_exemplars(buffer, task) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's training set joined with every stored exemplar (iCaRL's "update representation" input)."""
    stored = buffer.all()
    device = stored.x.device
    return torch.cat([task.x_train.to(device), stored.x]), torch.cat([task.y_train.to(device), stored.y])


@torch.no_grad()
def eval_features(method, x, batch_size: int = 1000) -> torch.Tensor:
    """L2-normalised features ``method.model.features`` gives stored inputs ``x`` (evaluation transform, eval mode,
    in batches); the training mode is restored afterwards."""
    model = method.model
    was_training = model.training
    model.eval()
    out = extract_features(model.features, x, batch_size, method.preprocess)
    model.train(was_training)
    return torch.nn.functional.normalize(out, dim=1)


__all__ = ["eval_features", "update_herding_exemplars", "with_exemplars"]
