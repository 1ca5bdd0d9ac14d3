"""DER: Dark Experience Replay.

Buzzega, Boschini, Porrello, Abati, Calderara, "Dark Experience for General Continual Learning: a Strong, Simple
Baseline", NeurIPS 2020 (Algorithm 1). The reservoir buffer keeps, with every input, the logits the network
gave it when it arrived; replaying matches the current logits on a buffer batch to those stored logits:

    loss = CE(f(x), y) + alpha * || h(x') - z' ||^2        (x', z') ~ buffer

then the incoming batch is offered to the reservoir with z = h(x) from this step's forward pass (before the
update). The squared error is averaged over samples and classes, as in the authors' code. The stored logits
(float32, one per class) are paid for as ``exemplar_extras``.

Defaults are the paper's best Seq-MNIST arguments for a buffer of 500: alpha 1.0, replay minibatch 128 (with
``trainer.optimizer.lr=0.03``).
"""
from __future__ import annotations

import torch.nn.functional as F

from ..base import Method
from ..registry import register_method


@register_method("der")
class DER(Method):
    supports_task_free = True  # nothing depends on the task id (task-free: stored with task id -1)

    def __init__(self, model, ctx, buffer: dict | int | str = 500, alpha: float = 1.0, minibatch_size: int = 128):
        super().__init__(model, ctx)
        self.alpha = alpha
        self.minibatch_size = minibatch_size
        self.buffer = self.make_buffer(buffer, store_logits=True)

    def replay_loss(self):
        """The extra terms computed on buffer batches (DER: logit matching)."""
        replay = self.buffer.sample(self.minibatch_size)
        return self.alpha * F.mse_loss(self.model(self.augment(replay.x)), replay.logits)

    def observe(self, x, y, task_id):
        logits = self.model(self.augment(x))
        loss = F.cross_entropy(logits, y)
        if not self.buffer.is_empty:
            loss = loss + self.replay_loss()
        loss = self.step(loss)
        self.buffer.add(x, y, task_id, logits=logits.detach())
        return loss
