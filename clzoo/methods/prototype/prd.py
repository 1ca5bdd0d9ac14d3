"""PRD: Prototype-Sample Relation Distillation.

Asadi, Davari, Mudur, Aljundi, Belilovsky, "Prototype-Sample Relation Distillation: Towards Replay-Free Continual
Learning", ICML 2023 (code: naderAsadi/Probing-Continual-Learning@8b82d53, ``methods/repe.py``). No exemplars.

Every step takes two augmented views of the batch, features ``h`` from the backbone and projections ``z`` from an
MLP head (D -> hidden -> hidden -> projection_dim), and minimises

    SupCon(z; y, tau)  +  prototypes_coef * L_p  +  distill_coef * L_d

* ``L_p = mean_i [1 - cos(h_i.detach(), w_{y_i})]`` over the current task's prototypes: the features are detached,
  so prototypes follow the representation without shaping it.
* ``L_d = sum_{old tasks j} KL(softmax(s_old_j / T) || softmax(s_new_j / T))`` with ``s_j = h W_j^T / ||W_j||``
  (rows of task j's prototypes normalised, features not); ``s_old`` uses the backbone and prototypes frozen at the
  end of the previous task. The gradient reaches the backbone and the old prototypes. At the first step of a task
  the two models are equal, so ``L_d = 0``.
* Prototypes have their own parameter group (lr ``prototypes_lr``, no momentum, no weight decay).
* Inference: cosine between the feature and every seen class's prototype (class-IL masks classes not seen yet,
  which the code's ``_classify_CI`` includes).

Memory: backbone (``backbone``), the projection head, used in training only (``other``), prototypes ``C x D`` (``prototypes``), the frozen previous
backbone and prototypes (``teachers``); the model's linear head is dropped. Differences from the code: the frozen
copy runs in the student's mode (the code's copy stays in train mode too, BatchNorm on batch statistics) but
does not update its running statistics; ``first_task_extra_epochs`` repeats the first task's data instead of
running warm-up epochs (the README: +120 on the first task).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...memory.ledger import tag_memory
from ..base import build_optimizer
from ..parts.contrastive import supcon_loss
from ..registry import register_method
from .base import ExemplarFreeMethod


def relation_scores(h: Tensor, prototypes: Tensor) -> Tensor:
    """``h W^T / ||W||`` (prototype rows normalised, features not): PRD's prototype-sample relations."""
    return h @ F.normalize(prototypes, dim=1).T


@register_method("prd")
class PRD(ExemplarFreeMethod):
    def __init__(self, model, ctx, supcon_temperature: float = 0.1, prototypes_coef: float = 2.0,
                 distill_coef: float = 4.0, distill_temperature: float = 1.0, projection_hidden: int = 512,
                 projection_dim: int = 128, prototypes_lr: float | None = None, first_task_extra_epochs: int = 0,
                 buffer=None):
        super().__init__(model, ctx, buffer)
        self.supcon_temperature, self.prototypes_coef = supcon_temperature, prototypes_coef
        self.distill_coef, self.distill_temperature = distill_coef, distill_temperature
        self.prototypes_lr, self.first_task_extra_epochs = prototypes_lr, int(first_task_extra_epochs)
        d = self.feature_dim
        self.model.head = nn.Identity()  # classification is by the prototypes
        self.projection = tag_memory(nn.Sequential(nn.Linear(d, projection_hidden), nn.ReLU(),
                                                   nn.Linear(projection_hidden, projection_hidden), nn.ReLU(),
                                                   nn.Linear(projection_hidden, projection_dim)), "other")
        self.prototypes = nn.Parameter(nn.Linear(d, ctx.stream.n_classes, bias=False).weight.detach().clone())
        self.register_buffer("old_prototypes", torch.zeros_like(self.prototypes))
        self.memory_categories = {"prototypes": "prototypes", "old_prototypes": "teachers"}
        self.teacher = self.frozen_copy(self.model.backbone)
        for m in self.teacher.modules():  # runs in the student's mode, without moving its BatchNorm statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.0
        self.task_slices = [(min(c), max(c) + 1) for c in ctx.stream.task_classes]

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.train(mode)
        return self

    def reset_optimizer(self):
        self.opt = build_optimizer(list(self.model.parameters()) + list(self.projection.parameters()),
                                   **self.ctx.optimizer)
        lr = self.prototypes_lr if self.prototypes_lr is not None else float(self.ctx.optimizer.get("lr", 0.1))
        group = {"params": [self.prototypes], "lr": lr, "weight_decay": 0.0}
        if isinstance(self.opt, torch.optim.SGD):
            group.update(momentum=0.0, nesterov=False)
        self.opt.add_param_group(group)
        self.schedule_milestones(self.opt)

    def training_data(self, task):
        x, y = task.x_train, task.y_train
        if task.id == 0 and self.first_task_extra_epochs:  # warm-up: the first task's data seen more often
            reps = 1 + self.first_task_extra_epochs // max(self.ctx.epochs, 1)
            x, y = x.repeat(reps, *[1] * (x.dim() - 1)), y.repeat(reps)
        return x, y

    def prototype_loss(self, h: Tensor, y: Tensor, task_id: int) -> Tensor:
        """``mean [1 - cos(h.detach(), w_y)]`` over the current task's prototypes (only they get its gradient)."""
        lo, hi = self.task_slices[task_id]
        scores = relation_scores(F.normalize(h.detach(), dim=1), self.prototypes[lo:hi])
        return (1 - scores.gather(1, (y - lo).unsqueeze(1))).mean()

    def relation_distillation(self, h: Tensor, x: Tensor, task_id: int) -> Tensor:
        """``sum_j KL(softmax(s_old_j / T) || softmax(s_new_j / T))`` over the tasks before ``task_id``."""
        if task_id == 0:
            return h.new_zeros(())
        with torch.no_grad():
            h_old = self.teacher(x).flatten(1)
        loss = h.new_zeros(())
        for lo, hi in self.task_slices[:task_id]:
            new = relation_scores(h, self.prototypes[lo:hi]) / self.distill_temperature
            old = relation_scores(h_old, self.old_prototypes[lo:hi]) / self.distill_temperature
            loss = loss + F.kl_div(F.log_softmax(new, 1), F.log_softmax(old, 1), reduction="batchmean",
                                   log_target=True)
        return loss

    def losses(self, x: Tensor, y: Tensor, task_id: int) -> dict[str, Tensor]:
        views = torch.cat([self.augment(x), self.augment(x)])
        h = self.features(views)
        z = F.normalize(self.projection(h), dim=1)
        b = len(y)
        return {"supcon": supcon_loss(torch.stack([z[:b], z[b:]], 1), y, self.supcon_temperature),
                "prototypes": self.prototype_loss(h, y.repeat(2), task_id),
                "distill": self.relation_distillation(h, views, task_id)}

    def observe(self, x, y, task_id):
        parts = self.losses(x, y, task_id)
        return self.step(parts["supcon"] + self.prototypes_coef * parts["prototypes"]
                         + self.distill_coef * parts["distill"])

    @torch.no_grad()
    def end_task(self, task):
        self.teacher.load_state_dict(self.model.backbone.state_dict())
        self.old_prototypes.copy_(self.prototypes)

    def forward(self, x, task_id=None):
        scores = relation_scores(F.normalize(self.features(x), dim=1), self.prototypes)
        seen = torch.arange(scores.shape[1], device=scores.device) < self.seen_classes()
        return scores.masked_fill(~seen, float("-inf"))
