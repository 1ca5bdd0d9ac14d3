"""Online EWC: one running Fisher and one anchor, whatever the number of tasks.

Schwarz et al., "Progress & Compress: A scalable framework for continual learning", ICML 2018 (the EWC part of
its compress phase), as mammoth's ``ewc_on`` used in the DER paper (Buzzega et al., NeurIPS 2020). After each
task the diagonal Fisher of the task is folded into a running estimate, ``F <- gamma * F + F_task``, and the
parameters become the anchor ``theta*``; training minimises

    CE(x, y) + lambda * sum_i F_i (theta_i - theta*_i)^2.

``F_task`` is the empirical Fisher weighted by the probability of the true label, averaged over the task's
training data (mammoth's estimate; ``fisher: empirical | expected`` give the other two). Memory: F and theta*,
2 x P floats (``importance``), preallocated so a checkpoint always loads.
DER-paper Seq-MNIST settings: lambda 90, gamma 1.0, lr 0.03.
"""
from __future__ import annotations

from ..parts.anchored import AnchoredMethod
from ..parts.importance import fisher_diagonal
from ..registry import register_method


@register_method("oewc")
class OnlineEWC(AnchoredMethod):
    def __init__(self, model, ctx, lambda_: float = 90.0, gamma: float = 1.0, fisher: str = "weighted"):
        super().__init__(model, ctx, lambda_)
        self.gamma, self.fisher = gamma, fisher

    def end_task(self, task):
        self.model.eval()
        fisher = fisher_diagonal(self.model, task.x_train.to(self.device), task.y_train.to(self.device),
                                 mode=self.fisher, transform=self.preprocess)
        self.model.train()
        self.consolidate(fisher, decay=self.gamma)  # F <- gamma * F + F_task
