"""OnPro: Online Prototype learning.

Wei, Ye, Huang, Zhang & Shan, "Online Prototype Learning for Online Continual Learning", ICCV 2023 (official code:
weilllllls/OnPro, ``train.py``, ``modules/OPE.py``, ``modules/APF.py``). Built on OCM: a projection head ``g`` on
the backbone's features, trained with

* **OPE**, online prototype equilibrium: per class present in a batch, the prototypes ``p1_c`` / ``p2_c`` (means of
  the normalised projections of two views), normalised; over the 2K prototypes, each one's positive is its own
  class in the other view, the rest are negatives (:func:`ope_loss`, temperature ``proto_temperature``). It is
  applied to the incoming batch (``L_new``) and to a buffer batch (``L_seen``, from the second batch on);
* the **instance-wise loss** of OCM: supervised NT-Xent over the ``rotations`` rotation views of the samples and
  their augmented views (labels ``y + C * view``), temperature ``ins_temperature``; from the second task on the
  buffer batch's views are added with the uniform variant, and similarities are scaled by ``sim_lambda`` (0.5
  on CIFAR-10 in the official code, 1 elsewhere);
* **cross-entropy**: on the augmented incoming batch during the first task; from the second task on **only on the
  buffer batch**, after **APF** (adaptive prototypical feedback): a ``mixup_base_rate`` share of the buffer batch
  gets random mixup (probability ``mixup_p``, lambda ~ U(``mixup_lower``, ``mixup_upper``)), the rest are mixes of
  class pairs drawn with probability ``softmax(1 / ||p_i - p_j||)`` over the prototype distances from the last
  ``L_seen`` (:func:`apf_pair_probabilities`), so confusable classes are mixed more (lambda ~ Beta(``mixup_alpha``,
  ``mixup_alpha``) with probability ``mixup_p``).

The buffer batch holds ``min(buffer_batch_size, 7 x classes seen)`` samples; the incoming batch is then offered to
the reservoir. Evaluation uses the linear classifier. Optimiser in the paper: Adam, lr 5e-4, betas (0.9, 0.99),
weight decay 1e-4 (``trainer.optimizer``), one optimizer for the whole run as the official code builds it
(``keep_optimizer``, :attr:`clzoo.Method.keeps_optimizer`: Adam's moments are not reset at task boundaries); 16 rotation views (``rotations=4`` is the reduced CPU setting).

Memory: the reservoir buffer (uint8 inputs, labels, task ids), the projection head (``other``: it is not part of the model the predictions come from), the class
prototypes ``classes_mean`` (C x projection_dim floats, ``prototypes``) and the seen-class flags. Differences from
the official code: uint8 buffer (the official one stores float32 inputs and unused logits / feature arrays), no
mixed precision, the projection is ``min(projection_dim, feature width)`` wide, so it also fits small backbones,
and the view transform runs on network input with our batched :class:`ViewAugment`. OnPro separates its
first task from the others, so it needs task boundaries (not task-free).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...memory.ledger import tag_memory
from ..base import Method
from ..parts.contrastive import sup_nt_xent, sup_nt_xent_uniform
from ..parts.views import ViewAugment, check_rotatable, rotation_views, view_labels
from ..registry import register_method


def class_prototypes(z: Tensor, y: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class means of ``z`` [n, d] (zero rows for absent classes) and the mask of classes present."""
    sums = torch.zeros(n_classes, z.shape[1], device=z.device, dtype=z.dtype).index_add(0, y, z)
    counts = torch.bincount(y, minlength=n_classes)
    return sums / counts.clamp_min(1).unsqueeze(1).to(z.dtype), counts > 0


def ope_loss(z1: Tensor, z2: Tensor, y: Tensor, n_classes: int, temperature: float = 0.5
             ) -> tuple[Tensor, Tensor, Tensor]:
    """OPE over the classes present in ``y`` (``z1``, ``z2``: normalised projections of two views).
    Returns the loss and the (unnormalised) prototypes of both views, [n_classes, d], zero where absent."""
    p1, present = class_prototypes(z1, y, n_classes)
    p2, _ = class_prototypes(z2, y, n_classes)
    return prototype_contrast(p1[present], p2[present], temperature), p1, p2


def prototype_contrast(p1: Tensor, p2: Tensor, temperature: float = 0.5) -> Tensor:
    """``-(1/2K) sum_i log[exp(q_i . q_i+ / t) / sum_{j != i} exp(q_i . q_j / t)]`` over the 2K normalised
    prototypes ``q = [p1; p2]``, the positive of ``p1_c`` being ``p2_c`` and vice versa."""
    k = len(p1)
    q = F.normalize(torch.cat([p1, p2]), dim=1)
    logits = q @ q.t() / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    self_mask = torch.eye(2 * k, dtype=torch.bool, device=q.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    positive = torch.arange(2 * k, device=q.device).roll(k)
    return -log_prob[torch.arange(2 * k, device=q.device), positive].mean()


def apf_pair_probabilities(classes_mean: Tensor) -> tuple[Tensor, Tensor]:
    """The class pairs APF mixes and their probabilities ``softmax(1 / ||p_i - p_j||)`` over the classes with a
    prototype (non-zero row of ``classes_mean``). Returns ``pairs`` [P, 2] (class ids, i < j) and ``probs`` [P]."""
    classes = (classes_mean.abs().sum(1) > 0).nonzero().squeeze(1)
    if len(classes) < 2:
        return torch.zeros(0, 2, dtype=torch.long, device=classes_mean.device), torch.zeros(0, device=classes_mean.device)
    dist = torch.pdist(classes_mean[classes])  # pairs (i, j), i < j, in itertools.combinations order
    index = torch.tensor(list(itertools.combinations(range(len(classes)), 2)), device=classes_mean.device)
    return classes[index], F.softmax(1 / dist, dim=0)


def pair_counts(probs: Tensor, n: int) -> Tensor:
    """``n`` samples split over pairs as the official code: round(p * n), then the remainder added to (or taken
    from) random pairs."""
    counts = (probs * n).round().long()
    diff = n - int(counts.sum())
    if diff > 0:
        counts[torch.randperm(len(counts), device=counts.device)[:diff]] += 1
    elif diff < 0:
        nonzero = counts.nonzero().squeeze(1)
        counts[nonzero[torch.randperm(len(nonzero), device=counts.device)[:-diff]]] -= 1
    return counts


@register_method("onpro")
class OnPro(Method):
    def __init__(self, model, ctx, buffer: dict | int | str = 200, buffer_batch_size: int = 64, rotations: int = 16,
                 projection_dim: int = 128, ins_temperature: float = 0.07, proto_temperature: float = 0.5,
                 sim_lambda: float = 1.0, mixup_base_rate: float = 0.75, mixup_p: float = 0.6,
                 mixup_lower: float = 0.0, mixup_upper: float = 0.6, mixup_alpha: float = 0.4,
                 keep_optimizer: bool = True):
        super().__init__(model, ctx)
        self.keeps_optimizer = keep_optimizer  # the official code builds one Adam for the whole run
        check_rotatable(ctx.stream.input_shape, rotations, who="onpro (method.rotations)")
        if not 0.0 <= mixup_base_rate <= 1.0:
            raise ValueError(f"onpro: method.mixup_base_rate must lie in [0, 1], got {mixup_base_rate}")
        self.buffer_batch_size, self.rotations = buffer_batch_size, rotations
        self.ins_temperature, self.proto_temperature, self.sim_lambda = ins_temperature, proto_temperature, sim_lambda
        self.mixup_base_rate, self.mixup_p = mixup_base_rate, mixup_p
        self.mixup_range, self.mixup_alpha = (mixup_lower, mixup_upper), mixup_alpha
        width = model.backbone.out_features
        self.projection = tag_memory(nn.Linear(width, min(projection_dim, width)), "other")
        n_classes = ctx.stream.n_classes
        self.register_buffer("classes_mean", torch.zeros(n_classes, self.projection.out_features))
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))
        self.memory_categories = {"classes_mean": "prototypes", "seen": "other"}
        self.views = ViewAugment()
        self.batches_in_task = 0
        self.buffer = self.make_buffer(buffer)

    def trainable_parameters(self):
        return itertools.chain(self.model.parameters(), self.projection.parameters())

    def begin_task(self, task):
        self.batches_in_task = 0  # the official code treats the first batch of a task apart

    # ------------------------------------------------------------------ pieces
    def project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised backbone features and normalised projections."""
        feats = self.model.features(x)
        return F.normalize(feats, dim=1), F.normalize(self.projection(feats), dim=1)

    def similarities(self, feats: Tensor, proj: Tensor, scale: float = 1.0) -> Tensor:
        """OCM's similarity: proj . proj + proj . (a random projection-wide slice of the features), times
        ``scale`` (``sim_lambda`` after the first task, 1 during it, as the official code)."""
        extra = feats.shape[1] - proj.shape[1]
        start = int(torch.randint(0, max(extra, 1), ()))
        return scale * (proj @ feats[:, start:start + proj.shape[1]].t() + proj @ proj.t())

    def seen_prototype_loss(self, mem_x: Tensor, mem_y: Tensor) -> Tensor:
        """OPE on a buffer batch (two views); its prototypes become ``classes_mean`` (APF's distances)."""
        _, z = self.project(torch.cat([mem_x, self.views(mem_x)]))
        loss, p1, p2 = ope_loss(z[: len(mem_x)], z[len(mem_x):], mem_y, self.ctx.stream.n_classes,
                                self.proto_temperature)
        self.classes_mean.copy_(((p1 + p2) / 2).detach())
        return loss

    def apf(self, mem_x: Tensor, mem_y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Adaptive prototypical feedback: mixed buffer inputs and (y_a, y_b, lambda)."""
        n = len(mem_x)
        n_base = int(n * self.mixup_base_rate)
        base = torch.randperm(n, device=mem_x.device)[:n_base]
        xb, ya = mem_x[base], mem_y[base]
        partner = torch.randperm(n_base, device=mem_x.device)
        lam = torch.empty(n_base, device=mem_x.device).uniform_(*self.mixup_range)
        lam = lam * (torch.rand(n_base, device=mem_x.device) < self.mixup_p)
        xs, yas, ybs, lams = [(1 - lam.view(-1, 1, 1, 1)) * xb + lam.view(-1, 1, 1, 1) * xb[partner]], [ya], \
            [ya[partner]], [lam]
        pairs, probs = apf_pair_probabilities(self.classes_mean)
        n_pairs = n - n_base
        if n_pairs and len(pairs):
            stored_y = self.buffer.y[: len(self.buffer)].long()
            in_buffer = torch.bincount(stored_y, minlength=self.ctx.stream.n_classes) > 0
            available = in_buffer.nonzero().squeeze(1)
            for (a, b), k in zip(pairs.tolist(), pair_counts(probs, n_pairs).tolist()):
                if k == 0:
                    continue
                # a class with a prototype but no stored sample: a random stored class instead, as the official code
                a = a if in_buffer[a] else int(available[torch.randint(len(available), ())])
                b = b if in_buffer[b] else int(available[torch.randint(len(available), ())])
                ia, ib = [(stored_y == c).nonzero().squeeze(1) for c in (a, b)]
                xa = self.preprocess(self.buffer.x[ia[torch.randint(len(ia), (k,), device=ia.device)]])
                xb2 = self.preprocess(self.buffer.x[ib[torch.randint(len(ib), (k,), device=ib.device)]])
                if torch.rand(()) <= self.mixup_p:
                    lam = torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample((k,)).to(xa.device)
                else:
                    lam = torch.zeros(k, device=xa.device)
                xs.append((1 - lam.view(-1, 1, 1, 1)) * xa + lam.view(-1, 1, 1, 1) * xb2)
                yas.append(torch.full((k,), a, device=xa.device))
                ybs.append(torch.full((k,), b, device=xa.device))
                lams.append(lam)
        return torch.cat(xs), torch.cat(yas), torch.cat(ybs), torch.cat(lams)

    # ------------------------------------------------------------------ the step
    def observe(self, x, y, task_id):
        n_classes, v = self.ctx.stream.n_classes, self.rotations
        self.seen[y] = True
        first_batch = self.batches_in_task == 0
        inputs = self.preprocess(x)
        rot = rotation_views(inputs, v)
        if task_id == 0:
            feats, proj = self.project(torch.cat([rot, self.views(rot)]))
            ins = sup_nt_xent(self.similarities(feats, proj), view_labels(y, v, n_classes), self.ins_temperature)
            seen_loss = 0.0
            if not first_batch and not self.buffer.is_empty:
                mem = self.buffer.sample(self.buffer_batch_size)
                seen_loss = self.seen_prototype_loss(self.preprocess(mem.x), mem.y)
            ce = F.cross_entropy(self.model(self.views(inputs)), y)
        else:
            mem = self.buffer.sample(min(self.buffer_batch_size, 7 * int(self.seen.sum())))
            mem_in = self.preprocess(mem.x)
            if not first_batch:
                mix_x, ya, yb, lam = self.apf(mem_in, mem.y)
            else:
                mix_x, ya, yb, lam = mem_in, mem.y, mem.y, torch.zeros(len(mem.y), device=mem_in.device)
            rot_r = rotation_views(mix_x, v)
            feats, proj = self.project(torch.cat([rot, self.views(rot), rot_r, self.views(rot_r)]))
            n_in = 2 * len(rot)
            ins = sup_nt_xent(self.similarities(feats[:n_in], proj[:n_in], self.sim_lambda),
                              view_labels(y, v, n_classes), self.ins_temperature)
            mixed_labels = (1 - lam) * ya + lam * yb  # the official code contrasts mixed samples by mixed label
            ins = ins + sup_nt_xent_uniform(self.similarities(feats[n_in:], proj[n_in:], self.sim_lambda),
                                            view_labels(mixed_labels, v, n_classes), self.ins_temperature)
            logits = self.model(self.views(mix_x))
            ce = ((1 - lam) * F.cross_entropy(logits, ya, reduction="none")
                  + lam * F.cross_entropy(logits, yb, reduction="none")).mean()
            seen_loss = self.seen_prototype_loss(mem_in, mem.y)
        b = len(y)
        new_loss, _, _ = ope_loss(proj[:b], proj[len(rot):len(rot) + b], y, n_classes, self.proto_temperature)
        loss = self.step(ce + ins + new_loss + seen_loss)
        self.buffer.add(x, y, task_id)
        self.batches_in_task += 1
        return loss
