"""The conformance kit: does a method keep the clzoo contract?

    from clzoo.testing import check_method
    report = check_method("der", buffer={"capacity": 40})   # a registered name, or the class itself

It trains the method on a tiny real stream (bundled digits) and checks that

1. it trains and evaluates: accuracies are fractions, and each task is learnt above chance (task-IL);
2. its ledger equals the bytes of every tensor in its ``state_dict`` (nothing kept off the books);
3. it keeps nothing outside its ``state_dict``: a run stopped after task 2 and resumed from its checkpoint in a
   fresh method gives bit-identical results and state to an uninterrupted run;
4. with a replay buffer sized ``auto`` it fills the budget without exceeding it, after every task.

Every failed check raises :class:`ConformanceError` naming the check.
"""
from __future__ import annotations

import inspect
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .memory.buffer import ReplayBuffer
from .memory.ledger import measure

TINY_STREAM = {"name": "tiny_digits", "dataset": "digits", "scenario": "class_il", "n_tasks": 5,
               "train_per_task": 120, "test_per_task": 40}


class ConformanceError(AssertionError):
    """A method breaks the contract; the message names the check."""


@dataclass
class ConformanceReport:
    method: str
    results: dict
    checks: list[str] = field(default_factory=list)
    auto_capacity: int | None = None


def _target(method) -> tuple[str, str]:
    from .methods.registry import get_method_class

    cls = get_method_class(method) if isinstance(method, str) else method
    return f"{cls.__module__}.{cls.__qualname__}", (cls.method_name or cls.__name__)


def tiny_config(method, stream: dict | None = None, budget: dict | None = None, epochs: int = 3,
                lr: float = 0.05, model: dict | None = None, optimizer: dict | None = None, **hparams) -> dict:
    """A complete run configuration for ``method`` on the tiny digits stream (or ``stream``); ``optimizer``
    overrides keys of the default SGD (e.g. ``{"name": "adam", "lr": 1e-3}``)."""
    from .config import compose

    cfg = compose(["log.progress=false", "log.tensorboard=false", "log.plots=false"])
    target, _ = _target(method)
    cfg["method"] = {"_target_": target, **hparams}
    cfg["stream"] = {**cfg["stream"], **TINY_STREAM, **(stream or {})}
    cfg["trainer"].update({"epochs": epochs, "batch_size": 10, "num_threads": None})
    cfg["trainer"]["optimizer"] = {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False,
                                   **(optimizer or {})}
    if model is not None:
        cfg["model"] = model
    cfg["budget"] = {"mb": None, "count_model": False, "enforce": True, **(budget or {})}
    cfg.pop("_choices", None)
    return cfg


def _state_equal(a: dict, b: dict) -> str | None:
    if a.keys() != b.keys():
        return f"state_dict keys differ: {sorted(set(a) ^ set(b))[:5]}"
    for key in a:
        ta, tb = a[key], b[key]
        if isinstance(ta, torch.Tensor):
            if ta.shape != tb.shape or not torch.equal(ta, tb):
                return f"tensor '{key}' differs"
    return None


def check_method(method, workdir: str | Path | None = None, stream: dict | None = None,
                 check_auto_budget: bool | None = None, min_task_il_acc: float = 0.6, model: dict | None = None,
                 optimizer: dict | None = None, **hparams) -> ConformanceReport:
    """Run the conformance checks on ``method`` (a registered name or a Method subclass) with ``hparams``."""
    from .engine.runner import run

    _, name = _target(method)
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    root = Path(workdir or tmp.name)
    try:
        cfg = tiny_config(method, stream=stream, model=model, optimizer=optimizer, **hparams)

        # 1. trains and evaluates
        full = run(cfg, root / "full", show_progress=False)
        report = ConformanceReport(name, full)
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

        # 3. nothing kept outside state_dict: stop after task 2, resume in a fresh process state, compare
        part = dict(cfg, trainer={**cfg["trainer"], "max_tasks": 2})
        run(part, root / "resumed", show_progress=False)
        resumed = run(dict(cfg, resume=True), root / "resumed", show_progress=False)
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
        report.checks.append("resume gives identical results")

        # 4. an auto buffer fills the budget without exceeding it
        from .methods.registry import get_method_class

        cls = get_method_class(method) if isinstance(method, str) else method
        buffer_param = inspect.signature(cls.__init__).parameters.get("buffer")
        has_buffer = buffer_param is not None and buffer_param.default is not None  # None: exemplar-free
        if check_auto_budget is None:
            check_auto_budget = has_buffer
        if check_auto_budget:
            budget_mb = 0.05
            auto_hparams = {**hparams, "buffer": {**_as_buffer_dict(hparams.get("buffer")), "capacity": "auto"}}
            auto_cfg = tiny_config(method, stream=stream, model=model, budget={"mb": budget_mb}, optimizer=optimizer,
                                   **auto_hparams)
            auto = run(auto_cfg, root / "auto", show_progress=False)
            budget_bytes = auto["memory"]["budget_bytes"]
            info = auto["stream"]
            for i, led in enumerate(auto["memory"]["per_task"]):
                if led["budgeted_bytes"] > budget_bytes:
                    raise ConformanceError(f"[budget] {name}: after task {i} keeps {led['budgeted_bytes']:,} counted "
                                           f"bytes > budget {budget_bytes:,}")
            per_sample = ReplayBuffer.bytes_per_sample((1, 8, 8), info["n_classes"], store_logits=True)
            gap = budget_bytes - auto["memory"]["per_task"][-1]["budgeted_bytes"]
            if gap >= per_sample:
                raise ConformanceError(f"[budget] {name}: an auto buffer leaves {gap:,} bytes of the budget unused "
                                       f"(more than one exemplar, {per_sample} bytes)")
            report.auto_capacity = auto["memory"]["per_task"][-1]["by_category"]["exemplars"]
            report.checks.append("auto buffer fills the budget")
        return report
    finally:
        if tmp is not None:
            tmp.cleanup()


def _as_buffer_dict(buffer) -> dict:
    if buffer is None:
        return {}
    return dict(buffer) if isinstance(buffer, dict) else {"capacity": buffer}


__all__ = ["check_method", "ConformanceError", "ConformanceReport", "tiny_config", "measure"]
