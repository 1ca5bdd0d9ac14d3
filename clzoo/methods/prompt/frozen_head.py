"""Baselines on the frozen backbone of the prompt methods: only the linear head learns.

* ``head_ft``: head-only fine-tuning on the current task (the lower bound of the prompt family). With
  ``mask_past=true`` the past classes' logits are masked in training, as the prompt methods do (the CODA-Prompt
  paper's "FT++" applies the same masking to a fully fine-tuned network).
* ``head_joint``: the head trained on every task seen so far (the upper bound on this backbone); it keeps all
  training data it has seen, so the ledger shows the stream as exemplars (like ``joint``).

The feature is the frozen ViT's [CLS] output, computed without gradients: one ViT pass per step.
"""
from __future__ import annotations

from torch import nn

from ..baselines.joint import Joint
from ..parts.prompting import PromptMethod
from ..registry import register_method


@register_method("head_ft")
class HeadFinetune(PromptMethod):
    def __init__(self, model, ctx, mask_past: bool = False, lr_schedule: str = "cosine"):
        super().__init__(model, ctx, mask_past, lr_schedule)
        self.prompt = self.add_prompts(nn.Module())  # no prompts

    def features(self, x, train, task_id):
        return self.vit.query(x), 0.0


@register_method("head_joint")
class HeadJoint(HeadFinetune, Joint):
    def __init__(self, model, ctx, lr_schedule: str = "cosine"):
        super().__init__(model, ctx, mask_past=False, lr_schedule=lr_schedule)
