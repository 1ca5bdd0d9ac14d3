"""The method contract.

A method is an ``nn.Module`` that owns the model and every piece of state it keeps across tasks::

    @register_method("mine")
    class Mine(Method):
        def __init__(self, model, ctx, alpha: float = 0.5): ...
        def begin_task(self, task): ...                 # optional
        def observe(self, x, y, task_id) -> Tensor: ... # one training step on one incoming batch
        def end_task(self, task): ...                   # optional
        def forward(self, x, task_id=None): ...         # logits for evaluation

``observe`` receives the batch *as stored* (uint8 images on the run's device); ``self.augment(x)`` turns it
into network input. ``forward`` receives evaluation input (already normalised: ``self.preprocess(x)`` makes it
from stored inputs). Everything kept between tasks must be in ``state_dict()`` (parameters, buffers,
sub-modules): that is what the ledger counts, what the budget caps and what a checkpoint restores.

The ``task`` handed to ``begin_task`` / ``training_data`` / ``end_task`` is a
:class:`~clzoo.data.scenarios.TrainingTask`: the task's training data and, when the method sets
``validation_fraction``, a validation split carved from it (``task.x_val``, ``task.y_val``) that the engine does
not train on. Test data is never handed to a method. The full author-facing reference is ``docs/api.md``.

The engine checks every ``observe`` loss for NaN / infinity (on the device, read 50 steps at a time, reported with
the step where it happened). A training loop a method runs on its own (a refit on
the memory in ``end_task``, a warm-up in ``begin_task``) steps with ``self.fit_step(loss, opt, where=...)`` so it
gets the same check; the engine also checks the parameters after ``begin_task`` and ``end_task``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.optim.optimizer as _optim_module
from torch import Tensor, nn

from ..data.augment import BatchTransform
from ..memory.buffer import ReplayBuffer
from ..memory.ledger import MB, Budget, BudgetError, measure, tag_memory


@dataclass
class StreamInfo:
    """What a method may know about the stream before it starts."""

    n_tasks: int
    n_classes: int
    input_shape: tuple[int, ...]
    task_classes: list[list[int]]
    scenario: str = "class_il"
    online: bool = False
    #: task-free run: no begin_task / end_task, observe gets task_id=None (clzoo/engine/online.py)
    task_free: bool = False

    def classes_seen(self, task_id: int) -> int:
        return max(c for cls in self.task_classes[: task_id + 1] for c in cls) + 1

    @classmethod
    def from_stream(cls, stream, task_free: bool = False) -> "StreamInfo":
        return cls(stream.n_tasks, stream.n_classes, tuple(stream.input_shape), [t.classes for t in stream.tasks],
                   stream.scenario, stream.online, task_free)


@dataclass
class RunContext:
    """What the engine hands every method: the stream's shape, device, transforms, budget, optimizer settings."""

    stream: StreamInfo
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    train_transform: BatchTransform = field(default_factory=BatchTransform)
    eval_transform: BatchTransform = field(default_factory=BatchTransform)
    budget: Budget = field(default_factory=Budget)
    optimizer: dict = field(default_factory=lambda: {"name": "sgd", "lr": 0.1})
    batch_size: int = 10
    epochs: int = 1
    #: ``trainer.first_task_epochs``: epochs of the first task when it differs from the others (a longer base task,
    #: as non-exemplar protocols train it), else None
    first_task_epochs: int | None = None
    #: ``trainer.first_task_optimizer``: optimizer settings that differ on the first task (merged over ``optimizer``
    #: by :meth:`enter_task`; PyCIL-style protocols give the base task its own weight decay and milestones), else None
    first_task_optimizer: dict | None = None
    #: ``trainer.amp=fp16`` on CUDA: the loss scaler every step of :meth:`Method.step` / ``fit_step`` goes through
    grad_scaler: "torch.amp.GradScaler | None" = None

    def __post_init__(self):
        self._optimizer_after_first = dict(self.optimizer)

    def enter_task(self, task_id: int) -> None:
        """Make :attr:`optimizer` the settings of task ``task_id``: ``first_task_optimizer`` merged in on task 0,
        the run's own settings after it (nothing changes when no first-task settings are given)."""
        if self.first_task_optimizer:
            first = self.first_task_optimizer if task_id == 0 else {}
            self.optimizer = {**self._optimizer_after_first, **first}

    def epochs_of(self, task_id: int) -> int:
        """Epochs the engine trains task ``task_id`` for (1 on an online stream)."""
        if self.stream.online:
            return 1
        return self.first_task_epochs if task_id == 0 and self.first_task_epochs else self.epochs


def default_foreach(params: list) -> bool | None:
    """The multi-tensor (``foreach``) choice torch's optimizers make by default, decided once for the optimizer's
    parameters instead of again in every ``step()`` (a few microseconds a step on a small model): True when every
    parameter is on a device with foreach kernels (CUDA), else False (CPU). The same implementation runs either
    way; None (torch decides per step) if this torch lacks the helper."""
    decide = getattr(_optim_module, "_default_to_fused_or_foreach", None)
    if decide is None or not params:
        return None
    return bool(decide(params, differentiable=False, use_fused=False)[1])


def build_optimizer(params, name: str = "sgd", lr: float = 0.1, momentum: float = 0.0,
                    weight_decay: float = 0.0, nesterov: bool = False, betas=None, **_ignored) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    foreach = default_foreach(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                               foreach=foreach)
    betas = tuple(betas) if betas is not None else (0.9, 0.999)  # trainer.optimizer.betas (adam, adamw)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas, foreach=foreach)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, foreach=foreach)
    raise ValueError(f"unknown optimizer '{name}'; choose sgd, adam or adamw (trainer.optimizer.name)")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class Method(nn.Module):
    """Base class of every continual-learning method (see the module docstring for the contract)."""

    #: set by @register_method
    method_name: str = ""
    #: True when ``forward`` needs the task id at test time (a task oracle, e.g. per-task parameters)
    needs_task_id: bool = False
    #: fraction of every class of a task's training data the engine holds out as ``task.x_val`` / ``task.y_val``
    #: (seeded, stratified) and does not train on; a class attribute or an instance value set in ``__init__``
    validation_fraction: float = 0.0
    #: names (attribute paths from the method, e.g. ``"scratch"``) of tensors deliberately kept outside
    #: ``state_dict``: scratch rebuilt at every task start, or constants derived from ``ctx``. Nothing else may live
    #: outside it; the conformance kit checks that these are equal after a resume (so they carry nothing across tasks)
    transient_state: tuple[str, ...] = ()
    #: True when the method trains without being told task boundaries (``stream.task_free=true``): it then gets
    #: no begin_task / end_task calls and ``observe(x, y, task_id=None)``
    supports_task_free: bool = False
    #: True when the method trains with ONE optimizer for the whole run (built at the first task, not rebuilt at
    #: later task starts, its state saved in every checkpoint), as online codes such as OnPro's do; a class
    #: attribute or an instance value set in ``__init__``. Milestones then count epochs from the start of the run.
    keeps_optimizer: bool = False

    def __init__(self, model: nn.Module, ctx: RunContext):
        super().__init__()
        self.model = model
        self.ctx = ctx
        self.opt: torch.optim.Optimizer | None = None
        self.current_task = -1

    # ------------------------------------------------------------------ the contract
    def begin_task(self, task) -> None:
        """Called before training on ``task``; the optimizer has just been rebuilt."""

    def observe(self, x: Tensor, y: Tensor, task_id: int) -> Tensor:
        """One training step on the incoming batch ``x`` (as stored), ``y``; returns the loss."""
        raise NotImplementedError

    def end_task(self, task) -> None:
        """Called after the last training step on ``task``."""

    def forward(self, x: Tensor, task_id: int | None = None) -> Tensor:
        """Logits over all classes of the stream for evaluation input ``x``."""
        return self.model(x)

    # ------------------------------------------------------------------ engine hooks with defaults
    def training_data(self, task) -> tuple[Tensor, Tensor]:
        """The (inputs, labels) the engine feeds to :meth:`observe` while training ``task``."""
        return task.x_train, task.y_train

    def trainable_parameters(self):
        """The parameters ``self.opt`` steps (rebuilt at every task start): the model's. Override it to train a
        parameter held on the method itself (e.g. ``[*self.model.parameters(), self.scale]``)."""
        return self.model.parameters()

    def reset_optimizer(self) -> None:
        """A fresh optimizer over :meth:`trainable_parameters` (and its learning-rate schedule, when
        ``trainer.optimizer.milestones`` is set: multiplied by ``gamma`` at those epochs of every task)."""
        self.opt = build_optimizer(self.trainable_parameters(), **self.ctx.optimizer)
        self.schedule_milestones(self.opt)

    def schedule_milestones(self, optimizer: torch.optim.Optimizer) -> None:
        """``trainer.optimizer.milestones`` on ``optimizer`` (its learning rates times ``gamma`` at those epochs of the
        task; stepped by :meth:`end_epoch`). A method that builds its own optimizer in ``reset_optimizer`` calls it,
        so the run's schedule is not silently dropped."""
        milestones = self.ctx.optimizer.get("milestones") or []
        self.milestone_schedule = (torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(m) for m in milestones],
                                                                        float(self.ctx.optimizer.get("gamma", 0.1)))
                                   if milestones else None)

    def end_epoch(self) -> None:
        """Called by the engine after every epoch of a task: advances the milestone schedule and every schedule the
        method added to ``self.epoch_schedules`` for this task (``torch.optim.lr_scheduler`` objects)."""
        schedules = [getattr(self, "milestone_schedule", None), *getattr(self, "epoch_schedules", ())]
        for schedule in schedules:
            if schedule is not None:
                schedule.step()

    def start_task(self, task) -> None:
        """Engine entry point: remember the task, apply its optimizer settings, rebuild the optimizer (unless the
        method :attr:`keeps_optimizer` and has one), call :meth:`begin_task`."""
        self.current_task = task.id
        self.ctx.enter_task(task.id)  # the task's optimizer settings (trainer.first_task_optimizer on task 0)
        self.epoch_schedules = []  # a method's own per-epoch schedules of this task (see end_epoch)
        if self.opt is None or not self.keeps_optimizer:
            self.reset_optimizer()
        self.begin_task(task)

    # ------------------------------------------------------------------ helpers for method authors
    @property
    def device(self) -> torch.device:
        return self.ctx.device

    def augment(self, x: Tensor) -> Tensor:
        """Stored inputs -> training network input (normalised, randomly augmented if the stream says so)."""
        return self.ctx.train_transform(x)

    def preprocess(self, x: Tensor) -> Tensor:
        """Stored inputs -> evaluation network input (normalised, no augmentation)."""
        return self.ctx.eval_transform(x)

    def seen_classes(self, task_id: int | None = None) -> int:
        """Number of classes seen up to (and including) ``task_id`` (default: the current task)."""
        t = self.current_task if task_id is None else task_id
        return self.ctx.stream.classes_seen(max(t, 0))

    def step(self, loss: Tensor) -> Tensor:
        """zero_grad -> backward -> optimizer step; returns the detached loss."""
        clear_grads(self.opt)
        backward_and_step(loss, self.opt, getattr(self.ctx, "grad_scaler", None))
        return loss.detach()

    def fit_step(self, loss: Tensor, opt: torch.optim.Optimizer | None = None, where: str = "end_task") -> Tensor:
        """One step of a training loop the method runs on its own (a refit on the memory, a head warm-up, any
        fitting in ``begin_task`` / ``end_task``): the engine's non-finite check on ``loss``, then zero_grad ->
        backward -> step of ``opt`` (default ``self.opt``). A diverging loop stops with the same clear
        :class:`NonFiniteLossError` as ``observe`` instead of leaving NaN weights behind. ``where`` names the
        loop in that error (e.g. ``"GDumb's refit on the memory"``)."""
        check_finite(loss, self.current_task, where=where)
        opt = opt if opt is not None else self.opt
        clear_grads(opt)
        backward_and_step(loss, opt, getattr(self.ctx, "grad_scaler", None))
        return loss.detach()

    def frozen_copy(self, module: nn.Module | None = None, category: str = "teachers") -> nn.Module:
        """A frozen deep copy (e.g. the old model of LwF / iCaRL); tagged so the ledger counts it."""
        teacher = copy.deepcopy(module if module is not None else self.model)
        for p in teacher.parameters():
            p.requires_grad_(False)
        for sub in teacher.modules():  # the copy's own tags (backbone, heads) would hide it from the budget
            sub.__dict__.pop("memory_category", None)
            sub.__dict__.pop("memory_categories", None)
        return tag_memory(teacher.eval(), category)

    def make_buffer(self, buffer: dict | int | str | None, store_logits: bool = False,
                    selection: str | None = None, reserved_bytes: int = 0,
                    extra_bytes_per_sample: int = 0) -> ReplayBuffer:
        """Build the method's :class:`ReplayBuffer` from ``buffer`` = {capacity, selection} or a capacity.

        ``capacity: auto`` takes what the budget leaves after everything the method already holds (and
        ``reserved_bytes`` it will add later, and ``extra_bytes_per_sample`` it keeps beside each stored sample,
        e.g. GSS's score), so methods are compared at equal memory. Call it last in ``__init__``.
        """
        cfg = dict(buffer) if isinstance(buffer, dict) else {"capacity": buffer}
        capacity = cfg.get("capacity", "auto")
        selection = cfg.get("selection") or selection or "reservoir"
        info = self.ctx.stream
        if capacity in (None, "auto"):
            budget = self.ctx.budget
            if budget.bytes is None:
                raise BudgetError(f"{type(self).__name__}: buffer capacity 'auto' needs a budget; set budget.mb=... "
                                  f"or a fixed method.buffer.capacity=N")
            per_sample = budget.sample_cost(ReplayBuffer.bytes_per_sample(info.input_shape, info.n_classes, store_logits)
                                            + int(extra_bytes_per_sample), math.prod(info.input_shape))  # uint8 pixels
            held = (budget.measure(self).budgeted_bytes + int(reserved_bytes)
                    + (ReplayBuffer.FIXED_BYTES if budget.convention == "full" else 0))
            capacity = (budget.bytes - held) // per_sample
            if capacity < 1:
                needed = held + per_sample
                min_mb = math.ceil(needed / MB * 1e4) / 1e4  # rounded up: the suggested budget must suffice
                raise BudgetError(
                    f"budget.mb={budget.mb} ({budget.bytes:,} bytes) is too small for {self.method_name or type(self).__name__}: "
                    f"it already keeps {held:,} counted bytes ({held / MB:.3f} MB, count_model={budget.count_model}) "
                    f"and one exemplar costs {per_sample:,} bytes, so it needs at least {needed:,} bytes; raise "
                    f"budget.mb to at least {min_mb:g}"
                    + (" or set budget.count_model=false" if budget.count_model else ""))
        buffer = ReplayBuffer(int(capacity), info.input_shape, info.n_classes, store_logits,
                              selection=selection).to(self.device)
        buffer.extra_bytes_per_sample = int(extra_bytes_per_sample)  # what the owner keeps beside each sample
        return buffer


def clear_grads(opt: torch.optim.Optimizer) -> None:
    """``opt.zero_grad(set_to_none=True)`` without its per-call profiler record and checks (about 15
    microseconds a step on CPU; bench/overhead.py): the gradients are simply dropped, which is all that call does
    here. An optimizer class with its own ``zero_grad`` keeps it."""
    if type(opt).zero_grad is not torch.optim.Optimizer.zero_grad:
        opt.zero_grad(set_to_none=True)
        return
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = None


def optimizer_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()`` without the profiler record and hook dispatch torch wraps around every optimizer's ``step``
    (about 10 microseconds a step on CPU, a third of SGD's step on a small MLP; bench/overhead.py) when nothing
    uses them: no step hooks (the optimizer's or global ones), no profiler running, no wrapper on this instance
    (an LR scheduler's step counter). The same update runs; otherwise, or with another torch, ``opt.step()``."""
    step = type(opt).step
    unwrapped = getattr(step, "__wrapped__", None)
    if (unwrapped is None or not getattr(step, "hooked", False) or "step" in opt.__dict__
            or getattr(opt, "_optimizer_step_pre_hooks", True) or getattr(opt, "_optimizer_step_post_hooks", True)
            or getattr(_optim_module, "_global_optimizer_pre_hooks", True)
            or getattr(_optim_module, "_global_optimizer_post_hooks", True)
            or getattr(torch.autograd, "_profiler_enabled", lambda: True)()):
        opt.step()
    else:
        unwrapped(opt)


def backward_and_step(loss: Tensor, opt: torch.optim.Optimizer, scaler=None) -> None:
    """``loss.backward(); opt.step()``, through ``scaler`` (a :class:`torch.amp.GradScaler`, fp16 training) when
    given: the loss is scaled, the step unscales the gradients and is skipped when they overflowed."""
    if scaler is None:
        loss.backward()
        optimizer_step(opt)
        return
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def check_finite(loss: Tensor | float, task_id: int, step: int | None = None, where: str | None = None) -> float:
    """``float(loss)``, or :class:`NonFiniteLossError` when it is NaN or infinite. The engine calls it on every
    ``observe`` loss; :meth:`Method.fit_step` on every step of a loop a method runs itself (``where`` names it)."""
    value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
    if value != value or value in (float("inf"), float("-inf")):
        at = f"task {task_id}" + (f", step {step}" if step is not None else "") + (f", {where}" if where else "")
        raise NonFiniteLossError(
            f"loss became {value} at {at}; lower trainer.optimizer.lr or check the method's "
            f"hyper-parameters (completed tasks are saved in checkpoints/)")
    return value


def check_losses_finite(losses: list, task_id: int, first_step: int) -> None:
    """The engine's check of the losses of steps ``first_step, first_step + 1, ...`` (detached tensors kept on the
    device): one host read for all of them; :class:`NonFiniteLossError` naming the first bad step. Empties
    ``losses``."""
    if not losses:
        return
    try:  # the usual case, scalars of one shape: stacked as they are (no two conversions per loss)
        values = torch.stack(losses).reshape(len(losses))
    except RuntimeError:  # one-element losses of different shapes (0-d and (1,) mixed)
        values = torch.stack([v.reshape(()).float() for v in losses])
    if not bool(torch.isfinite(values).all()):
        for i, value in enumerate(values.tolist()):
            check_finite(value, task_id, first_step + i)
    losses.clear()


def check_parameters_finite(method: nn.Module, task_id: int, when: str) -> None:
    """:class:`NonFiniteLossError` when a parameter of ``method`` holds NaN or infinity: the engine's net after
    ``begin_task`` and ``end_task``, for loops that do not go through :meth:`Method.fit_step`."""
    floating = [(name, p) for name, p in method.named_parameters() if p.is_floating_point()]
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for _, p in floating:
        by_device.setdefault(p.device, []).append(p)
    # One host read per device (not one per parameter tensor: 124 synchronising reads a task on a GPU ResNet-18);
    # the name of the offending parameter is looked up only when a check fails.
    if all(bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) for params in by_device.values()):
        return
    for name, p in floating:
        if not bool(torch.isfinite(p).all()):
            raise NonFiniteLossError(
                f"parameter {name} became NaN or infinite at task {task_id}, {when}; lower trainer.optimizer.lr or "
                f"check the method's hyper-parameters (completed tasks are saved in checkpoints/)")

