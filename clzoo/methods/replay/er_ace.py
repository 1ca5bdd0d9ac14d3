"""ER-ACE: Experience Replay with an Asymmetric Cross-Entropy.

Caccia, Aljundi, Asadi, Tuytelaars, Pineau, Belilovsky, "New Insights on Reducing Abrupt Representation Change
in Online Continual Learning", ICLR 2022. When new classes arrive, a plain cross-entropy on the incoming batch
pushes the logits of old classes down and drags their representations; ER-ACE computes the incoming loss only
over the classes present in the incoming batch, while the replayed batch keeps the usual cross-entropy over
all classes:

    loss = CE_masked(f(x), y) + CE(f(x'), y')            (x', y') ~ reservoir buffer

Masking rule (as in mammoth's ``er_ace``): the logits kept for the incoming batch are those of the classes
present in it plus every class not seen yet (later tasks' classes); the other seen classes are masked out. As
there, masking and replay start at the second task (during the first there is nothing old to protect).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import Method
from ..registry import register_method


def ace_mask(labels: Tensor, n_classes: int, n_seen: int) -> Tensor:
    """Boolean mask over the ``n_classes`` logits: True for the classes present in ``labels`` and for the
    classes not seen yet (index >= ``n_seen``)."""
    keep = torch.zeros(n_classes, dtype=torch.bool, device=labels.device)
    keep[labels] = True
    keep[n_seen:] = True
    return keep


@register_method("er_ace")
class ERACE(Method):
    def __init__(self, model, ctx, buffer: dict | int | str = 500, minibatch_size: int = 10):
        super().__init__(model, ctx)
        self.minibatch_size = minibatch_size
        self.buffer = self.make_buffer(buffer)

    def observe(self, x, y, task_id):
        logits = self.model(self.augment(x))
        if task_id > 0:
            keep = ace_mask(y, logits.shape[1], self.seen_classes(task_id))
            logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
        loss = F.cross_entropy(logits, y)
        if task_id > 0 and not self.buffer.is_empty:
            replay = self.buffer.sample(self.minibatch_size)
            loss = loss + F.cross_entropy(self.model(self.augment(replay.x)), replay.y)
        loss = self.step(loss)
        self.buffer.add(x, y, task_id)
        return loss
