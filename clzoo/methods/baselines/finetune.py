"""Fine-tuning: plain SGD on the current task only. The lower bound of every table."""
from __future__ import annotations

import torch.nn.functional as F

from ..base import Method
from ..parts.seed_stack import converted_together, grouped_cross_entropy_step
from ..registry import register_method


@register_method("finetune")
class Finetune(Method):
    """Cross-entropy on the incoming batch; nothing is kept from earlier tasks but the weights."""

    def observe(self, x, y, task_id):
        return self.step(F.cross_entropy(self.model(self.augment(x)), y))

    @classmethod
    def observe_group(cls, members, xs, ys, task_id, rng):
        """:meth:`observe` of several seeds' methods at once (clzoo.engine.seed_group); ``rng(i)`` is the context
        in which member ``i`` draws random numbers (its own generator state)."""
        return grouped_cross_entropy_step(members, converted_together(members, xs, rng), ys)
