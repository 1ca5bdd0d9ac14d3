"""The conformance kit: does a method keep the clzoo contract?

    from clzoo.testing import check_method
    report = check_method("der", buffer={"capacity": 40})   # a registered name, or the class itself

It builds the method from its own config (``conf/method/NAME.yaml``, found the way ``clzoo-run method=NAME``
finds it; signature defaults only for a class without a config), overrides it with the keyword arguments given,
trains it on a tiny real stream (bundled digits) and checks that

1. it trains and evaluates: accuracies are fractions, and each task is learnt above chance (task-IL);
2. its ledger equals the bytes of every tensor in its ``state_dict`` (nothing kept off the books), only the
   model's tensors are filed under the model categories (``backbone`` / ``heads``, which ``budget.mb`` does not
   count by default), and after every task no tensor reachable from the method (attributes, lists, dicts, sets,
   plain objects, non-persistent buffers, recursively through sub-modules) lies outside its ``state_dict``,
   except the tensors it declares in ``transient_state``;
3. it keeps nothing outside its ``state_dict``: a run stopped after task 2 and resumed from its checkpoint in a
   fresh method gives bit-identical results, state and ``transient_state`` tensors to an uninterrupted run;
4. when it holds a :class:`~clzoo.memory.ReplayBuffer`, that buffer is sized by the budget: built from its
   config under ``budget.mb`` (where ``${clzoo.buffer_capacity:...}`` gives ``auto``) it fills the budget to
   within one exemplar without exceeding it, after every task.

The runs' own logs are not printed (they are kept in :attr:`ConformanceReport.logs`); ``verbose=True`` prints a
one-line summary. Every failed check raises :class:`ConformanceError` naming the check.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .memory.buffer import ReplayBuffer
from .memory.ledger import MODEL_CATEGORIES, _declared_categories, measure, misfiled

TINY_STREAM = {"name": "tiny_digits", "dataset": "digits", "scenario": "class_il", "n_tasks": 5,
               "train_per_task": 120, "test_per_task": 40}
#: the budget of the auto-buffer check (MB)
AUTO_BUDGET_MB = 0.05


class ConformanceError(AssertionError):
    """A method breaks the contract; the message names the check. ``logs`` holds the runs' output."""

    logs: dict[str, str] = {}


@dataclass
class ConformanceReport:
    method: str
    results: dict
    checks: list[str] = field(default_factory=list)
    auto_capacity: int | None = None
    #: where the method's configuration came from: ``conf/method/NAME.yaml`` or ``signature defaults``
    config_source: str = ""
    #: tensors the method declared in ``transient_state`` (path -> bytes), verified equal after a resume
    transient_bytes: dict[str, int] = field(default_factory=dict)
    #: what each run printed (full, partial, resumed, auto)
    logs: dict[str, str] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        r = self.results
        mem = r["memory"]["total_bytes"]
        auto = f", auto buffer {self.auto_capacity} exemplars" if self.auto_capacity is not None else ""
        return (f"check_method({self.method}): {len(self.checks)} checks passed ({'; '.join(self.checks)}); "
                f"final class-IL acc {r['metrics']['final_acc']:.3f}, keeps {mem:,} bytes{auto} "
                f"[config: {self.config_source}]")


def _method_class(method):
    from .methods.registry import get_method_class

    return get_method_class(method) if isinstance(method, str) else method


def _target(method) -> tuple[str, str]:
    cls = _method_class(method)
    return f"{cls.__module__}.{cls.__qualname__}", (cls.method_name or cls.__name__)


def _merge(base, override):
    """``override`` merged into ``base``: dicts key by key (recursively), anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merge(base.get(key), value) if key in base else value
        return out
    return copy.deepcopy(override)


def _auto_paths(cfg, prefix=()) -> list[tuple]:
    """Paths of every value ``auto`` in a nested config dict."""
    if isinstance(cfg, dict):
        return [p for k, v in cfg.items() for p in _auto_paths(v, (*prefix, k))]
    return [prefix] if cfg == "auto" else []


def _set_path(cfg: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        if not isinstance(cfg.get(key), dict):
            cfg[key] = {}
        cfg = cfg[key]
    cfg[path[-1]] = value


def _compose(method, budget_mb) -> tuple[dict, str]:
    """The run config ``clzoo-run method=NAME [budget.mb=...]`` would use, and where the method's part came from.

    A method without a config of its own (or whose config names another class) gets its class with signature
    defaults."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config import compose

    target, name = _target(method)
    base = ["log.progress=false", "log.tensorboard=false", "log.plots=false"]
    if budget_mb is not None:
        base.append(f"budget.mb={budget_mb}")
    try:
        cfg = compose([*base, f"method={name}"])
        if cfg["method"].get("_target_") == target:
            return cfg, f"conf/method/{name}.yaml"
    except (HydraException, OmegaConfBaseException):
        pass
    cfg = compose(base)
    cfg["method"] = {"_target_": target}
    if "_choices" in cfg:
        cfg["_choices"]["method"] = name
    return cfg, "signature defaults"


def tiny_config(method, stream: dict | None = None, budget: dict | None = None, epochs: int = 3,
                lr: float = 0.05, model: dict | None = None, optimizer: dict | None = None, **hparams) -> dict:
    """A complete run configuration for ``method`` on the tiny digits stream (or ``stream``): the method's own
    config (its yaml, resolved under ``budget``) with ``hparams`` merged in; ``optimizer`` overrides keys of the
    default SGD (e.g. ``{"name": "adam", "lr": 1e-3}``)."""
    cfg, _ = _tiny_config(method, stream, budget, epochs, lr, model, hparams, optimizer)
    return cfg


def _tiny_config(method, stream, budget, epochs, lr, model, hparams, optimizer=None) -> tuple[dict, str]:
    budget = {"mb": None, "count_model": False, "enforce": True, **(budget or {})}
    cfg, source = _compose(method, budget["mb"])
    cfg["method"] = _merge(cfg["method"], hparams)
    cfg["stream"] = {**cfg["stream"], **TINY_STREAM, **(stream or {})}
    cfg["trainer"].update({"epochs": epochs, "batch_size": 10, "num_threads": None})
    cfg["trainer"]["optimizer"] = {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False,
                                   **(optimizer or {})}
    if model is not None:
        cfg["model"] = model
    cfg["budget"] = budget
    return cfg, source


# ---------------------------------------------------------------------------------------------- hidden state
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
_SCALARS = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size)


def _resolve(method: nn.Module, path: str):
    obj = method
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def reachable_tensors(method: nn.Module) -> dict[str, Tensor]:
    """Every tensor reachable from ``method`` (registered or not), by the first path that reaches it.

    Walked: parameters, buffers (persistent or not) and sub-modules, and every other attribute of every module,
    through lists, tuples, sets, dicts, plain objects and unregistered modules (numpy arrays count as tensors).
    Not walked: the engine's ``ctx`` (shared by every run, not the method's state) and ``self.opt`` (rebuilt at
    every task start); other optimizers are walked (their state would carry over).
    """
    from .methods.base import RunContext

    found: dict[str, Tensor] = {}
    visited: set[int] = set()
    engine_opt = getattr(method, "opt", None)

    def visit(obj, path: str, depth: int) -> None:
        if isinstance(obj, _SCALARS) or depth > 12 or id(obj) in visited:
            return
        visited.add(id(obj))
        if isinstance(obj, Tensor):
            if not obj.is_meta:  # meta tensors are shapes without storage (a structure-only skeleton)
                found.setdefault(path, obj)
        elif isinstance(obj, np.ndarray):  # numpy memory is kept off the books just the same
            if obj.dtype != object and obj.size:
                found.setdefault(path, torch.from_numpy(np.ascontiguousarray(obj)))
        elif isinstance(obj, RunContext) or obj is engine_opt:
            return
        elif isinstance(obj, torch.optim.Optimizer):
            visit(dict(enumerate(obj.state.values())), f"{path}.state", depth + 1)
        elif isinstance(obj, nn.Module):
            for name, t in obj._parameters.items():
                visit(t, f"{path}.{name}", depth + 1)
            for name, t in obj._buffers.items():
                visit(t, f"{path}.{name}", depth + 1)
            for name, m in obj._modules.items():
                visit(m, f"{path}.{name}", depth + 1)
            for name, value in vars(obj).items():
                if name not in _MODULE_INTERNALS:
                    visit(value, f"{path}.{name}", depth + 1)
        elif isinstance(obj, dict):
            for key, value in obj.items():
                visit(value, f"{path}[{key!r}]", depth + 1)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for i, value in enumerate(obj):
                visit(value, f"{path}[{i}]", depth + 1)
        elif inspect.isroutine(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
            return
        elif hasattr(obj, "__dict__"):
            for name, value in vars(obj).items():
                visit(value, f"{path}.{name}", depth + 1)

    visit(method, "", 0)
    return {path.lstrip("."): t for path, t in found.items()}


def hidden_state(method: nn.Module) -> dict[str, Tensor]:
    """Tensors reachable from ``method`` whose memory is not part of its ``state_dict`` (path -> tensor), less the
    ones it declares in ``transient_state``."""
    kept = {t.untyped_storage().data_ptr() for t in method.state_dict(keep_vars=True).values()
            if isinstance(t, Tensor) and t.numel()}
    declared = set(getattr(method, "transient_state", ()) or ())
    return {path: t for path, t in reachable_tensors(method).items()
            if t.numel() and t.untyped_storage().data_ptr() not in kept and path not in declared}


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _describe(hidden: dict[str, Tensor], limit: int = 4) -> str:
    items = sorted(hidden.items(), key=lambda kv: -_nbytes(kv[1]))
    text = ", ".join(f"'{p}' ({tuple(t.shape)} {str(t.dtype).replace('torch.', '')}, {_nbytes(t):,} bytes)"
                     for p, t in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


class _Inspector:
    """The kit's observer: inspects the method when it is built and after every task (at its checkpoint)."""

    def __init__(self, name: str):
        self.name = name
        self.model_keys: dict[str, tuple] | None = None
        self.buffers: list[ReplayBuffer] = []
        self.transient: dict[str, Tensor] = {}

    def _model_tensors(self, method) -> dict[str, tuple]:
        state = method.state_dict(keep_vars=True)
        return {k: tuple(state[k].shape) for k, cat in _declared_categories(method).items()
                if cat in MODEL_CATEGORIES and k in state and isinstance(state[k], Tensor)}

    def __call__(self, method, task_id) -> None:
        when = "when built" if task_id is None else f"after task {task_id}"
        wrong = misfiled(method)
        if wrong:
            raise ConformanceError(
                f"[ledger] {self.name}: {', '.join(repr(k) for k in wrong[:4])} {'is' if len(wrong) == 1 else 'are'} "
                f"tagged as model memory ({'/'.join(MODEL_CATEGORIES)}) but not part of the model ({when}): only "
                f"self.model's own tensors are filed there (budget.mb does not count them by default); tag it with "
                f"what it is (exemplars, exemplar_extras, prototypes, per_task, ...)")
        model_now = self._model_tensors(method)
        if self.model_keys is None:
            self.model_keys = model_now
        elif model_now != self.model_keys:
            grown = sorted(set(model_now.items()) ^ set(self.model_keys.items()))
            raise ConformanceError(
                f"[ledger] {self.name}: the model's backbone/heads tensors changed {when} ({grown[:4]}): state added "
                f"to the model must be tagged with its own category (e.g. tag_memory(module, 'per_task')), so "
                f"budget.mb counts it")
        hidden = hidden_state(method)
        if hidden:
            raise ConformanceError(
                f"[hidden state] {self.name}: keeps tensors outside its state_dict {when}: {_describe(hidden)}; "
                f"the ledger does not count them, budget.mb does not cap them and a checkpoint loses them. Register "
                f"them (self.register_buffer(name, tensor), nn.Parameter, a sub-module), or, for scratch that is "
                f"rebuilt at every task start or derived from ctx, list their names in transient_state")
        self.buffers = [m for m in method.modules() if isinstance(m, ReplayBuffer)] or self.buffers
        reachable = reachable_tensors(method)
        for path in getattr(method, "transient_state", ()) or ():
            if path not in reachable:
                raise ConformanceError(f"[hidden state] {self.name}: transient_state names '{path}', which is not a "
                                       f"tensor reachable from the method")
            self.transient[path] = reachable[path].detach().clone()


@contextlib.contextmanager
def _quiet(logs: dict, key: str):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        logs[key] = out.getvalue()


def _per_sample_bytes(buffers: list[ReplayBuffer]) -> int:
    per = []
    for b in buffers:
        logits = b.logits.shape[1] * b.logits.element_size() if b.logits is not None else 0
        per.append(math.prod(b.x.shape[1:]) * b.x.element_size() + b.y.element_size() + b.task.element_size()
                   + logits + getattr(b, "extra_bytes_per_sample", 0))
    return max(per)


def check_method(method, workdir: str | Path | None = None, stream: dict | None = None,
                 check_auto_budget: bool | None = None, min_task_il_acc: float = 0.6, model: dict | None = None,
                 verbose: bool = True, optimizer: dict | None = None, **hparams) -> ConformanceReport:
    """Run the conformance checks on ``method`` (a registered name or a Method subclass), built from its config
    with ``hparams`` merged in (e.g. ``buffer={"capacity": 40}`` for a small buffer on the tiny stream).

    ``check_auto_budget``: None runs the auto-buffer check when the built method holds a ReplayBuffer.
    ``verbose`` prints a one-line summary (the runs' own logs are in ``report.logs``); ``optimizer`` overrides keys
    of the kit's SGD (e.g. ``{"name": "adam", "lr": 1e-3}``).
    """
    from .engine.runner import run

    _, name = _target(method)
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    root = Path(workdir or tmp.name)
    logs: dict[str, str] = {}
    try:
        cfg, source = _tiny_config(method, stream, None, 3, 0.05, model, hparams, optimizer)

        # 1. trains and evaluates; 2. (while it runs) no hidden state, model categories only on the model
        watch = _Inspector(name)
        with _quiet(logs, "full"):
            full = run(cfg, root / "full", show_progress=False, observer=watch)
        report = ConformanceReport(name, full, config_source=source, logs=logs)
        T = len(full["acc_matrix"])
        for matrix in ("acc_matrix", "acc_matrix_task_il"):
            values = [a for row in full[matrix] for a in row]
            if len(full[matrix]) != T or not all(0.0 <= a <= 1.0 for a in values):
                raise ConformanceError(f"[trains] {name}: {matrix} is not a {T}x{T} matrix of fractions")
        learnt = sum(full["acc_matrix_task_il"][i][i] for i in range(T)) / T
        if learnt < min_task_il_acc:
            raise ConformanceError(f"[trains] {name}: tasks are barely learnt (mean task-IL accuracy on the task just "
                                   f"trained {learnt:.2f} < {min_task_il_acc})")
        report.checks.append("trains and evaluates")

        # 2. the ledger counts every byte of state_dict, once
        ckpt = torch.load(sorted((root / "full" / "checkpoints").glob("task_*.pt"))[-1], weights_only=False)
        state = ckpt["method"]
        seen, kept = set(), 0
        for tensor in state.values():
            if isinstance(tensor, torch.Tensor):
                ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
                if ident not in seen:
                    seen.add(ident)
                    kept += tensor.numel() * tensor.element_size()
        ledger_total = full["memory"]["total_bytes"]
        if ledger_total != kept:
            raise ConformanceError(f"[ledger] {name}: ledger says {ledger_total:,} bytes, state_dict holds {kept:,}")
        report.checks.append("ledger equals state_dict bytes")
        report.checks.append("no tensors outside state_dict")
        report.transient_bytes = {p: _nbytes(t) for p, t in watch.transient.items()}

        # 3. nothing kept outside state_dict: stop after task 2, resume in a fresh method, compare
        part = dict(cfg, trainer={**cfg["trainer"], "max_tasks": 2})
        with _quiet(logs, "partial"):
            run(part, root / "resumed", show_progress=False)
        again = _Inspector(name)
        with _quiet(logs, "resumed"):
            resumed = run(dict(cfg, resume=True), root / "resumed", show_progress=False, observer=again)
        for key in ("acc_matrix", "acc_matrix_task_il"):
            if resumed[key] != full[key]:
                raise ConformanceError(
                    f"[resume] {name}: results after resuming differ from an uninterrupted run ({key}); the method "
                    f"keeps state outside its state_dict (register it as a buffer, parameter or sub-module)")
        final_resumed = torch.load(sorted((root / "resumed" / "checkpoints").glob("task_*.pt"))[-1],
                                   weights_only=False)["method"]
        diff = _state_equal(state, final_resumed)
        if diff:
            raise ConformanceError(f"[resume] {name}: state after resuming differs from an uninterrupted run: {diff}")
        for path, value in watch.transient.items():
            other = again.transient.get(path)
            if other is None or other.shape != value.shape or not torch.equal(other, value):
                raise ConformanceError(
                    f"[resume] {name}: transient_state tensor '{path}' differs after resuming: it carries state "
                    f"from one task to the next, so it belongs in the state_dict (register it as a buffer)")
        report.checks.append("resume gives identical results")

        # 4. a replay buffer is sized by the budget: it fills it without exceeding it
        if check_auto_budget is None:
            check_auto_budget = bool(watch.buffers)
        if check_auto_budget:
            auto_cfg, _ = _tiny_config(method, stream, {"mb": AUTO_BUDGET_MB}, 3, 0.05, model, {}, optimizer)
            paths = _auto_paths(auto_cfg["method"])
            if not paths and "buffer" in inspect.signature(_method_class(method).__init__).parameters \
                    and source == "signature defaults":
                paths = [("buffer", "capacity")]  # a class without a config: its `buffer` argument
            auto_cfg["method"] = _merge(auto_cfg["method"], hparams)
            for path in paths:  # the kit's small fixed sizes give way to what the budget sizes
                _set_path(auto_cfg["method"], path, "auto")
            sized = _Inspector(name)
            with _quiet(logs, "auto"):
                auto = run(auto_cfg, root / "auto", show_progress=False, observer=sized)
            budget_bytes = auto["memory"]["budget_bytes"]
            for i, led in enumerate(auto["memory"]["per_task"]):
                if led["budgeted_bytes"] > budget_bytes:
                    raise ConformanceError(f"[budget] {name}: after task {i} keeps {led['budgeted_bytes']:,} counted "
                                           f"bytes > budget {budget_bytes:,}")
            if not sized.buffers:
                raise ConformanceError(f"[budget] {name}: no ReplayBuffer found on the method built under "
                                       f"budget.mb={AUTO_BUDGET_MB}")
            per_sample = _per_sample_bytes(sized.buffers)
            gap = budget_bytes - auto["memory"]["per_task"][-1]["budgeted_bytes"]
            if gap >= per_sample:
                where = (f"{source} sizes no buffer from the budget: write its capacity as "
                         f"${{clzoo.buffer_capacity:${{budget.mb}},N}} (auto under a budget, N otherwise)"
                         if not paths else "the buffer is smaller than what the budget leaves")
                raise ConformanceError(
                    f"[budget] {name}: under budget.mb={AUTO_BUDGET_MB} it keeps "
                    f"{auto['memory']['per_task'][-1]['budgeted_bytes']:,} counted bytes and leaves {gap:,} unused "
                    f"(more than one exemplar, {per_sample} bytes): {where}, so sweeps compare methods at equal memory")
            report.auto_capacity = sum(b.capacity for b in sized.buffers)
            report.checks.append("auto buffer fills the budget")
        if verbose:
            print(report.summary(), flush=True)
        return report
    except ConformanceError as err:
        err.logs = logs
        raise
    finally:
        if tmp is not None:
            tmp.cleanup()


def _state_equal(a: dict, b: dict) -> str | None:
    if a.keys() != b.keys():
        return f"state_dict keys differ: {sorted(set(a) ^ set(b))[:5]}"
    for key in a:
        ta, tb = a[key], b[key]
        if isinstance(ta, torch.Tensor):
            if ta.shape != tb.shape or not torch.equal(ta, tb):
                return f"tensor '{key}' differs"
    return None


__all__ = ["check_method", "ConformanceError", "ConformanceReport", "tiny_config", "hidden_state",
           "reachable_tensors", "measure"]
