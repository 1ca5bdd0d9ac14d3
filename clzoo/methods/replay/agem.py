"""A-GEM: Averaged Gradient Episodic Memory.

Chaudhry, Ranzato, Rohrbach, Elhoseiny, "Efficient Lifelong Learning with A-GEM", ICLR 2019. Each step computes
the gradient g of the loss on the incoming batch and a reference gradient g_ref of the loss on a batch drawn
from the episodic memory of earlier tasks; if they conflict (g . g_ref < 0), g is projected so the memory loss
does not increase to first order:

    g~ = g - (g . g_ref / g_ref . g_ref) g_ref

Episodic memory (the original rule): the memory of M samples is split evenly over the T tasks of the stream
(task t owns ``(t+1)M//T - tM//T`` slots, so every slot is used); at the end of a task its slots are filled
with a random, class-balanced subset of that task's training data, and they are never overwritten. (Mammoth's
``agem.end_task`` stores the first shuffled batch of size M//T of the task: as many samples, not balanced over
classes.) The memory is empty during the first task, which is therefore plain SGD.

Defaults: the DER paper's Seq-MNIST arguments (reference batch 128, ``trainer.optimizer.lr=0.1``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...memory.selection import class_balanced_random
from ..base import Method
from ..registry import register_method


def project_gradient(g: Tensor, g_ref: Tensor) -> Tensor:
    """A-GEM's projection of the flat gradient ``g`` against ``g_ref``: unchanged when ``g . g_ref >= 0``, else
    its component along ``g_ref`` is removed (then ``g~ . g_ref = 0``). No host synchronisation."""
    dot = torch.dot(g, g_ref)
    coef = torch.where(dot < 0, dot / g_ref.dot(g_ref).clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(dot))
    return g - coef * g_ref


@register_method("agem")
class AGEM(Method):
    def __init__(self, model, ctx, buffer: dict | int | str = 500, minibatch_size: int = 128):
        super().__init__(model, ctx)
        self.minibatch_size = minibatch_size
        self.buffer = self.make_buffer(buffer)

    def _flat_grad(self, loss: Tensor, params: list) -> Tensor:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])

    def observe(self, x, y, task_id):
        params = [p for p in self.trainable_parameters() if p.requires_grad]
        loss = F.cross_entropy(self.model(self.augment(x)), y)
        g = self._flat_grad(loss, params)
        if not self.buffer.is_empty:
            ref = self.buffer.sample(self.minibatch_size)
            g_ref = self._flat_grad(F.cross_entropy(self.model(self.augment(ref.x)), ref.y), params)
            g = project_gradient(g, g_ref)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = g[offset:offset + n].view_as(p)
            offset += n
        self.opt.step()
        return loss.detach()

    def end_task(self, task):
        """Store this task's share of the memory: a random, class-balanced subset of its training data."""
        T, M = self.ctx.stream.n_tasks, self.buffer.capacity
        t = min(task.id, T - 1)
        n_slots = (t + 1) * M // T - t * M // T
        idx = class_balanced_random(task.y_train, n_slots).to(task.y_train.device)
        old = self.buffer.all()
        dev = self.buffer.x.device
        x = torch.cat([old.x, task.x_train[idx].to(dev)])
        y = torch.cat([old.y, task.y_train[idx].to(dev)])
        tid = torch.cat([old.task, torch.full((len(idx),), task.id, dtype=torch.long, device=dev)])
        self.buffer.set_contents(x, y, tid)
