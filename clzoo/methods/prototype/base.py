"""What the exemplar-free prototype methods share: no replay buffer, a first task of at least two classes, the
features of the backbone (:meth:`ContinualModel.features`), a frozen copy of the previous backbone, and a
per-epoch step learning-rate schedule counted in steps (the engine has no epoch hook)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...data import StreamError
from ...memory.ledger import measure
from ..base import Method
from ..parts.prototypes import extract_features


class ExemplarFreeMethod(Method):
    """Base of the prototype family. ``buffer`` exists only to refuse one: these methods store no exemplar."""

    def __init__(self, model, ctx, buffer=None):
        super().__init__(model, ctx)
        name = self.method_name or type(self).__name__
        if buffer is not None:
            raise ValueError(f"{name} is exemplar-free and keeps no replay buffer, but method.buffer={buffer} was set; "
                             f"remove method.buffer (use a replay method, e.g. method=er, to store exemplars)")
        first = ctx.stream.task_classes[0] if ctx.stream.task_classes else []
        if ctx.stream.scenario != "domain_il" and len(first) < 2:
            raise StreamError(f"{name} learns its features and prototypes from the first task, which has "
                              f"{len(first)} class; set stream.first_task_classes (or stream.n_tasks) so that the "
                              f"first task has at least 2 classes")
        self.feature_dim = int(model.head.in_features)
        self._sched: list = []

    # ---------------------------------------------------------------- features
    def features(self, x: Tensor) -> Tensor:
        """Backbone features of network input ``x`` (flattened)."""
        return self.model.features(x).flatten(1)

    @torch.no_grad()
    def eval_features(self, x: Tensor, batch_size: int = 500, augment=None) -> Tensor:
        """Features of stored inputs ``x`` in eval mode (evaluation transform unless ``augment`` is given)."""
        was = self.model.training
        self.model.eval()
        out = extract_features(self.features, x.to(self.device), batch_size, augment or self.preprocess)
        self.model.train(was)
        return out

    # ---------------------------------------------------------------- step learning-rate schedule per epoch
    def schedule_epochs(self, optimizer, step_epochs: int | None, gamma: float, task) -> None:
        """Multiply ``optimizer``'s learning rates by ``gamma`` every ``step_epochs`` epochs of ``task`` (PASS's
        and NAPA-VQ's StepLR); call from ``begin_task``, then :meth:`tick` once per step."""
        if step_epochs:
            steps = max(math.ceil(task.n_train / self.ctx.batch_size), 1) * int(step_epochs)
            self._sched.append([optimizer, steps, gamma])
        self._step_in_task = 0

    def start_task(self, task) -> None:
        self.assert_no_exemplars()
        self._sched, self._step_in_task = [], 0
        super().start_task(task)

    def assert_no_exemplars(self) -> None:
        """Fail when the ledger files any byte under ``exemplars``: this family keeps no stored input."""
        stored = measure(self).by_category["exemplars"]
        if stored:
            raise RuntimeError(f"{self.method_name or type(self).__name__} is exemplar-free but keeps {stored:,} bytes "
                               f"of exemplars in its state")

    def tick(self) -> None:
        self._step_in_task += 1
        for optimizer, every, gamma in self._sched:
            if self._step_in_task % every == 0:
                for group in optimizer.param_groups:
                    group["lr"] *= gamma
