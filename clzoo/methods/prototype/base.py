"""What the exemplar-free prototype methods share: no replay buffer, a first task of at least two classes, the
features of the backbone (:meth:`ContinualModel.features`), a frozen copy of the previous backbone, and a
per-epoch step learning-rate schedule (stepped by the engine's ``end_epoch``)."""
from __future__ import annotations


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
    def schedule_epochs(self, optimizer, step_epochs: int | None, gamma: float) -> None:
        """Multiply ``optimizer``'s learning rates by ``gamma`` every ``step_epochs`` epochs of the task (PASS's and
        NAPA-VQ's StepLR); call from ``begin_task``."""
        if step_epochs:
            self.epoch_schedules.append(torch.optim.lr_scheduler.StepLR(optimizer, int(step_epochs), gamma))

    def start_task(self, task) -> None:
        self.assert_no_exemplars()
        super().start_task(task)

    def assert_no_exemplars(self) -> None:
        """Fail when the ledger files any byte under ``exemplars``: this family keeps no stored input."""
        stored = measure(self).by_category["exemplars"]
        if stored:
            raise RuntimeError(f"{self.method_name or type(self).__name__} is exemplar-free but keeps {stored:,} bytes "
                               f"of exemplars in its state")
