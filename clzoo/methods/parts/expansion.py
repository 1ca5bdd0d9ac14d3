"""What DER (Yan et al., CVPR 2021) and MEMO (Zhou et al., ICLR 2023) share: a representation that grows a block per
task, trained on the new data plus herded exemplars, with an auxiliary head and weight aligning.

At task t > 0 (``begin_task``): a new specialized block is appended, initialised from the previous one; older
blocks are frozen and stay in eval mode; a fresh auxiliary head over (new classes + 1) is built. Training minimises

    CE(head(concat of all blocks' features), y)  +  aux_weight * CE(aux_head(newest block's feature), y_aux)

over the classes seen so far, where ``y_aux`` is ``y - n_old + 1`` for a new class and 0 for every old class (the
auxiliary loss is off at task 0, as in the official code). After the task (``end_task``): weight aligning (Zhao et
al., CVPR 2020) scales the new classes' head rows by ``mean ||w_old|| / mean ||w_new||``; then the exemplars are
updated as iCaRL's (a fixed total shared by the classes seen, herding on normalised features).

Memory: the blocks that will be added are reserved when an ``auto`` buffer is sized, so the budget holds at the
end of the stream (under ``budget.convention=memo`` with ``count_model=true`` this is exactly the aligned-memory
accounting of MEMO; see :mod:`clzoo.memory.aligned`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ...memory.ledger import tag_memory
from ...models.expandable import ExpandableNet, split_for_expansion
from ..base import Method
from .exemplars import eval_features, update_herding_exemplars, with_exemplars


class ExpandingRepresentation(Method):
    #: True: the whole backbone is the per-task block (DER); False: only the declared specialized part (MEMO)
    whole_backbone: bool = False

    def __init__(self, model, ctx, buffer: dict | int | str = 2000, aux_weight: float = 1.0,
                 weight_align: bool = True, train_base: bool = True, feature_batch_size: int = 1000):
        super().__init__(model, ctx)
        self.aux_weight, self.weight_align, self.train_base = float(aux_weight), bool(weight_align), bool(train_base)
        self.feature_batch_size = int(feature_batch_size)
        info = ctx.stream
        generalized, specialized = split_for_expansion(model.backbone, whole=self.whole_backbone)
        self.model = ExpandableNet(generalized, specialized, model.backbone.out_features, info.n_classes,
                                   max_blocks=info.n_tasks, aux_classes=max(len(c) for c in info.task_classes) + 1)
        future_block = tag_memory(copy.deepcopy(specialized), "per_task")
        reserved = (info.n_tasks - 1) * ctx.budget.measure(future_block).budgeted_bytes
        self.buffer = self.make_buffer(buffer, selection="herding", reserved_bytes=reserved)

    def training_data(self, task):
        return with_exemplars(self.buffer, task)

    def begin_task(self, task):
        if task.id > 0:
            self.model.grow_to(task.id + 1)
            if not self.train_base:
                self.model.generalized.requires_grad_(False)
        self.model.reset_aux_head()
        self.train(self.training)
        self.reset_optimizer()  # the new block's parameters, not the frozen ones

    def observe(self, x, y, task_id):
        logits, feats = self.model(self.augment(x), return_features=True)
        n_seen = self.seen_classes(task_id)
        loss = F.cross_entropy(logits[:, :n_seen], y)
        if task_id > 0 and self.aux_weight:
            n_old = self.seen_classes(task_id - 1)
            aux_logits = self.model.aux_head(feats[:, -self.model.feature_dim:])[:, :n_seen - n_old + 1]
            aux_targets = torch.where(y >= n_old, y - n_old + 1, torch.zeros_like(y))
            loss = loss + self.aux_weight * F.cross_entropy(aux_logits, aux_targets)
        return self.step(loss)

    @torch.no_grad()
    def align_weights(self, n_old: int, n_seen: int) -> float:
        """Weight aligning: scale the new classes' head rows so their mean norm equals the old rows'; returns gamma."""
        weight = self.model.head.weight[:, :self.model.n_features]
        gamma = weight[:n_old].norm(dim=1).mean() / weight[n_old:n_seen].norm(dim=1).mean()
        self.model.head.weight[n_old:n_seen] *= gamma
        return float(gamma)

    @torch.no_grad()
    def end_task(self, task):
        n_seen = self.seen_classes(task.id)
        if task.id > 0 and self.weight_align:
            self.align_weights(self.seen_classes(task.id - 1), n_seen)
        update_herding_exemplars(self.buffer, task, n_seen,
                                 lambda x: eval_features(self, x, self.feature_batch_size))

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.train_base and self.current_task > 0:
            self.model.generalized.eval()
        return self

    def forward(self, x, task_id=None):
        return self.model(x)


__all__ = ["ExpandingRepresentation"]
