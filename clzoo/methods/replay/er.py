"""ER: Experience Replay with a reservoir buffer.

Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019 (as in Buzzega et al., DER, NeurIPS
2020). Each step trains on the incoming batch concatenated with a batch drawn from the buffer, then offers
the incoming (non-augmented) samples to the reservoir.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method
from ..parts.seed_stack import grouped_cross_entropy_step
from ..registry import register_method


@register_method("er")
class ER(Method):
    supports_task_free = True  # nothing depends on the task id (task-free: stored with task id -1)

    def __init__(self, model, ctx, buffer: dict | int | str = 500, minibatch_size: int = 10):
        super().__init__(model, ctx)
        self.minibatch_size = minibatch_size
        self.buffer = self.make_buffer(buffer)

    def observe(self, x, y, task_id):
        inputs, labels = self.with_replay(x, y)
        loss = self.step(F.cross_entropy(self.model(inputs), labels))
        self.buffer.add(x, y, task_id)
        return loss

    def with_replay(self, x, y):
        """The step's network input and labels: the incoming batch, then a batch drawn from the buffer."""
        if self.buffer.is_empty:
            return self.augment(x), y
        if self.ctx.train_transform.augments:  # random augmentation draws for the incoming batch come first
            inputs = self.augment(x)
            replay = self.buffer.sample(self.minibatch_size)
            return torch.cat([inputs, self.augment(replay.x)]), torch.cat([y, replay.y])
        # the two batches joined as stored and converted once (the same values as converting each)
        replay = self.buffer.sample(self.minibatch_size)
        return self.augment(torch.cat([x, replay.x])), torch.cat([y, replay.y])

    @classmethod
    def observe_group(cls, members, xs, ys, task_id, rng):
        """:meth:`observe` of several seeds' methods at once (clzoo.engine.seed_group); ``rng(i)`` is the context
        in which member ``i`` draws random numbers (its own generator state)."""
        batches = []
        for i, (m, x, y) in enumerate(zip(members, xs, ys)):
            with rng(i):
                batches.append(m.with_replay(x, y))
        losses = grouped_cross_entropy_step(members, [b[0] for b in batches], [b[1] for b in batches])
        for i, (m, x, y) in enumerate(zip(members, xs, ys)):
            with rng(i):
                m.buffer.add(x, y, task_id)
        return losses
