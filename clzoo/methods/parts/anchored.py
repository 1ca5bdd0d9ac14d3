"""The skeleton shared by methods that keep one importance vector and one anchor (online EWC, MAS):

    CE(x, y) + lambda * sum_k Omega_k (theta_k - theta*_k)^2,

with ``Omega <- decay * Omega + Omega_task`` and ``theta* <- theta`` at the end of every task. Both vectors are
preallocated (P floats each, ledger category ``importance``), so a checkpoint always loads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import Method
from .importance import param_vector, quadratic_penalty, regularized_parameters, warn_if_stiff


class AnchoredMethod(Method):
    def __init__(self, model, ctx, lambda_: float):
        super().__init__(model, ctx)
        self.lambda_ = lambda_
        n = param_vector(regularized_parameters(model)).numel()
        self.register_buffer("importance", torch.zeros(n))  # Omega (a Fisher, MAS sensitivities, ...)
        self.register_buffer("anchor", torch.zeros(n))      # theta* after the last task
        self.memory_categories = {"importance": "importance", "anchor": "importance"}

    def theta(self) -> Tensor:
        return param_vector(regularized_parameters(self.model))

    def observe(self, x, y, task_id):
        loss = F.cross_entropy(self.model(self.augment(x)), y)
        if task_id > 0:
            loss = loss + self.lambda_ * quadratic_penalty(self.theta(), self.importance, self.anchor)
        return self.step(loss)

    def consolidate(self, task_importance: Tensor, decay: float = 1.0) -> None:
        """Fold the finished task's importance in and move the anchor to the current parameters."""
        self.importance.mul_(decay).add_(task_importance)
        self.anchor.copy_(self.theta().detach())
        warn_if_stiff(self, self.importance, self.lambda_)
