"""MAS: Memory Aware Synapses.

Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars, "Memory Aware Synapses: Learning what (not) to forget",
ECCV 2018. A parameter is important when the learned function is sensitive to it: after each task

    Omega_task,k = mean over the task's (unlabelled) data of |d ||f(x)||_2^2 / d theta_k|,

with ``f`` the network output (logits), per sample as the paper defines it (vectorised with ``torch.func``; the
official code takes |.| of a batch-summed gradient). Importances add up over tasks, ``Omega <- Omega +
Omega_task`` (as the official ``accumelate_reg_params``), the parameters become the anchor, and training minimises

    CE(x, y) + lambda * sum_k Omega_k (theta_k - theta*_k)^2.

Memory: Omega and theta*, 2 x P floats (``importance``). lambda 1 is the paper's default, for its small learning
rates; with a 10-way head the output norm makes Omega large (max ~58 on Seq-MNIST after one task), and plain SGD
diverges once lr * lambda * max(Omega) > 1: the DER-paper Seq-MNIST protocol (lr 0.03) needs lambda 0.1.
"""
from __future__ import annotations

from ..parts.anchored import AnchoredMethod
from ..parts.importance import mas_importance
from ..registry import register_method


@register_method("mas")
class MAS(AnchoredMethod):
    def __init__(self, model, ctx, lambda_: float = 1.0):
        super().__init__(model, ctx, lambda_)

    def end_task(self, task):
        self.model.eval()
        omega = mas_importance(self.model, task.x_train.to(self.device), transform=self.preprocess)
        self.model.train()
        self.consolidate(omega)  # importances add up over tasks
