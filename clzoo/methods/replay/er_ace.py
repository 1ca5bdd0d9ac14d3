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

Task-free (``stream.task_free=true``, as mammoth's ``task_free`` option): masking and replay are on from the first
batch, and the classes seen so far are those up to the largest label observed (``max_label``, 8 bytes, kept only
in task-free runs; classes arrive in class order). The authors' code (pclucas14/AML) always runs ER-ACE this way.

Classifier: ``head=linear`` (default, the model's own head) or ``head=cosine``, the authors' scaled cosine
classifier (:class:`clzoo.models.heads.CosineLinear`, scale 10, no bias), which replaces the model's head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...memory.ledger import tag_memory
from ...models.heads import CosineLinear
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
    supports_task_free = True

    def __init__(self, model, ctx, buffer: dict | int | str = 500, minibatch_size: int = 10, head: str = "linear"):
        super().__init__(model, ctx)
        self.minibatch_size = minibatch_size
        if head not in ("linear", "cosine"):
            raise ValueError(f"er_ace: method.head={head} is not a classifier; choose linear (the model's head) or "
                             "cosine (the authors' scaled cosine classifier)")
        if head == "cosine":
            linear = model.head
            model.head = tag_memory(CosineLinear(linear.in_features, linear.out_features), "heads")
        if ctx.stream.task_free:
            self.register_buffer("max_label", torch.full((), -1, dtype=torch.int64))
            self.memory_categories = {"max_label": "other"}
        self.buffer = self.make_buffer(buffer)

    def observe(self, x, y, task_id):
        logits = self.model(self.augment(x))
        if task_id is None:  # task-free: mask and replay from the start
            self.max_label.fill_(max(int(self.max_label), int(y.max())))
            active, n_seen = True, int(self.max_label) + 1
        else:
            active, n_seen = task_id > 0, self.seen_classes(task_id)
        if active:
            keep = ace_mask(y, logits.shape[1], n_seen)
            logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
        loss = F.cross_entropy(logits, y)
        if active and not self.buffer.is_empty:
            replay = self.buffer.sample(self.minibatch_size)
            loss = loss + F.cross_entropy(self.model(self.augment(replay.x)), replay.y)
        loss = self.step(loss)
        self.buffer.add(x, y, task_id)
        return loss
