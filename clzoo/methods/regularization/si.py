"""SI: Synaptic Intelligence.

Zenke, Poole & Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017. During a task each
parameter accumulates its contribution to the drop of the task loss along the training trajectory,

    omega_k -= g_k * delta_theta_k      (every step; g = gradient of the task loss alone, delta = the update),

and at the end of the task it is turned into an importance and the parameters become the anchor:

    Omega_k <- max(0, Omega_k + omega_k / ((theta_k - theta*_k)^2 + xi)),   theta* <- theta,   omega <- 0.

Training minimises ``CE + c * sum_k Omega_k (theta_k - theta*_k)^2``. As in the official code (ganguli-lab/pathint)
the path integral uses the unregularised gradient and the actual parameter change (so it holds for any optimizer),
and the summed importance is clipped at zero. Memory: Omega and theta*, 2 x P floats (``importance``); omega is a
within-task accumulator that is zero at every task boundary, so it is not part of the state (``persistent=False``).
Defaults: mammoth's Seq-MNIST best arguments for the DER paper (c 1.0, xi 0.9, lr 0.1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method
from ..parts.importance import grad_vector, param_vector, quadratic_penalty, regularized_parameters, warn_if_stiff
from ..registry import register_method


@register_method("si")
class SI(Method):
    transient_state = ("path_integral",)  # omega: zeroed at every task start and end, so never carried over

    def __init__(self, model, ctx, c: float = 1.0, xi: float = 0.9):
        super().__init__(model, ctx)
        self.c, self.xi = c, xi
        theta0 = param_vector(regularized_parameters(model)).detach().clone()
        self.register_buffer("importance", torch.zeros_like(theta0))  # Omega
        self.register_buffer("anchor", theta0)                        # theta* (parameters at the task start)
        self.register_buffer("path_integral", torch.zeros_like(theta0), persistent=False)  # omega, within a task
        self.memory_categories = {"importance": "importance", "anchor": "importance"}

    def begin_task(self, task):
        self.path_integral.zero_()

    def observe(self, x, y, task_id):
        params = regularized_parameters(self.model)
        loss = F.cross_entropy(self.model(self.augment(x)), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        task_grad = grad_vector(params)
        if task_id > 0:
            penalty = self.c * quadratic_penalty(param_vector(params), self.importance, self.anchor)
            penalty.backward()
            loss = loss + penalty
        before = param_vector(params).detach()
        self.opt.step()
        self.path_integral.sub_(task_grad * (param_vector(params).detach() - before))
        return loss.detach()

    def end_task(self, task):
        theta = param_vector(regularized_parameters(self.model)).detach()
        self.importance.add_(self.path_integral / ((theta - self.anchor) ** 2 + self.xi)).clamp_(min=0)
        self.anchor.copy_(theta)
        self.path_integral.zero_()
        warn_if_stiff(self, self.importance, self.c)
