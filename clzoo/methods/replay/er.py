"""ER: Experience Replay with a reservoir buffer.

Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019 (as in Buzzega et al., DER, NeurIPS
2020). Each step trains on the incoming batch concatenated with a batch drawn from the buffer, then offers
the incoming (non-augmented) samples to the reservoir.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method
from ..registry import register_method


@register_method("er")
class ER(Method):
    supports_task_free = True  # nothing depends on the task id (task-free: stored with task id -1)

    def __init__(self, model, ctx, buffer: dict | int | str = 500, minibatch_size: int = 10):
        super().__init__(model, ctx)
        self.minibatch_size = minibatch_size
        self.buffer = self.make_buffer(buffer)

    def observe(self, x, y, task_id):
        if self.buffer.is_empty:
            inputs, labels = self.augment(x), y
        elif self.ctx.train_transform.augments:  # random augmentation draws for the incoming batch come first
            inputs = self.augment(x)
            replay = self.buffer.sample(self.minibatch_size)
            inputs, labels = torch.cat([inputs, self.augment(replay.x)]), torch.cat([y, replay.y])
        else:  # the two batches joined as stored and converted once (the same values as converting each)
            replay = self.buffer.sample(self.minibatch_size)
            inputs, labels = self.augment(torch.cat([x, replay.x])), torch.cat([y, replay.y])
        loss = self.step(F.cross_entropy(self.model(inputs), labels))
        self.buffer.add(x, y, task_id)
        return loss
