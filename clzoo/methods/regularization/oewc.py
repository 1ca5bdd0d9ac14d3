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

import torch
import torch.nn.functional as F

from ..base import Method
from ..parts.importance import fisher_diagonal, param_vector, quadratic_penalty, regularized_parameters, warn_if_stiff
from ..registry import register_method


@register_method("oewc")
class OnlineEWC(Method):
    def __init__(self, model, ctx, lambda_: float = 90.0, gamma: float = 1.0, fisher: str = "weighted"):
        super().__init__(model, ctx)
        self.lambda_, self.gamma, self.fisher = lambda_, gamma, fisher
        n = param_vector(regularized_parameters(model)).numel()
        self.register_buffer("importance", torch.zeros(n))  # running Fisher F
        self.register_buffer("anchor", torch.zeros(n))      # theta* after the last task
        self.memory_categories = {"importance": "importance", "anchor": "importance"}

    def observe(self, x, y, task_id):
        loss = F.cross_entropy(self.model(self.augment(x)), y)
        if task_id > 0:
            theta = param_vector(regularized_parameters(self.model))
            loss = loss + self.lambda_ * quadratic_penalty(theta, self.importance, self.anchor)
        return self.step(loss)

    def end_task(self, task):
        self.model.eval()
        fisher = fisher_diagonal(self.model, task.x_train.to(self.device), task.y_train.to(self.device),
                                 mode=self.fisher, transform=self.preprocess)
        self.model.train()
        self.importance.mul_(self.gamma).add_(fisher)
        self.anchor.copy_(param_vector(regularized_parameters(self.model)).detach())
        warn_if_stiff(self, self.importance, self.lambda_)
