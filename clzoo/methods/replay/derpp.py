"""DER++: Dark Experience Replay with an extra label term.

Buzzega et al., "Dark Experience for General Continual Learning: a Strong, Simple Baseline", NeurIPS 2020
(Algorithm 1, DER++). DER's logit matching on one buffer batch plus a cross-entropy on the stored labels of a
second, independently drawn buffer batch:

    loss = CE(f(x), y) + alpha * || h(x') - z' ||^2 + beta * CE(f(x''), y'')

Defaults are the paper's best Seq-MNIST arguments for a buffer of 500: alpha 1.0, beta 0.5, replay minibatch 10
(with ``trainer.optimizer.lr=0.03``).
"""
from __future__ import annotations

import torch.nn.functional as F

from ..registry import register_method
from .der import DER


@register_method("derpp")
class DERpp(DER):
    def __init__(self, model, ctx, buffer: dict | int | str = 500, alpha: float = 1.0, beta: float = 0.5,
                 minibatch_size: int = 10):
        super().__init__(model, ctx, buffer=buffer, alpha=alpha, minibatch_size=minibatch_size)
        self.beta = beta

    def replay_loss(self):
        loss = super().replay_loss()
        replay = self.buffer.sample(self.minibatch_size)  # a second, independent draw
        return loss + self.beta * F.cross_entropy(self.model(self.augment(replay.x)), replay.y)
