"""EWC: Elastic Weight Consolidation, one Fisher and one anchor per task.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017. After task ``t`` the
diagonal Fisher information ``F_t`` of the task's training data and the parameters ``theta*_t`` are stored; every
later task minimises

    CE(x, y) + lambda * sum_{t < now} sum_i F_{t,i} (theta_i - theta*_{t,i})^2,

one quadratic penalty per earlier task, as the paper prescribes for more than two tasks (online EWC, ``oewc``,
keeps a single running Fisher and anchor instead). ``F_t`` is the empirical Fisher by default (squared per-sample
gradients of log p(y|x) at the true labels, averaged over the task); ``fisher: expected`` uses the true Fisher.
Memory grows with the tasks: 2 x P floats per finished task (``importance``), registered at the end of each
task (and re-created from a checkpoint by :meth:`load_state_dict`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method
from ..parts.importance import fisher_diagonal, param_vector, quadratic_penalty, regularized_parameters, warn_if_stiff
from ..registry import register_method


@register_method("ewc")
class EWC(Method):
    def __init__(self, model, ctx, lambda_: float = 90.0, fisher: str = "empirical"):
        super().__init__(model, ctx)
        self.lambda_, self.fisher = lambda_, fisher
        self.memory_categories = {}

    def _keep_task(self, task_id: int, fisher: torch.Tensor, anchor: torch.Tensor) -> None:
        for name, value in ((f"fisher_{task_id}", fisher), (f"anchor_{task_id}", anchor)):
            self.register_buffer(name, value.detach().clone())
            self.memory_categories[name] = "importance"

    def penalties(self):
        """(Fisher, anchor) of every finished task."""
        ids = sorted(int(k.rsplit("_", 1)[1]) for k in self._buffers if k.startswith("fisher_"))
        return [(getattr(self, f"fisher_{t}"), getattr(self, f"anchor_{t}")) for t in ids]

    def observe(self, x, y, task_id):
        loss = F.cross_entropy(self.model(self.augment(x)), y)
        penalties = self.penalties()
        if penalties:
            theta = param_vector(regularized_parameters(self.model))
            loss = loss + self.lambda_ * sum(quadratic_penalty(theta, f, a) for f, a in penalties)
        return self.step(loss)

    def end_task(self, task):
        self.model.eval()
        fisher = fisher_diagonal(self.model, task.x_train.to(self.device), task.y_train.to(self.device),
                                 mode=self.fisher, transform=self.preprocess)
        self.model.train()
        self._keep_task(task.id, fisher, param_vector(regularized_parameters(self.model)))
        warn_if_stiff(self, sum(f for f, _ in self.penalties()), self.lambda_)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        for key, value in state_dict.items():
            if key.startswith("fisher_") and key not in self._buffers:
                t = int(key.rsplit("_", 1)[1])
                self._keep_task(t, torch.empty_like(value, device=self.device),
                                torch.empty_like(state_dict[f"anchor_{t}"], device=self.device))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
