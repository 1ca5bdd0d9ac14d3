"""BiC: Bias Correction.

Wu, Chen, Wang, Ye, Liu, Guo, Fu, "Large Scale Incremental Learning", CVPR 2019 (official code
``wuyuebupt/LargeScaleIncrementalLearning``; the PyTorch port in FACIL, ``mmasana/FACIL``, ``src/approach/bic.py``).

A model trained on the new task's data plus a few exemplars of the old classes is biased towards the new
classes (their logits are too large). BiC fixes that with a two-parameter linear layer on the new classes'
logits, fitted on a small *validation* set that the model was never trained on, so it sees the bias as test
data would:

* **Memory.** M exemplars, shared equally by the classes seen so far (m = M // n_seen per class). Each class's
  exemplars are split train : validation = (1 - f) : f (f = ``validation_fraction``, the paper's 9:1): the
  training exemplars are replayed, the validation exemplars are only used to fit the bias layer. A new class gets
  its training exemplars by herding on the features (as iCaRL; :func:`clzoo.memory.selection.herding`) and its
  validation exemplars from ``task.x_val``, the split the engine held out of the task's training data for this
  method (``validation_fraction``); an old class keeps the first exemplars of each part.
* **Stage 1 (training, every step).** On the new data plus the training exemplars, with the bias layers of the
  earlier tasks applied to both networks:
  ``L = lambda * L_d + (1 - lambda) * L_c``, ``lambda = n / (n + m)`` (n old classes, m new ones), ``L_c`` the
  cross-entropy over the classes seen so far and ``L_d`` the distillation loss of the old model
  (``teacher``): ``-sum_k softmax(o_hat / T)_k log softmax(o / T)_k`` over the n old classes, T = 2 (Eq. 1-3).
* **Stage 2 (end of task t > 0).** The model is frozen; the new classes' logits get ``alpha_t * o + beta_t``
  (Eq. 4); ``alpha_t, beta_t`` minimise the cross-entropy over the seen classes on the validation exemplars of
  every class (Eq. 5), with SGD (momentum 0.9) for ``bias_epochs`` epochs plus the official code's
  ``0.1 * beta^2 / 2`` penalty. Earlier tasks' layers stay fixed, and all of them are applied at test time.

State: the model, its frozen copy (``teachers``), the exemplar buffer, per class the number of its stored
exemplars that are validation exemplars (``exemplar_extras``) and the (alpha, beta) of every task (``per_task``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...memory.buffer import label_dtype
from ...memory.selection import herding
from ..base import Method
from ..registry import register_method


@register_method("bic")
class BiC(Method):
    transient_state = ("owner",)  # the task of every class: derived from ctx.stream, so not state

    def __init__(self, model, ctx, buffer: dict | int | str = 500, validation_fraction: float = 0.1,
                 temperature: float = 2.0, bias_epochs: int = 200, bias_lr: float | None = None,
                 bias_batch_size: int = 32, feature_batch_size: int = 1000):
        super().__init__(model, ctx)
        info = ctx.stream
        if info.scenario == "domain_il":
            raise ValueError("bic corrects the bias towards new classes: it needs a stream whose tasks bring new "
                             "classes (stream.scenario=class_il or task_il), not domain_il")
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"bic: validation_fraction must be in (0, 1), got {validation_fraction}")
        self.validation_fraction = validation_fraction  # the engine holds this fraction of each task out
        self.temperature, self.bias_epochs, self.bias_lr = temperature, bias_epochs, bias_lr
        self.bias_batch_size, self.feature_batch_size = bias_batch_size, feature_batch_size
        self.teacher = self.frozen_copy()
        # (alpha, beta) of every task's bias layer; identity until fitted (task 0's never is)
        self.register_buffer("bias", torch.tensor([[1.0, 0.0]]).repeat(info.n_tasks, 1))
        # how many of each class's stored exemplars (its last ones, in slot order) are validation exemplars
        self.register_buffer("n_val", torch.zeros(info.n_classes, dtype=label_dtype(info.n_classes)))
        self.memory_categories = {"bias": "per_task", "n_val": "exemplar_extras"}
        owner = torch.zeros(info.n_classes, dtype=torch.long)
        for t, classes in enumerate(info.task_classes):
            owner[classes] = t
        self.register_buffer("owner", owner, persistent=False)
        self.buffer = self.make_buffer(buffer, selection="herding")

    # ------------------------------------------------------------------ the bias correction layers
    def correct(self, logits: Tensor, bias: Tensor | None = None) -> Tensor:
        """Every class's logit through its task's layer: ``alpha_t * o + beta_t`` (Eq. 4)."""
        ab = (self.bias if bias is None else bias)[self.owner]
        return logits * ab[:, 0] + ab[:, 1]

    def forward(self, x, task_id=None):
        return self.correct(self.model(x))

    # ------------------------------------------------------------------ exemplars: training and validation parts
    def _val_mask(self, y: Tensor) -> Tensor:
        """True for the stored exemplars that are validation exemplars (the last ``n_val[c]`` of class c)."""
        mask = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        for c in y.unique().tolist():
            slots = (y == c).nonzero().squeeze(1)
            k = int(self.n_val[c])
            if k:
                mask[slots[-k:]] = True
        return mask

    def training_data(self, task):
        stored = self.buffer.all()
        train = ~self._val_mask(stored.y)
        dev = stored.x.device
        return torch.cat([task.x_train.to(dev), stored.x[train]]), torch.cat([task.y_train.to(dev), stored.y[train]])

    # ------------------------------------------------------------------ stage 1
    def observe(self, x, y, task_id):
        n_seen = self.seen_classes(task_id)
        inputs = self.augment(x)
        logits = self.correct(self.model(inputs))[:, :n_seen]
        loss = F.cross_entropy(logits, y)
        if task_id > 0:
            n_old = self.seen_classes(task_id - 1)
            with torch.no_grad():
                old = self.correct(self.teacher(inputs))[:, :n_old]
            T = self.temperature
            distill = -(F.softmax(old / T, 1) * F.log_softmax(logits[:, :n_old] / T, 1)).sum(1).mean()
            lam = n_old / n_seen
            loss = lam * distill + (1 - lam) * loss
        return self.step(loss)

    # ------------------------------------------------------------------ end of task: memory, stage 2, teacher
    @torch.no_grad()
    def features(self, x) -> Tensor:
        """L2-normalised features of stored inputs ``x`` (evaluation transform, eval mode, in batches)."""
        was_training = self.model.training
        self.model.eval()
        out = torch.cat([self.model.features(self.preprocess(x[i:i + self.feature_batch_size]))
                         for i in range(0, len(x), self.feature_batch_size)])
        self.model.train(was_training)
        return F.normalize(out.flatten(1), dim=1)

    def _split(self, m: int) -> int:
        """Validation exemplars among a class's ``m`` (at least one once a class has two)."""
        return min(max(math.ceil(self.validation_fraction * m), 1 if m >= 2 else 0), m)

    @torch.no_grad()
    def _update_memory(self, task) -> None:
        dev = self.buffer.x.device
        n_seen = self.seen_classes(task.id)
        m = self.buffer.capacity // n_seen
        k_val = self._split(m)
        old = self.buffer.all()
        is_val = self._val_mask(old.y)
        xs, ys, ts, n_val = [], [], [], self.n_val.clone()
        for c in old.y.unique().tolist():  # reduce: first exemplars of each part
            mine = old.y == c
            train_slots = (mine & ~is_val).nonzero().squeeze(1)[:m - k_val]
            val_slots = (mine & is_val).nonzero().squeeze(1)[:k_val]
            keep = torch.cat([train_slots, val_slots])
            xs.append(old.x[keep]), ys.append(old.y[keep]), ts.append(old.task[keep])
            n_val[c] = len(val_slots)
        x_tr, y_tr = task.x_train.to(dev), task.y_train.to(dev)
        x_va, y_va = task.x_val.to(dev), task.y_val.to(dev)
        for c in task.classes:  # construct: herded training exemplars, then validation exemplars
            x_c = x_tr[y_tr == c]
            chosen = x_c[herding(self.features(x_c), m - k_val)]
            v_c = x_va[y_va == c]
            v_c = v_c[torch.randperm(len(v_c), device=dev)[:k_val]]
            xs.append(torch.cat([chosen, v_c]))
            ys.append(torch.full((len(chosen) + len(v_c),), c, dtype=torch.long, device=dev))
            ts.append(torch.full((len(chosen) + len(v_c),), task.id, dtype=torch.long, device=dev))
            n_val[c] = len(v_c)
        self.buffer.set_contents(torch.cat(xs), torch.cat(ys), torch.cat(ts))
        self.n_val.copy_(n_val)

    def fit_bias(self, task_id: int) -> None:
        """Stage 2: fit task ``task_id``'s (alpha, beta) on the validation exemplars, the model frozen (Eq. 5)."""
        stored = self.buffer.all()
        val = self._val_mask(stored.y)
        if task_id == 0 or not bool(val.any()):
            return
        n_seen = self.seen_classes(task_id)
        with torch.no_grad():  # the model is frozen: its logits are computed once
            was_training = self.model.training
            self.model.eval()
            x = stored.x[val]
            logits = torch.cat([self.model(self.preprocess(x[i:i + self.feature_batch_size]))
                                for i in range(0, len(x), self.feature_batch_size)])
            self.model.train(was_training)
        y = stored.y[val]
        params = self.bias[task_id].clone().requires_grad_(True)
        opt = torch.optim.SGD([params], lr=self.bias_lr or self.ctx.optimizer.get("lr", 0.1), momentum=0.9)
        bs = max(int(self.bias_batch_size), 1)
        for _ in range(self.bias_epochs):
            order = torch.randperm(len(y), device=y.device)
            for i in range(0, len(y), bs):
                idx = order[i:i + bs]
                bias = torch.cat([self.bias[:task_id], params.unsqueeze(0), self.bias[task_id + 1:]])
                out = self.correct(logits[idx], bias)[:, :n_seen]
                loss = F.cross_entropy(out, y[idx]) + 0.1 * params[1] ** 2 / 2
                self.fit_step(loss, opt, where="BiC's bias-correction fit")  # with the engine's non-finite check
        with torch.no_grad():
            self.bias[task_id].copy_(params.detach())

    def end_task(self, task):
        self._update_memory(task)
        self.fit_bias(task.id)
        self.teacher.load_state_dict(self.model.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the old network always runs in inference mode
        return self
