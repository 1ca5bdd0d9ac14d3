"""ER: Experience Replay with a reservoir buffer.

Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019 (as in Buzzega et al., DER, NeurIPS
2020). Each step trains on the incoming batch concatenated with a batch drawn from the buffer, then offers
the incoming (non-augmented) samples to the reservoir.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method
from ..parts.seed_stack import converted_together, grouped_cross_entropy_step, per_member
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
        if self.ctx.train_transform.augments and not self.buffer.is_empty:
            inputs = self.augment(x)  # random augmentation draws for the incoming batch come first
            replay = self.buffer.sample(self.minibatch_size)
            return torch.cat([inputs, self.augment(replay.x)]), torch.cat([y, replay.y])
        # the two batches joined as stored and converted once (the same values as converting each)
        stored, labels = self.joined_with_replay(x, y)
        return self.augment(stored), labels

    def joined_with_replay(self, x, y):
        """The incoming batch and a batch drawn from the buffer, joined as stored (no augmentation)."""
        if self.buffer.is_empty:
            return x, y
        replay = self.buffer.sample(self.minibatch_size)
        return torch.cat([x, replay.x]), torch.cat([y, replay.y])

    @classmethod
    def observe_group(cls, members, xs, ys, task_id, rng):
        """:meth:`observe` of several seeds' methods at once (clzoo.engine.seed_group); ``rng(i)`` is the context
        in which member ``i`` draws random numbers (its own generator state)."""
        augments = any(m.ctx.train_transform.augments for m in members)
        # with augmentation, each incoming batch's draws come before the buffer's (with_replay); without, the
        # batches are joined as stored and converted together
        batches = per_member(members, rng, cls.with_replay if augments else cls.joined_with_replay, xs, ys)
        inputs, labels = [b[0] for b in batches], [b[1] for b in batches]
        if not augments:
            inputs = converted_together(members, inputs, rng)
        losses = grouped_cross_entropy_step(members, inputs, labels)
        per_member(members, rng, lambda m, x, y: m.buffer.add(x, y, task_id), xs, ys)
        return losses
