"""MIR (ER-MIR): Maximally Interfered Retrieval.

Aljundi, Caccia, Belilovsky, Caccia, Lin, Charlin & Tuytelaars, "Online Continual Learning with Maximally
Interfered Retrieval", NeurIPS 2019 (official code: optimass/Maximally_Interfered_Retrieval, ``mir.py``
``retrieve_replay_update``). Instead of replaying a random buffer batch, replay the stored samples whose loss the
coming update would increase most. Per incoming batch:

1. the incoming loss and its gradient g;
2. a virtual SGD step, theta_v = theta - lr * g (``torch.func.functional_call`` on the updated parameters; no
   model copy);
3. ``subsample`` candidates drawn from the buffer, **excluding the current task's samples** (task-free runs, where
   the task is unknown: excluding the samples of the classes present in the incoming batch, as Avalanche's MIR);
4. interference score ``CE(theta_v; x, y) - CE(theta; x, y)`` for each candidate; with ``stored_logits`` (the
   official ``--compare_to_old_logits``), ``CE(theta_v) - min(CE(theta), CE(stored logits))`` and the stored
   logits are refreshed where the current loss is lower;
5. the top ``minibatch_size`` candidates join the incoming batch in **one** real SGD step (the gradients add up);
6. the incoming batch is offered to the reservoir.

With no candidate (the first task) the step is a plain step on the incoming batch, as the official code, which
rehearses only from the second task. Memory: the reservoir buffer; with ``stored_logits`` also C float32 logits per
slot (``exemplar_extras``). The official buffer stores float32 inputs (4x the bytes of our uint8 images) and keeps
a replaced slot's old logits for its new occupant; ours starts a new occupant at zero logits (the official
initial value). The virtual step uses plain SGD at ``trainer.optimizer.lr`` whatever the optimizer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..base import Method
from ..registry import register_method


def candidate_pool(buffer, exclude_task: int | None = None, exclude_classes: Tensor | None = None) -> Tensor:
    """Indices of the stored samples MIR may retrieve: not of task ``exclude_task`` and not of a class in
    ``exclude_classes``."""
    filled = len(buffer)
    keep = torch.ones(filled, dtype=torch.bool, device=buffer.x.device)
    if exclude_task is not None:
        keep &= buffer.task[:filled] != exclude_task
    if exclude_classes is not None:
        keep &= ~torch.isin(buffer.y[:filled].long(), exclude_classes)
    return keep.nonzero().squeeze(1)


@register_method("mir")
class MIR(Method):
    supports_task_free = True

    def __init__(self, model, ctx, buffer: dict | int | str = 500, minibatch_size: int = 10, subsample: int = 50,
                 stored_logits: bool = False):
        super().__init__(model, ctx)
        if minibatch_size < 1 or subsample < minibatch_size:
            raise ValueError(f"mir: need 1 <= method.minibatch_size <= method.subsample, got minibatch_size="
                             f"{minibatch_size}, subsample={subsample}")
        self.minibatch_size, self.subsample, self.stored_logits = minibatch_size, subsample, stored_logits
        self.buffer = self.make_buffer(buffer, store_logits=stored_logits)
        if subsample > self.buffer.capacity:
            raise ValueError(f"mir: method.subsample={subsample} is larger than the buffer ({self.buffer.capacity} "
                             f"samples); lower method.subsample or raise the buffer capacity / budget.mb")

    def candidates(self, y: Tensor, task_id: int | None) -> Tensor:
        if task_id is None:
            pool = candidate_pool(self.buffer, exclude_classes=y.unique())
        else:
            pool = candidate_pool(self.buffer, exclude_task=task_id)
        return pool[torch.randperm(len(pool), device=pool.device)[: self.subsample]]

    def interference(self, index: Tensor, lr: float) -> tuple[Tensor, Tensor, Tensor]:
        """Scores of the stored samples ``index`` after the virtual step (the gradients are in ``.grad``), with
        their network input and labels (the chosen ones are replayed on that same input)."""
        batch = self.buffer.get(index)
        inputs = self.augment(batch.x)
        named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        virtual = {n: (p - lr * p.grad if p.grad is not None else p).detach() for n, p in named.items()}
        # buffers copied: the virtual forward must not update the model's BatchNorm statistics a second time
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        with torch.no_grad():
            pre_logits = self.model(inputs)
            pre = F.cross_entropy(pre_logits, batch.y, reduction="none")
            post = F.cross_entropy(functional_call(self.model, {**virtual, **buffers}, (inputs,)), batch.y,
                                   reduction="none")
            if not self.stored_logits:
                return post - pre, inputs, batch.y
            old = F.cross_entropy(batch.logits, batch.y, reduction="none")
            refresh = pre < old
            self.buffer.logits[index[refresh]] = pre_logits[refresh]
            return post - torch.minimum(pre, old), inputs, batch.y

    def observe(self, x, y, task_id):
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.augment(x)), y)
        loss.backward()
        index = self.candidates(y, task_id) if not self.buffer.is_empty else None
        if index is not None and len(index):
            scores, inputs, labels = self.interference(index, float(self.ctx.optimizer.get("lr", 0.1)))
            top = scores.argsort(descending=True)[: self.minibatch_size]
            replay_loss = F.cross_entropy(self.model(inputs[top]), labels[top])
            replay_loss.backward()  # adds to the incoming gradient: one real step on both
            loss = loss + replay_loss.detach()
        self.opt.step()
        zeros = torch.zeros(len(y), self.buffer.n_classes, device=y.device) if self.stored_logits else None
        self.buffer.add(x, y, task_id, logits=zeros)
        return loss.detach()
