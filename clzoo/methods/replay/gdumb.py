"""GDumb: Greedy sampler and Dumb learner.

Prabhu, Torr, Dokania, "GDumb: A Simple Approach that Questions Our Progress in Continual Learning", ECCV 2020.
The sampler keeps a class-balanced memory greedily (``selection: class_balanced`` of the ReplayBuffer: while
there is room every sample is stored; then a sample of an under-represented class evicts a random sample of the
largest class). The learner ignores the stream: at the end of every task the model is re-initialised and
trained from scratch on the memory alone, for ``fit_epochs`` epochs in batches of ``fit_batch_size`` (the model
evaluated after a task is the one trained on the memory at that point, as the paper trains at inference time).

Re-initialisation is seeded: a seed drawn once at construction is kept as an 8-byte buffer, and every reset
runs each module's ``reset_parameters()`` under that seed (without disturbing the global random stream), so the
model restarts from the same weights at every task and a resumed run restarts from them too. Modules without
``reset_parameters`` keep their weights.

Defaults: batch 16 and plain SGD at ``trainer.optimizer`` (``fit_lr`` overrides its learning rate), as Avalanche's
Split-MNIST GDumb baseline (continual-learning-baselines), which trains 10 epochs on a 4,400-sample memory; with a
500-sample memory 10 epochs (320 steps) under-train and vary by seed (Seq-MNIST, lr 0.1: 76.97 / 85.31 / 85.31
class-IL over seeds 0-2), so the default is 30 epochs (84.94 / 86.19 / 86.01). No CutMix or cosine schedule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method, build_optimizer
from ..registry import register_method


@register_method("gdumb")
class GDumb(Method):
    def __init__(self, model, ctx, buffer: dict | int | str = 500, fit_epochs: int = 30, fit_batch_size: int = 16,
                 fit_lr: float | None = None):
        super().__init__(model, ctx)
        self.fit_epochs, self.fit_batch_size, self.fit_lr = fit_epochs, fit_batch_size, fit_lr
        self.register_buffer("init_seed", torch.randint(2**62, ()))
        self._to_offer = 0
        self.buffer = self.make_buffer(buffer, selection="class_balanced")

    def begin_task(self, task):
        self._to_offer = task.n_train  # the sampler sees each sample once, whatever trainer.epochs says

    def observe(self, x, y, task_id):
        if self._to_offer > 0:
            n = min(len(y), self._to_offer)
            self.buffer.add(x[:n], y[:n], task_id)
            self._to_offer -= n
        return torch.zeros((), device=y.device)

    def reset_model(self) -> None:
        """Re-initialise every module of the model from the kept seed."""
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(self.init_seed))
            for module in self.model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def end_task(self, task):
        self.reset_model()
        options = dict(self.ctx.optimizer, **({"lr": self.fit_lr} if self.fit_lr is not None else {}))
        self.opt = build_optimizer(self.trainable_parameters(), **options)
        memory = self.buffer.all()
        n = len(memory.y)
        for _ in range(self.fit_epochs):
            order = torch.randperm(n, device=memory.y.device)
            for i in range(0, n, self.fit_batch_size):
                idx = order[i:i + self.fit_batch_size]
                self.fit_step(F.cross_entropy(self.model(self.augment(memory.x[idx])), memory.y[idx]),
                              where="GDumb's refit on the memory (method.fit_lr, else trainer.optimizer.lr)")
