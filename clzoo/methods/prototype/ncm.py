"""NCM, "first task, then frozen": the exemplar-free baseline of the NECIL papers.

The backbone and the model's head are trained with cross-entropy on the first task only; the backbone is then
frozen. At the end of every task the mean feature of each of its classes is stored (:class:`PrototypeStore`) and
test inputs go to the nearest class mean (:func:`ncm_logits`, iCaRL's classifier, Rebuffi et al. CVPR 2017, with
means of all training data instead of exemplars). A frozen feature extractor with a nearest-mean classifier is
the lower reference of the non-exemplar class-incremental methods (e.g. FeTrIL, Petit et al. WACV 2023, and
"first task then freeze" in their tables). Memory: one prototype per class (``prototypes``), no exemplar.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..parts.prototypes import PrototypeStore, ncm_logits
from ..registry import register_method
from .base import ExemplarFreeMethod


@register_method("ncm")
class NCM(ExemplarFreeMethod):
    def __init__(self, model, ctx, metric: str = "cosine", buffer=None):
        super().__init__(model, ctx, buffer)
        ncm_logits(torch.zeros(1, 1), torch.zeros(1, 1), metric)  # validates metric before training
        self.metric = metric
        self.prototypes = PrototypeStore(ctx.stream.n_classes, self.feature_dim)

    def trainable_parameters(self):
        return self.model.parameters() if self.current_task <= 0 else []

    def reset_optimizer(self):
        if self.current_task <= 0:
            super().reset_optimizer()
        else:
            self.opt = None
            self.milestone_schedule = None
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)

    def observe(self, x, y, task_id):
        if task_id > 0:  # the backbone is frozen: nothing to learn from the batch
            return torch.zeros((), device=self.device)
        classes = self.seen_classes(0)
        return self.step(F.cross_entropy(self.model(self.augment(x))[:, :classes], y))

    @torch.no_grad()
    def end_task(self, task):
        self.prototypes.update(self.eval_features(task.x_train), task.y_train.to(self.device))

    def forward(self, x, task_id=None):
        return ncm_logits(self.features(x), self.prototypes.means, self.metric, self.prototypes.seen)
