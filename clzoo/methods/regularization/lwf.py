"""LwF: Learning without Forgetting.

Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017, in the single-head class-incremental form of
mammoth (DER paper, Buzzega et al. 2020). The model at the end of the previous task is kept as a frozen teacher.
At the start of a task that brings new classes the new classes' head is warmed up alone (features frozen), then
every step minimises

    CE over the classes seen so far  +  alpha * KL(softmax(teacher(x)_old / T) || softmax(model(x)_old / T)),

the distillation term restricted to the old classes' logits, T = 2. The teacher's outputs are computed on the
incoming batch instead of being recorded before the task: the same numbers (the teacher is frozen), no per-sample
store. Memory: the teacher, one model copy (``teachers``), allocated at construction so a checkpoint always loads.
Li & Hoiem and mammoth train with weight decay 5e-4 (``trainer.optimizer.weight_decay``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method, build_optimizer
from ..parts.distillation import distillation_kl
from ..registry import register_method


@register_method("lwf")
class LwF(Method):
    def __init__(self, model, ctx, alpha: float = 1.0, temperature: float = 2.0, warmup_epochs: int | None = None):
        super().__init__(model, ctx)
        self.alpha, self.temperature = alpha, temperature
        if warmup_epochs is None:  # as long as the task's training; none online, where each sample is seen once
            warmup_epochs = 0 if ctx.stream.online else ctx.epochs
        self.warmup_epochs = warmup_epochs
        self.teacher = self.frozen_copy()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never updates BatchNorm statistics
        return self

    def begin_task(self, task):
        old = self.seen_classes(task.id - 1) if task.id > 0 else 0
        new = sorted(c for c in task.classes if c >= old)
        if task.id > 0 and new and self.warmup_epochs > 0:
            self.warm_up_head(task, new)

    def warm_up_head(self, task, new_classes):
        """Train the head on the new classes only, features frozen (Li & Hoiem's warm-up step)."""
        opt = build_optimizer(self.model.head.parameters(), **{**self.ctx.optimizer, "weight_decay": 0.0})
        cls = torch.as_tensor(new_classes, device=self.device)
        x_all, y_all = task.x_train.to(self.device), task.y_train.to(self.device)
        bs = self.ctx.batch_size
        self.model.eval()
        for _ in range(self.warmup_epochs):
            order = torch.randperm(len(y_all), device=self.device)
            for i in range(0, len(order), bs):
                idx = order[i:i + bs]
                with torch.no_grad():
                    feats = self.model.features(self.augment(x_all[idx]))
                logits = self.model.head(feats)[:, cls]
                loss = F.cross_entropy(logits, torch.searchsorted(cls, y_all[idx]))
                self.fit_step(loss, opt, where="LwF's head warm-up (method.warmup_epochs, trainer.optimizer.lr)")
        self.model.train()

    def observe(self, x, y, task_id):
        inputs = self.augment(x)
        logits = self.model(inputs)[:, :self.seen_classes(task_id)]
        loss = F.cross_entropy(logits, y)
        if task_id > 0:
            old = self.seen_classes(task_id - 1)
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)[:, :old]
            loss = loss + self.alpha * distillation_kl(logits[:, :old], teacher_logits, self.temperature)
        return self.step(loss)

    def end_task(self, task):
        self.teacher.load_state_dict(self.model.state_dict())
