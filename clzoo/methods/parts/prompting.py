"""What every prompt method shares: a frozen timm ViT, a trainable prompt module, a linear head.

A :class:`PromptMethod` subclass builds ``self.prompt`` (tagged ``prompts`` in the memory ledger) and implements
:meth:`PromptMethod.features`: the query (the frozen, un-prompted [CLS] of :class:`~clzoo.models.PromptedViT`)
selects or composes prompts, and the prompted ViT's output feeds the head. Training follows the CODA-Prompt code
(GT-RIPL/CODA-Prompt@6417d4f ``learners/prompt.py``): cross-entropy over the current task's classes only (the
logits of past classes are set to -inf, as are those of classes not seen yet), plus the prompt module's own loss;
only the prompts and the head are in the optimizer; the learning rate follows the code's per-epoch cosine
``lr * cos(99 pi e / (200 (E - 1)))``. At test time every seen class competes and no task id is used.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...memory.ledger import tag_memory
from ...models import mask_logits
from ...models.prompted_vit import PromptedViT
from ..base import Method


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def uniform_(shape, low: float = 0.0, high: float = 1.0) -> nn.Parameter:
    """A prompt / key tensor initialised uniformly in [low, high) (the CODA code's ``tensor_prompt``: [0, 1))."""
    return nn.Parameter(torch.empty(*shape).uniform_(low, high))


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """The CODA-Prompt code's cosine schedule (``utils/schedulers.py``), stepped once per epoch."""
    if epochs <= 1:
        return base_lr
    return base_lr * math.cos(99 * math.pi * epoch / (200 * (epochs - 1)))


class PromptMethod(Method):
    """Frozen ViT + ``self.prompt`` + head; subclasses implement :meth:`features`."""

    def __init__(self, model, ctx, mask_past: bool = True, lr_schedule: str = "cosine"):
        super().__init__(model, ctx)
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule={lr_schedule!r}: choose cosine (the CODA-Prompt code's) or constant")
        self.vit = PromptedViT(model.backbone)
        freeze(model.backbone)
        self.mask_past = bool(mask_past)
        self.lr_schedule = lr_schedule

    # ------------------------------------------------------------------ what subclasses provide
    def features(self, x: Tensor, train: bool, task_id: int | None) -> tuple[Tensor, Tensor | float]:
        """Feature vectors ``(B, D)`` of network input ``x`` and the prompt module's loss (0 at test)."""
        raise NotImplementedError

    def add_prompts(self, module: nn.Module) -> nn.Module:
        return tag_memory(module, "prompts")

    # ------------------------------------------------------------------ the contract
    def trainable_parameters(self):
        return [p for p in self.prompt.parameters() if p.requires_grad] + list(self.model.head.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.backbone.eval()  # frozen: no dropout / drop-path, whatever the mode
        return self

    def start_task(self, task) -> None:
        super().start_task(task)
        if self.lr_schedule == "cosine":  # set for every epoch by the engine's end_epoch
            epochs = self.ctx.epochs_of(task.id)
            self.epoch_schedules.append(
                torch.optim.lr_scheduler.LambdaLR(self.opt, lambda epoch: cosine_lr(1.0, epoch, epochs)))

    def observe(self, x, y, task_id):
        feats, prompt_loss = self.features(self.augment(x), train=True, task_id=task_id)
        logits = self.model.head(feats)
        if self.mask_past:  # past (and not yet seen) classes masked, as the CODA-Prompt code does
            logits = mask_logits(logits, self.ctx.stream.task_classes[task_id])
        return self.step(F.cross_entropy(logits, y) + prompt_loss)

    def forward(self, x, task_id=None):
        feats, _ = self.features(x, train=False, task_id=None)  # no task id at test time
        return self.model.head(feats)

    def memory_report(self, ledger=None) -> dict:
        """Prompt parameters allocated (kept in the state dict) and used so far (see CODA-Prompt); the engine stores
        it after every task as ``memory.per_task[t].method_report``."""
        allocated = sum(p.numel() for p in self.prompt.parameters()) + sum(b.numel() for b in self.prompt.buffers())
        return {"prompt_params_allocated": allocated, "prompt_params_used": self.used_prompt_params(),
                "ledger_counts": "allocated"}

    def used_prompt_params(self) -> int:
        return sum(p.numel() for p in self.prompt.parameters())
