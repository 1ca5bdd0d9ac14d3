"""CLR: Channel-wise Lightweight Reprogramming.

Ge, Luo, Li, Mi, Itti, "CLR: Channel-wise Lightweight Reprogramming for Continual Learning", ICCV 2023
(official code: gyhandy/Channel-wise-Lightweight-Reprogramming).

A task-agnostic backbone is kept frozen; each task gets a small set of its own parameters:

* after every convolution whose kernel is not 1x1, a *CLR layer*: a depthwise 3x3 convolution (one kernel per
  channel, no bias) on the conv output, before BatchNorm, initialised to the Dirac identity;
* its own BatchNorm layers (affine parameters and running statistics, trained in train mode);
* its own linear head over its classes.

Training task ``t`` minimises ``CE + reg_lambda * sum_w ||w||_2`` over the task's own parameters ``w`` (the
non-squared L2 norm of each tensor, lambda = 1e-5 as in the official code). Inference is task-incremental with
the given task id (``needs_task_id``): task ``t``'s branch, argmax over its classes. Old tasks' parameters are
never in the optimizer, so there is no forgetting by construction. Called without a task id (class-IL), every
trained task's branch runs and each puts its logits on its own classes, so class-IL accuracy is still defined
(the paper does not use it).

**The anchor backbone.** The paper reprograms an ImageNet-pretrained ResNet-18. With ``model.checkpoint=FILE``
(e.g. a ``backbone.pt`` from ``clzoo-pretrain model=resnet18``) CLR does the same: the loaded network is frozen
from task 0 on and every task, task 0 included, gets its CLR layers, BatchNorm and head. Without a checkpoint
(no pretrained weights offline) the anchor is trained on the *first task* as an ordinary network (all convs, task 0's
BatchNorm and head, plain cross-entropy plus the same penalty on task 0's BatchNorm and head) and frozen from task
1 on. Task 0 has no CLR layers: a depthwise layer after a conv trained with it adds nothing the conv cannot
learn, and an untouched identity layer would be memory kept for nothing. A later task's branch starts as the
anchor (Dirac CLR layers, BatchNorm copied from task 0's), as the paper's branches start as the pretrained net.

Memory (ledger): the frozen shared weights are ``backbone``; CLR layers, task BatchNorm and task heads are
``per_task``. Branches are created when their task starts, so the ledger grows by one branch per task.
On torchvision's ResNet-18 a branch adds 35,136 CLR + 9,600 BatchNorm affine parameters (0.40% of its
11,176,512 backbone parameters; 0.49% with the BatchNorm running statistics), plus the head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Method
from ..registry import register_method
from ...models.reprogramming import (ANCHOR, TaskHeads, add_task, has_task, reprogram_, set_task, shared_parameters,
                                     task_parameters, tasks_in_state)


@register_method("clr")
class CLR(Method):
    needs_task_id = True
    transient_state = ("local_label",)  # derived from ctx.stream.task_classes

    def __init__(self, model, ctx, reg_lambda: float = 1e-5):
        super().__init__(model, ctx)
        self.reg_lambda = reg_lambda
        # a loaded (pretrained) backbone is frozen from the start and reprogrammed for every task, as the paper
        self.pretrained = getattr(model.backbone, "checkpoint", None) is not None
        try:
            reprogram_(model.backbone, anchor_layers=self.pretrained)
        except ValueError as err:
            raise ValueError(f"clr needs a convolutional backbone, e.g. model=resnet18 ({err})") from None
        info = ctx.stream
        model.head = TaskHeads(model.backbone.out_features, info.task_classes, info.n_classes)
        # label -> position among its task's classes (derived from the stream, so not state)
        local = torch.zeros(info.n_classes, dtype=torch.long)
        for classes in info.task_classes:
            local[torch.tensor(classes)] = torch.arange(len(classes))
        self.register_buffer("local_label", local, persistent=False)

    # ------------------------------------------------------------------ task boundaries
    def start_task(self, task):
        # the task's branch must exist before the engine builds the optimizer over trainable_parameters()
        add_task(self.model, task.id)
        for p in shared_parameters(self.model):
            p.requires_grad_(task.id == ANCHOR and not self.pretrained)  # trained on task 0, frozen afterwards
        super().start_task(task)

    def trainable_parameters(self):
        t = max(self.current_task, 0)
        own = task_parameters(self.model, t)
        return shared_parameters(self.model) + own if t == ANCHOR and not self.pretrained else own

    # ------------------------------------------------------------------ training
    def observe(self, x, y, task_id):
        set_task(self.model, task_id)
        features = self.model.backbone(self.augment(x))
        logits = self.model.head.local(features, task_id)
        penalty = sum(p.norm(2) for p in task_parameters(self.model, task_id))
        loss = F.cross_entropy(logits, self.local_label[y]) + self.reg_lambda * penalty
        return self.step(loss)

    # ------------------------------------------------------------------ inference
    def trained_tasks(self) -> list[int]:
        return [t for t in range(self.ctx.stream.n_tasks) if has_task(self.model, t)]

    def forward(self, x, task_id=None):
        n_classes = self.ctx.stream.n_classes
        tasks = self.trained_tasks() if task_id is None else [task_id]
        tasks = [t for t in tasks if has_task(self.model, t)]
        if not tasks:  # no branch for this task yet: no opinion
            return x.new_zeros(x.shape[0], n_classes)
        out = x.new_full((x.shape[0], n_classes), float("-inf"))
        for t in tasks:
            set_task(self.model, t)
            self.model.head.place(out, self.model.head.local(self.model.backbone(x), t), t)
        return out

    # ------------------------------------------------------------------ resume
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        for t in tasks_in_state(self, state_dict):
            add_task(self.model, t)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
