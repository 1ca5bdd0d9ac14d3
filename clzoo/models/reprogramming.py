"""Per-task reprogramming of a shared, frozen network (the building blocks of CLR, Ge et al., ICCV 2023).

:func:`reprogram_` rewrites a backbone in place so that one set of shared weights serves many tasks, each with
its own small parameters:

* every convolution whose kernel is not 1x1 becomes a :class:`ReprogrammedConv`: the shared conv, then the
  active task's :class:`ChannelReprogram` layer (a depthwise 3x3 conv, one 3x3 kernel per channel, no bias,
  initialised to the Dirac identity), applied to the conv output before whatever follows (BatchNorm);
* every BatchNorm becomes a :class:`TaskBatchNorm`: one BatchNorm (affine parameters and running statistics) per
  task.

:class:`TaskHeads` is the matching classifier: one linear head per task over the task's own classes, whose
logits are placed at those classes in a vector over every class of the stream.

Task 0 is the *anchor*: its branch is the network as given (no reprogramming layer, its own BatchNorm and head).
A later task ``t`` is added with :func:`add_task`: Dirac reprogramming layers, BatchNorm copied from task 0's,
a new head. So a new branch computes exactly what the anchor computes until it is trained. Which branch runs is
chosen with :func:`set_task`. Per-task modules live in ``ModuleDict`` s keyed by the task id and tagged
``per_task`` for the memory ledger; the shared weights keep the category of the module they sit in (``backbone``).
"""
from __future__ import annotations

import copy
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory.ledger import tag_memory

ANCHOR = 0  # the task whose branch is the un-reprogrammed network


class ChannelReprogram(nn.Module):
    """The CLR layer: a depthwise 3x3 convolution (groups = channels, no bias), Dirac-initialised (identity)."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        weight = torch.zeros(channels, 1, kernel_size, kernel_size)
        weight[:, 0, kernel_size // 2, kernel_size // 2] = 1.0
        self.weight = nn.Parameter(weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, padding=self.kernel_size // 2, groups=self.channels)


class TaskModule(nn.Module):
    """A module with one branch per task; ``self.task`` picks the branch that runs."""

    task: int = ANCHOR

    def add_task(self, t: int) -> None:
        raise NotImplementedError

    def has_task(self, t: int) -> bool:
        raise NotImplementedError

    def task_parameters(self, t: int) -> Iterator[nn.Parameter]:
        raise NotImplementedError


class ReprogrammedConv(TaskModule):
    """A shared convolution followed by the active task's :class:`ChannelReprogram` (none for the anchor, unless
    ``anchor_layer``: a pretrained, frozen network reprograms task 0 too)."""

    def __init__(self, conv: nn.Conv2d, anchor_layer: bool = False):
        super().__init__()
        self.conv = conv
        self.anchor_layer = anchor_layer
        self.reprogram = tag_memory(nn.ModuleDict(), "per_task")

    def _layered(self, t: int) -> bool:
        return t != ANCHOR or self.anchor_layer

    def add_task(self, t: int) -> None:
        if self._layered(t) and str(t) not in self.reprogram:
            w = self.conv.weight
            self.reprogram[str(t)] = ChannelReprogram(self.conv.out_channels).to(w.device, w.dtype)

    def has_task(self, t: int) -> bool:
        return not self._layered(t) or str(t) in self.reprogram

    def task_parameters(self, t: int):
        if self._layered(t):
            yield from self.reprogram[str(t)].parameters()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return self.reprogram[str(self.task)](out) if self._layered(self.task) else out


class TaskBatchNorm(TaskModule):
    """One BatchNorm per task (affine parameters and running statistics); a new task's starts as task 0's."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.bns = tag_memory(nn.ModuleDict({str(ANCHOR): bn}), "per_task")

    def add_task(self, t: int) -> None:
        if str(t) not in self.bns:
            self.bns[str(t)] = copy.deepcopy(self.bns[str(ANCHOR)])

    def has_task(self, t: int) -> bool:
        return str(t) in self.bns

    def task_parameters(self, t: int):
        yield from self.bns[str(t)].parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.bns[str(self.task)](x)


class TaskHeads(TaskModule):
    """One linear head per task over its own classes; ``forward`` puts the active task's logits at its classes
    (every other class gets ``-inf``), :meth:`local` returns them over the task's classes only."""

    def __init__(self, in_features: int, task_classes: Sequence[Sequence[int]], n_classes: int):
        super().__init__()
        self.in_features, self.out_features = in_features, n_classes
        self.task_classes = [list(c) for c in task_classes]
        self.heads = tag_memory(nn.ModuleDict(), "per_task")
        self.add_task(ANCHOR)

    def add_task(self, t: int) -> None:
        if str(t) not in self.heads:
            device = next(iter(self.heads.values())).weight.device if len(self.heads) else None
            self.heads[str(t)] = nn.Linear(self.in_features, len(self.task_classes[t]), device=device)

    def has_task(self, t: int) -> bool:
        return str(t) in self.heads

    def task_parameters(self, t: int):
        yield from self.heads[str(t)].parameters()

    def local(self, features: Tensor, t: int) -> Tensor:
        return self.heads[str(t)](features)

    def place(self, out: Tensor, local: Tensor, t: int) -> Tensor:
        """Write task ``t``'s ``local`` logits into ``out`` (B, n_classes) at the task's classes."""
        out[:, torch.as_tensor(self.task_classes[t], device=out.device)] = local.to(out.dtype)
        return out

    def forward(self, features: Tensor) -> Tensor:
        out = features.new_full((features.shape[0], self.out_features), float("-inf"))
        return self.place(out, self.local(features, self.task), self.task)


def _eligible_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) != (1, 1)


def reprogram_(module: nn.Module, anchor_layers: bool = False) -> nn.Module:
    """Rewrite ``module`` in place: every non-1x1 ``Conv2d`` -> :class:`ReprogrammedConv`, every BatchNorm ->
    :class:`TaskBatchNorm` (the existing BatchNorm becomes task 0's). Returns ``module``. ``anchor_layers``:
    task 0 gets reprogramming layers too (a pretrained network that stays frozen from the first task on).

    Raises ``ValueError`` when there is no convolution to reprogram (e.g. an MLP).
    """
    if not any(_eligible_conv(m) for m in module.modules()):
        raise ValueError(f"{type(module).__name__} has no convolution with a kernel larger than 1x1 to reprogram")

    def rewrite(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, TaskModule):
                continue
            if _eligible_conv(child):
                setattr(parent, name, ReprogrammedConv(child, anchor_layers))
            elif isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, TaskBatchNorm(child))
            else:
                rewrite(child)

    rewrite(module)
    return module


def task_modules(module: nn.Module) -> list[TaskModule]:
    return [m for m in module.modules() if isinstance(m, TaskModule)]


def add_task(module: nn.Module, t: int) -> None:
    """Give every task-aware module under ``module`` a branch for task ``t`` (no-op where it exists)."""
    for m in task_modules(module):
        m.add_task(t)


def set_task(module: nn.Module, t: int) -> None:
    """Make task ``t``'s branch the one that runs in every task-aware module under ``module``."""
    for m in task_modules(module):
        m.task = t


def has_task(module: nn.Module, t: int) -> bool:
    return all(m.has_task(t) for m in task_modules(module))


def task_parameters(module: nn.Module, t: int) -> list[nn.Parameter]:
    """Task ``t``'s own parameters (reprogramming layers, BatchNorm affine, head) under ``module``."""
    return [p for m in task_modules(module) for p in m.task_parameters(t)]


def shared_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters that belong to no task's branch: the shared (frozen after the anchor task) weights."""
    per_task = {id(p) for m in task_modules(module) for sub in m.children() if isinstance(sub, nn.ModuleDict)
                for p in sub.parameters()}
    return [p for p in module.parameters() if id(p) not in per_task]


def tasks_in_state(module: nn.Module, state_dict: dict, prefix: str = "") -> list[int]:
    """Task ids that have a branch in ``state_dict`` (a state of ``module``, keys under ``prefix``), so the
    branches can be rebuilt before loading a checkpoint into a freshly built module."""
    dicts = [f"{prefix}{name}{'.' if name else ''}{child}." for name, m in module.named_modules() if isinstance(m, TaskModule)
             for child, sub in m.named_children() if isinstance(sub, nn.ModuleDict)]
    found = set()
    for key in state_dict:
        for d in dicts:
            if key.startswith(d):
                found.add(int(key[len(d):].split(".", 1)[0]))
    return sorted(found)


__all__ = ["ANCHOR", "ChannelReprogram", "ReprogrammedConv", "TaskBatchNorm", "TaskHeads", "TaskModule",
           "reprogram_", "task_modules", "add_task", "set_task", "has_task", "task_parameters",
           "shared_parameters", "tasks_in_state"]
