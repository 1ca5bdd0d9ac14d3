"""PASS: Prototype Augmentation and Self-Supervision.

Zhu, Zhang, Wang, Yin, Liu, "Prototype Augmentation and Self-Supervision for Incremental Learning", CVPR 2021
(code: Impression2805/CVPR21_PASS@8b79993, ``PASS.py``). Exemplar-free class-incremental learning:

* Self-supervised label augmentation: every image at 0/90/180/270 degrees with joint label ``4y + k``
  (:mod:`..parts.rotation`); the classifier (the model's head, widened to ``4C`` outputs) is trained with
  ``CE(logits / T, 4y + k)`` over the joint classes seen so far, T = 0.1.
* Prototype augmentation: at the end of each task the mean feature of each new class is stored
  (:class:`PrototypeStore`); after the first task, ``proto_batch_size`` old classes are drawn uniformly per step and
  ``mean_c + r * N(0, I)`` is classified as ``4c`` by the same head, weight 10. The radius ``r`` is computed once,
  on the first task: ``sqrt(mean_c trace(Cov_c) / D)``.
* Feature distillation: ``||F(x) - F_old(x)||`` (the norm over the whole rotated batch, as ``torch.dist``), weight 10,
  against the backbone frozen at the end of the previous task.
* Inference: the head's rotation-0 outputs ``logits[:, ::4]``.

Memory: backbone, the 4C-way head, one prototype per class and the radius (``prototypes``), the frozen previous
backbone (``teachers``); no exemplar. Differences from the code: prototypes are means over the un-augmented
training images (the code averages features of its augmented training loader, dropping the last incomplete
batch); the optimizer is the run's (the paper: Adam lr 1e-3, weight decay 2e-4, StepLR 45 epochs x 0.1, 100 epochs,
batch 64). The head has rows for every class from the start; a class's rows are kept at their initial values until
its task starts (:meth:`PASS.step_seen_rows`), as the code's freshly created rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...memory.ledger import tag_memory
from ..base import build_optimizer
from ..parts.distillation import feature_distillation
from ..parts.prototypes import PrototypeStore
from ..parts.rotation import N_ROTATIONS, check_square_images, class_logits, rotate4
from ..registry import register_method
from .base import ExemplarFreeMethod


@register_method("pass")
class PASS(ExemplarFreeMethod):
    def __init__(self, model, ctx, proto_aug_weight: float = 10.0, kd_weight: float = 10.0, temperature: float = 0.1,
                 proto_batch_size: int | None = None, later_lr_scale: float = 1.0, lr_step_epochs: int | None = 45,
                 lr_gamma: float = 0.1, buffer=None):
        super().__init__(model, ctx, buffer)
        check_square_images(ctx.stream.input_shape, "PASS's rotation self-supervision")
        self.proto_aug_weight, self.kd_weight, self.temperature = proto_aug_weight, kd_weight, temperature
        self.proto_batch_size = proto_batch_size
        self.later_lr_scale, self.lr_step_epochs, self.lr_gamma = later_lr_scale, lr_step_epochs, lr_gamma
        n_classes = ctx.stream.n_classes
        # the classifier over the 4C joint (class, rotation) labels replaces the model's C-way head
        self.model.head = tag_memory(nn.Linear(self.feature_dim, N_ROTATIONS * n_classes), "heads")
        self.prototypes = PrototypeStore(n_classes, self.feature_dim, variance=True)
        self.register_buffer("radius", torch.zeros(()))
        self.memory_categories = {"radius": "prototypes"}
        self.teacher = self.frozen_copy(self.model.backbone)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def reset_optimizer(self):
        lr = float(self.ctx.optimizer.get("lr", 0.1)) * (self.later_lr_scale if self.current_task > 0 else 1.0)
        self.opt = build_optimizer(self.trainable_parameters(), **{**self.ctx.optimizer, "lr": lr})
        self.schedule_milestones(self.opt)

    def begin_task(self, task):
        self.schedule_epochs(self.opt, self.lr_step_epochs, self.lr_gamma)

    def observe(self, x, y, task_id):
        x4, y4 = rotate4(self.augment(x), y)
        n_joint = N_ROTATIONS * self.seen_classes(task_id)
        feats = self.features(x4)
        loss = F.cross_entropy(self.model.head(feats)[:, :n_joint] / self.temperature, y4)
        if task_id > 0:
            with torch.no_grad():
                old_feats = self.teacher(x4).flatten(1)
            loss = loss + self.kd_weight * feature_distillation(feats, old_feats)
            old = torch.arange(self.seen_classes(task_id - 1), device=self.device)
            proto, cls = self.prototypes.sample_gaussian(self.proto_batch_size or len(x), old, self.radius)
            logits = self.model.head(proto)[:, :n_joint]
            loss = loss + self.proto_aug_weight * F.cross_entropy(logits / self.temperature, N_ROTATIONS * cls)
        return self.step_seen_rows(loss, n_joint)

    def step_seen_rows(self, loss, n_joint: int):
        """:meth:`step`, leaving the head rows of classes not seen yet (rows ``n_joint:``) as they were. The code
        creates a class's rows when its task starts (``Incremental_learning``); here they exist from the start, and
        the optimizer's weight decay alone would move them (Adam's L2 term shrinks a row it gets no other gradient
        for by about lr per step: a first task of 395 steps at lr 1e-3 leaves them near 0), so a new class would
        start from zero rows instead of freshly initialised ones. Without weight decay this changes nothing."""
        head = self.model.head
        kept = [(p, p[n_joint:].clone()) for p in (head.weight, head.bias) if p is not None]
        loss = self.step(loss)
        with torch.no_grad():
            for p, rows in kept:
                p[n_joint:] = rows
        return loss

    @torch.no_grad()
    def end_task(self, task):
        labels = task.y_train.to(self.device)
        self.prototypes.update(self.eval_features(task.x_train), labels)
        if task.id == 0:  # PASS fixes the radius on the first task: sqrt of the mean per-class variance
            first = labels.unique()
            self.radius.copy_(self.prototypes.variance[first].mean().sqrt())
        self.teacher.load_state_dict(self.model.backbone.state_dict())

    def forward(self, x, task_id=None):
        return class_logits(self.model.head(self.features(x)))
