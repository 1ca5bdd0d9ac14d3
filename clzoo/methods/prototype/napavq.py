"""NAPA-VQ: Neighborhood-Aware Prototype Augmentation with Vector Quantization.

Malepathirana, Senanayake, Halgamuge, ICCV 2023 (code: TamashaM/NAPA-VQ@0a8b78d, ``NAPAVQ.py``,
``losses/na_loss.py``). PASS's setting (rotation labels ``4y + k``, prototypes, feature distillation) with the
classifier replaced by neural-gas vector quantization:

* **Coding vectors** (CVs): one learnable vector per joint class, ``[4C, D]``, trained by their own SGD (lr 5,
  x0.1 after the first task, StepLR 20 epochs); the CVs of earlier tasks get zero gradient.
* **Neighbourhood graph** (:class:`NeighbourhoodGraph`, competitive Hebbian learning): every step, for each
  sample, the edges from its best-matching CV (BMU) to its ``k`` nearest CVs are set to 1; every other edge of a
  BMU row decays by ``epsilon`` per visit; edges below ``epsilon ** prune_after`` are removed; the matrix is then
  symmetrised (so it stays symmetric with a unit diagonal).
* **NA loss**: ``mean_i ReLU(||f - c_y||^2 - sum_j w_j ||f - c_j||^2)`` over the graph neighbours j of ``c_y``,
  ``w = softmax_j(-0.001 ||f - c_j||^2)`` detached.
* **Distance cross-entropy**: ``CE(-||f - c_k|| / T, y)`` over the seen CVs, T = 0.1.
* After the first task: feature distillation ``||F - F_old||`` (weight 10) and **NA-PA**: ``batch`` old classes
  drawn uniformly, each prototype mixed with that of a random graph neighbour, ``g p_c + (1 - g) p_n``,
  g ~ U(0.5, 1), labelled ``4c``, trained with the distance cross-entropy (weight 10) and the NA loss.
* Prototypes: mean feature per joint class, stored at the end of each task (and, for the new classes, with the
  previous model at the start of a task, as the code does: a neighbour can be a new class's CV).
* Inference: nearest rotation-0 CV after L2 normalisation of features and CVs.

Memory: backbone, CVs ``4C x D``, graph ``4C x 4C`` and prototypes ``4C x D`` (``prototypes``), the
frozen previous backbone (``teachers``). The model's linear head is dropped (the code keeps an unused one) and the
code's ``cv_connectedness`` matrix, which stays the identity, is not stored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...memory.ledger import tag_memory
from ..base import build_optimizer
from ..parts.distillation import feature_distillation
from ..parts.prototypes import PrototypeStore, ncm_logits
from ..parts.rotation import N_ROTATIONS, check_square_images, joint_labels, rotate4
from ..registry import register_method
from .base import ExemplarFreeMethod


class NeighbourhoodGraph(nn.Module):
    """Coding vectors and their neural-gas neighbourhood graph; the first ``n`` CVs are the active ones."""

    def __init__(self, n_cvs: int, dim: int, k: int = 15, epsilon: float = 0.9, prune_after: int = 10,
                 neighbour_scale: float = 0.001):
        super().__init__()
        self.cvs = tag_memory(nn.ParameterDict({"weight": nn.Parameter(torch.randn(n_cvs, dim))}), "prototypes")
        self.register_buffer("edges", torch.eye(n_cvs))
        self.memory_categories = {"edges": "prototypes"}
        self.k, self.epsilon, self.e_min, self.neighbour_scale = k, epsilon, epsilon ** prune_after, neighbour_scale

    @property
    def weight(self) -> Tensor:
        return self.cvs["weight"]

    @torch.no_grad()
    def update(self, feats: Tensor, n: int, dist: Tensor | None = None) -> None:
        """One competitive-Hebbian update of the graph of the first ``n`` CVs by the features ``feats``, left
        unsymmetrised (call :meth:`symmetrise` after using it, as the code does)."""
        if dist is None:
            dist = torch.cdist(feats.detach(), self.weight[:n])
        k = min(self.k, n)
        knn = dist.topk(k, dim=1, largest=False).indices              # [B, k], the BMU first
        bmu = knn[:, 0]
        visits = torch.bincount(bmu, minlength=n).to(self.edges.dtype)
        closest = torch.zeros(n, n, dtype=self.edges.dtype, device=self.edges.device)
        closest.index_put_((bmu.repeat_interleave(k), knn.flatten()), torch.ones_like(knn.flatten(), dtype=closest.dtype),
                           accumulate=True)
        decays = (visits.unsqueeze(1) - closest).clamp(min=0)          # visits of the row's BMU without that edge
        e = torch.maximum(self.edges[:n, :n], (closest > 0).to(closest.dtype)) * self.epsilon ** decays
        self.edges[:n, :n] = e.masked_fill(e < self.e_min, 0.0)

    @torch.no_grad()
    def symmetrise(self) -> None:
        self.edges.copy_((self.edges + self.edges.T) / 2)

    def na_loss(self, feats: Tensor, labels: Tensor, n: int) -> Tensor:
        """The neighbourhood-aware loss of ``feats`` with joint labels ``labels`` against the first ``n`` CVs."""
        sq = torch.cdist(feats, self.weight[:n]).pow(2)                 # [B, n]
        d_pos = sq.gather(1, labels.unsqueeze(1)).squeeze(1)
        neighbours = self.edges[labels, :n] > 0
        neighbours[torch.arange(len(labels), device=labels.device), labels] = False
        d_neg = sq * neighbours
        with torch.no_grad():
            w = torch.exp(-self.neighbour_scale * d_neg) * (d_neg > 0)
            w = torch.nan_to_num(w / w.sum(1, keepdim=True))
        return F.relu(d_pos - (w * d_neg).sum(1)).mean()

    def forward(self, feats: Tensor, labels: Tensor, n: int) -> Tensor:
        """Graph update, NA loss, symmetrisation: one call of the code's ``NAVQ.forward``."""
        self.update(feats, n)
        loss = self.na_loss(feats, labels, n)
        self.symmetrise()
        return loss

    def distance_logits(self, feats: Tensor, n: int) -> Tensor:
        """``-||f - c_k||`` to the first ``n`` CVs (the distance cross-entropy's logits)."""
        return -torch.cdist(feats, self.weight[:n])


@register_method("napavq")
class NAPAVQ(ExemplarFreeMethod):
    def __init__(self, model, ctx, cv_lr: float = 5.0, cv_lr_step_epochs: int | None = 20, k: int = 15,
                 epsilon: float = 0.9, prune_after: int = 10, proto_aug_weight: float = 10.0, kd_weight: float = 10.0,
                 temperature: float = 0.1, proto_batch_size: int | None = None, later_lr_scale: float = 0.1,
                 lr_step_epochs: int | None = 45, lr_gamma: float = 0.1, buffer=None):
        super().__init__(model, ctx, buffer)
        check_square_images(ctx.stream.input_shape, "NAPA-VQ's rotation self-supervision")
        self.cv_lr, self.cv_lr_step_epochs = cv_lr, cv_lr_step_epochs
        self.proto_aug_weight, self.kd_weight, self.temperature = proto_aug_weight, kd_weight, temperature
        self.proto_batch_size = proto_batch_size
        self.later_lr_scale, self.lr_step_epochs, self.lr_gamma = later_lr_scale, lr_step_epochs, lr_gamma
        n_joint = N_ROTATIONS * ctx.stream.n_classes
        self.model.head = nn.Identity()  # classification is by the coding vectors
        self.navq = NeighbourhoodGraph(n_joint, self.feature_dim, k, epsilon, prune_after)
        self.prototypes = PrototypeStore(n_joint, self.feature_dim)
        self.teacher = self.frozen_copy(self.model.backbone)
        self.cv_opt: torch.optim.Optimizer | None = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def reset_optimizer(self):
        scale = self.later_lr_scale if self.current_task > 0 else 1.0
        lr = float(self.ctx.optimizer.get("lr", 0.1)) * scale
        self.opt = build_optimizer(self.model.parameters(), **{**self.ctx.optimizer, "lr": lr})
        self.cv_opt = torch.optim.SGD(self.navq.parameters(), lr=self.cv_lr * scale)
        self.schedule_milestones(self.opt)  # the backbone's; the CVs have their own StepLR

    def n_joint(self, task_id: int) -> int:
        return N_ROTATIONS * self.seen_classes(task_id)

    def begin_task(self, task):
        self.schedule_epochs(self.opt, self.lr_step_epochs, self.lr_gamma)
        self.schedule_epochs(self.cv_opt, self.cv_lr_step_epochs, self.lr_gamma)
        if task.id > 0:  # the new classes' prototypes under the previous model (NA-PA may pick them as neighbours)
            self.store_prototypes(task)

    @torch.no_grad()
    def store_prototypes(self, task) -> None:
        feats = self.eval_features(task.x_train, augment=lambda x: rotate4(self.preprocess(x))[0])
        self.prototypes.update(feats, joint_labels(task.y_train.to(self.device)))

    def observe(self, x, y, task_id):
        x4, y4 = rotate4(self.augment(x), y)
        n = self.n_joint(task_id)
        feats = self.features(x4)
        loss = F.cross_entropy(self.navq.distance_logits(feats, n) / self.temperature, y4)
        loss = loss + self.navq(feats, y4, n)
        if task_id > 0:
            with torch.no_grad():
                old_feats = self.teacher(x4).flatten(1)
            loss = loss + self.kd_weight * feature_distillation(feats, old_feats)
            aug, aug_y = self.neighbourhood_augment(self.proto_batch_size or len(x), self.seen_classes(task_id - 1))
            loss = loss + self.navq(aug, aug_y, n)
            loss = loss + self.proto_aug_weight * F.cross_entropy(
                self.navq.distance_logits(aug, n) / self.temperature, aug_y)
        self.opt.zero_grad(set_to_none=True)
        self.cv_opt.zero_grad(set_to_none=True)
        loss.backward()
        if task_id > 0 and self.navq.weight.grad is not None:  # earlier tasks' CVs stay fixed
            self.navq.weight.grad[:self.n_joint(task_id - 1)] = 0
        self.opt.step()
        self.cv_opt.step()
        return loss.detach()

    def neighbourhood_augment(self, n: int, n_old_classes: int) -> tuple[Tensor, Tensor]:
        """NA-PA: rotation-0 prototypes of ``n`` uniformly drawn old classes, each mixed with the prototype of a
        random graph neighbour (itself included) by ``g ~ U(0.5, 1)``; labels ``4c``."""
        idx = N_ROTATIONS * torch.randint(n_old_classes, (n,), device=self.device)
        neighbour = torch.multinomial((self.navq.edges[idx] > 0).float(), 1).squeeze(1)
        g = torch.empty(n, 1, device=self.device).uniform_(0.5, 1.0)
        means = self.prototypes.means
        return g * means[idx] + (1 - g) * means[neighbour], idx

    def end_task(self, task):
        self.store_prototypes(task)
        self.teacher.load_state_dict(self.model.backbone.state_dict())

    def forward(self, x, task_id=None):
        cvs = self.navq.weight[::N_ROTATIONS]  # rotation-0 CVs, one per class
        seen = torch.arange(len(cvs), device=cvs.device) < self.seen_classes()
        return ncm_logits(self.features(x), cvs, "cosine", seen)
