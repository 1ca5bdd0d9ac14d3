"""iCaRL: incremental Classifier and Representation Learning.

Rebuffi, Kolesnikov, Sperl, Lampert, "iCaRL: Incremental Classifier and Representation Learning", CVPR 2017.

* Training set of a task: its new data plus every stored exemplar (Alg. 3, "update representation").
* Loss: sigmoid binary cross-entropy over the classes seen so far; the targets of the new classes are the one-hot
  labels, those of the old classes are the old network's sigmoid outputs on the same input (distillation). The
  old network (``teacher``) is the model at the end of the previous task; it is allocated at construction and
  refreshed at every task end, and is paid for as ``teachers``. ``loss=ce_kd`` is PyCIL's iCaRL instead (the
  iCaRL that PyCIL's and MEMO's tables report): cross-entropy over the classes seen plus the knowledge-distillation
  loss at ``kd_temperature`` (2) between the old network's and the model's logits of the old classes, weight 1
  (:func:`clzoo.methods.parts.distillation.distillation_kl`, the same gradient as PyCIL's ``_KD_loss``).
* Memory: a fixed total of M exemplars shared equally by the classes seen so far, m = M // n_seen per class. At
  a task end each old class keeps the first m of its exemplars (Alg. 5, "reduce exemplar set") and each new class
  gets m exemplars chosen by herding on L2-normalised features (Alg. 4; :func:`clzoo.memory.selection.herding`).
* Classification: nearest mean of exemplars (Alg. 1). The class means (mean of the normalised features of a
  class's exemplars, renormalised) are computed once the exemplar set is updated and kept as ``prototypes``
  (preallocated for every class); ``forward`` returns ``-|| phi(x)/|phi(x)| - mu_c ||^2`` as logits.

Defaults: the DER paper's Seq-MNIST arguments (``trainer.optimizer.lr=0.1``, no weight decay).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method
from ..parts.distillation import distillation_kl
from ..parts.exemplars import eval_features, update_herding_exemplars, with_exemplars
from ..registry import register_method


@register_method("icarl")
class ICaRL(Method):
    def __init__(self, model, ctx, buffer: dict | int | str = 500, feature_batch_size: int = 1000, loss: str = "bce",
                 kd_temperature: float = 2.0):
        super().__init__(model, ctx)
        if loss not in ("bce", "ce_kd"):
            raise ValueError(f"icarl: method.loss={loss} is not a loss; choose bce (the paper's sigmoid distillation) "
                             "or ce_kd (PyCIL's cross-entropy + knowledge distillation)")
        self.feature_batch_size, self.loss, self.kd_temperature = feature_batch_size, loss, kd_temperature
        self.teacher = self.frozen_copy()
        n_classes, dim = ctx.stream.n_classes, model.head.in_features
        self.register_buffer("prototypes", torch.zeros(n_classes, dim))
        self.memory_categories = {"prototypes": "prototypes"}
        self.buffer = self.make_buffer(buffer, selection="herding")

    def training_data(self, task):
        return with_exemplars(self.buffer, task)

    def observe(self, x, y, task_id):
        inputs = self.augment(x)
        n_seen = self.seen_classes(task_id)
        logits = self.model(inputs)[:, :n_seen]
        old = None  # the old network's logits of the old classes (distillation), from the second task on
        if task_id > 0:
            with torch.no_grad():
                old = self.teacher(inputs)[:, :self.seen_classes(task_id - 1)]
        if self.loss == "ce_kd":
            loss = F.cross_entropy(logits, y)
            if old is not None:
                loss = loss + distillation_kl(logits[:, :old.shape[1]], old, self.kd_temperature)
            return self.step(loss)
        targets = F.one_hot(y, n_seen).float()
        if old is not None:
            targets[:, :old.shape[1]] = torch.sigmoid(old)
        return self.step(F.binary_cross_entropy_with_logits(logits, targets))

    def features(self, x) -> torch.Tensor:
        """L2-normalised features of stored inputs ``x`` (evaluation transform, eval mode, in batches)."""
        return eval_features(self, x, self.feature_batch_size)

    @torch.no_grad()
    def end_task(self, task):
        update_herding_exemplars(self.buffer, task, self.seen_classes(task.id), self.features)
        # class means of the exemplars, for nearest-mean-of-exemplars classification
        stored = self.buffer.all()
        feats = self.features(stored.x)
        sums = torch.zeros_like(self.prototypes).index_add_(0, stored.y, feats)
        self.prototypes.copy_(F.normalize(sums, dim=1))
        # the old network for the next task's distillation targets
        self.teacher.load_state_dict(self.model.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the old network always runs in inference mode
        return self

    def forward(self, x, task_id=None):
        feats = F.normalize(self.model.features(x).flatten(1), dim=1)
        return -torch.cdist(feats, self.prototypes).pow(2)
