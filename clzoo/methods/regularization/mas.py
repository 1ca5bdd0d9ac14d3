"""MAS: Memory Aware Synapses.

Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars, "Memory Aware Synapses: Learning what (not) to forget",
ECCV 2018. A parameter is important when the learned function is sensitive to it: after each task

    Omega_task,k = mean over the task's (unlabelled) data of |d ||f(x)||_2^2 / d theta_k|,

with ``f`` the network output (logits), per sample as the paper defines it (vectorised with ``torch.func``; the
official code takes |.| of a batch-summed gradient). Importances add up over tasks, ``Omega <- Omega +
Omega_task`` (as the official ``accumelate_reg_params``), the parameters become the anchor, and training minimises

    CE(x, y) + lambda * sum_k Omega_k (theta_k - theta*_k)^2.

Memory: Omega and theta*, 2 x P floats (``importance``). lambda 1 is the paper's default, for its small learning
rates; with a 10-way head the output norm makes Omega large (max ~58 on Seq-MNIST after one task), and plain SGD
diverges once lr * lambda * max(Omega) > 1: the DER-paper Seq-MNIST protocol (lr 0.03) needs lambda 0.1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method
from ..parts.importance import mas_importance, param_vector, quadratic_penalty, regularized_parameters, warn_if_stiff
from ..registry import register_method


@register_method("mas")
class MAS(Method):
    def __init__(self, model, ctx, lambda_: float = 1.0):
        super().__init__(model, ctx)
        self.lambda_ = lambda_
        n = param_vector(regularized_parameters(model)).numel()
        self.register_buffer("importance", torch.zeros(n))  # Omega, summed over tasks
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
        omega = mas_importance(self.model, task.x_train.to(self.device), transform=self.preprocess)
        self.model.train()
        self.importance.add_(omega)
        self.anchor.copy_(param_vector(regularized_parameters(self.model)).detach())
        warn_if_stiff(self, self.importance, self.lambda_)
