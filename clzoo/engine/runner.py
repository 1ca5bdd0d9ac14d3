"""The task loop: begin_task -> epochs of batches through observe -> end_task -> evaluate every task.

:func:`run` takes a plain configuration dict (the resolved Hydra config) and a run directory, and writes
``results.json``, ``metrics.csv``, TensorBoard events, PNG plots and a checkpoint after every task.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .. import __version__
from ..data import BatchTransform, build_stream
from ..memory.ledger import Budget, measure
from ..methods.base import RunContext, StreamInfo, check_finite
from ..models import ContinualModel, mask_logits
from ..models.pretrained import check_input_pipeline, check_source_overlap
from . import metrics as M
from .checkpoint import (atomic_write_text, config_hash, latest_checkpoint, load_checkpoint, save_checkpoint,
                         seed_everything, set_rng_state)
from .reporting import summary, write_metrics_csv, write_plots


class ResumeError(RuntimeError):
    """The run directory cannot be resumed with this configuration."""


def resolve_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def instantiate(cfg: dict, **kwargs):
    """Build ``cfg['_target_']`` with the remaining keys plus ``kwargs`` (Hydra's instantiate on plain dicts)."""
    from hydra.utils import instantiate as hydra_instantiate

    # objects go in after instantiation: Hydra would turn dataclasses such as RunContext into configs
    return hydra_instantiate(cfg, _partial_=True, _convert_="all")(**kwargs)


def build_model(model_cfg: dict, stream) -> ContinualModel:
    backbone = instantiate(model_cfg, input_shape=tuple(stream.input_shape))
    return ContinualModel(backbone, stream.n_classes)


def build_stream_from_config(cfg: dict):
    stream_cfg = {k: v for k, v in cfg["stream"].items() if k != "augment"}
    data = cfg.get("data", {})
    return build_stream(**stream_cfg, root=data.get("root"), download=data.get("download", False))


def transforms_from_config(augment: dict | None, device) -> tuple[BatchTransform, BatchTransform]:
    augment = augment or {}
    train = BatchTransform(augment.get("mean"), augment.get("std"), augment.get("crop_padding", 0),
                           augment.get("hflip", False)).to(device)
    return train, train.without_augmentation().to(device)


@torch.no_grad()
def evaluate(method, stream, after_task: int | None, device, batch_size: int = 1000) -> tuple[list[float], list[float]]:
    """Accuracy on every task's test set: class-IL (prediction over the classes seen after ``after_task``) and
    task-IL (prediction over the task's own classes, task id given). Before any training (``after_task=None``)
    no class has been seen, so class-IL accuracy is 0 except in domain-IL, where every task has every class."""
    method.eval()
    if after_task is None:
        n_seen = stream.n_classes if stream.scenario == "domain_il" else 0
    else:
        n_seen = stream.classes_seen(after_task)
    oracle = method.needs_task_id or stream.scenario == "task_il"
    acc_cil, acc_til = [], []
    for task in stream.tasks:
        x_all, y_all = task.x_test, task.y_test
        correct_cil = correct_til = 0
        for i in range(0, len(y_all), batch_size):
            x = method.preprocess(x_all[i:i + batch_size].to(device, non_blocking=True))
            y = y_all[i:i + batch_size].to(device, non_blocking=True)
            logits = method(x, task_id=None)  # task-agnostic
            logits_til = method(x, task_id=task.id) if oracle else logits
            if n_seen:
                correct_cil += (mask_logits(logits, n_seen).argmax(1) == y).sum().item()
            correct_til += (mask_logits(logits_til, task.classes).argmax(1) == y).sum().item()
        acc_cil.append(correct_cil / max(len(y_all), 1))
        acc_til.append(correct_til / max(len(y_all), 1))
    method.train()
    return acc_cil, acc_til


def _versions() -> dict:
    import hydra
    import torchvision

    return {"clzoo": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__, "platform": sys.platform}


#: training-loss points held back before they go to TensorBoard in one burst (see train_task)
LOG_BURST = 100


def _write_losses(writer, pending: list) -> None:
    for step, value, walltime in pending:
        writer.add_scalar("train/loss", value, step, walltime=walltime)
    pending.clear()


def train_task(method, task, cfg: dict, device, writer, progress: dict, show_progress: bool) -> None:
    trainer = cfg["trainer"]
    online = bool(cfg["stream"].get("online", False))
    epochs = 1 if online else int(trainer["epochs"])
    bs = int(trainer["batch_size"])
    log_every = max(int(trainer.get("log_every", 10)), 1)
    x_all, y_all = method.training_data(task)
    x_all, y_all = x_all.to(device), y_all.to(device)
    n = len(y_all)
    steps_per_epoch = (n + bs - 1) // bs
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"task {task.id}", disable=None if show_progress else True,
               leave=False, mininterval=0.5, dynamic_ncols=True)
    started, seen = time.perf_counter(), 0
    # loss points are written to TensorBoard in bursts of LOG_BURST (with the time each was taken) and at the end:
    # one add_scalar per point wakes TensorBoard's writer thread every time, which slowed small-model CPU
    # training by ~10-15% (bench/); the events written are the same
    pending: list = []
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, device=device)
            for b in range(steps_per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                loss = method.observe(x_all[idx], y_all[idx], task.id)
                step = progress["step"]
                value = check_finite(loss, task.id, step)
                progress["step"] = step + 1
                seen += len(idx)
                if writer is not None and step % log_every == 0:
                    pending.append((step, value, time.time()))
                    if len(pending) >= LOG_BURST:
                        _write_losses(writer, pending)
                if show_progress:
                    bar.update(1)
                    if b % 20 == 0:
                        bar.set_postfix(loss=f"{value:.3f}", samples_s=f"{seen / (time.perf_counter() - started):.0f}",
                                        epoch=epoch)
            method.end_epoch()
    finally:
        if writer is not None:
            _write_losses(writer, pending)
        bar.close()


def run(cfg: dict, run_dir: str | Path, show_progress: bool | None = None) -> dict:
    """Run one configuration into ``run_dir`` and return the results dict (also written as results.json)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_cfg = cfg.get("log", {}) or {}
    if show_progress is None:
        show_progress = bool(log_cfg.get("progress", True))
    trainer = cfg["trainer"]
    device = resolve_device(trainer.get("device", "auto"))
    if trainer.get("num_threads"):
        torch.set_num_threads(int(trainer["num_threads"]))
    seed = int(cfg.get("seed", 0))
    chash = config_hash(cfg)

    stream = build_stream_from_config(cfg)
    train_tf, eval_tf = transforms_from_config(cfg["stream"].get("augment"), device)
    budget = Budget(**(cfg.get("budget") or {}))
    optimizer_cfg = dict(trainer.get("optimizer") or {"name": "sgd", "lr": 0.1})
    ctx = RunContext(StreamInfo.from_stream(stream), device, train_tf, eval_tf, budget, optimizer_cfg,
                     int(trainer["batch_size"]), int(trainer["epochs"]))

    seed_everything(seed)  # the training seed fixes model initialisation, batch order, buffer draws
    model = build_model(cfg["model"], stream)
    # a pretrained backbone whose card says it has seen the stream's classes is refused (model.allow_overlap)
    provenance = check_source_overlap(model.backbone, stream)
    check_input_pipeline(model.backbone, train_tf)
    method = instantiate(cfg["method"], model=model, ctx=ctx).to(device)
    # the config group option chosen (clzoo-run method=NAME), else the registered name
    method_name = (cfg.get("_choices") or {}).get("method") or method.method_name or type(method).__name__.lower()
    ledger0 = budget.measure(method)
    budget.check(ledger0, "before training")

    progress = {"R": [], "R_til": [], "per_task_s": [], "train_s": 0.0, "eval_s": 0.0, "step": 0,
                "ledgers": [], "violations": [], "config_hash": chash, "backbone": provenance}
    start = 0
    if cfg.get("resume", False) and latest_checkpoint(run_dir) is not None:
        ckpt = load_checkpoint(latest_checkpoint(run_dir))
        if ckpt["progress"].get("config_hash") != chash:
            raise ResumeError(f"{run_dir} holds a run with a different configuration (hash "
                              f"{ckpt['progress'].get('config_hash')} != {chash}); resume with the same overrides "
                              f"or use a new run directory")
        method.load_state_dict(ckpt["method"])
        method.current_task = ckpt["task_id"]
        progress = ckpt["progress"]
        set_rng_state(ckpt["rng"])
        start = ckpt["task_id"] + 1
        print(f"resuming {run_dir} after task {ckpt['task_id']} ({start}/{stream.n_tasks} tasks done)")
    else:
        # a fresh run owns its folder: checkpoints left by an earlier run there would mix with this run's (a later
        # resume=true could pick one of them up), and an old results.json would outlive a crash of this run
        for stale in [*(run_dir / "checkpoints").glob("task_*.pt"), run_dir / "results.json"]:
            stale.unlink(missing_ok=True)
        t0 = time.perf_counter()
        progress["R0"], progress["R0_til"] = evaluate(method, stream, None, device, trainer.get("eval_batch_size", 1000))
        progress["eval_s"] += time.perf_counter() - t0

    writer = None
    if log_cfg.get("tensorboard", True):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))

    # torch.optim imports torch._dynamo on first use (seconds): pay it here, not inside task 0's timed training
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    method.train()
    try:
        stop = trainer.get("max_tasks") or stream.n_tasks
        for task in stream.tasks[start:stop]:
            t0 = time.perf_counter()
            method.start_task(task)
            train_task(method, task, cfg, device, writer, progress, show_progress)
            method.end_task(task)
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_time = time.perf_counter() - t0
            t1 = time.perf_counter()
            acc, acc_til = evaluate(method, stream, task.id, device, trainer.get("eval_batch_size", 1000))
            eval_time = time.perf_counter() - t1
            ledger = budget.measure(method)
            violation = budget.check(ledger, f"after task {task.id}")
            progress["R"].append(acc)
            progress["R_til"].append(acc_til)
            progress["per_task_s"].append(train_time)
            progress["train_s"] += train_time
            progress["eval_s"] += eval_time
            ledger_dict = ledger.to_dict()
            if hasattr(method, "memory_detail"):  # what the ledger's totals do not say (e.g. allocated vs used)
                ledger_dict["detail"] = method.memory_detail()
            progress["ledgers"].append(ledger_dict)
            if violation:
                progress["violations"].append(violation)
            if writer is not None:
                seen = task.id + 1
                writer.add_scalar("eval/avg_acc", sum(acc[:seen]) / seen, task.id)
                writer.add_scalar("eval/avg_acc_task_il", sum(acc_til[:seen]) / seen, task.id)
                for j, a in enumerate(acc):
                    writer.add_scalar(f"eval/acc_task_{j}", a, task.id)
                writer.add_scalar("memory/total_bytes", ledger.total_bytes, task.id)
                writer.flush()
            print(f"task {task.id}: avg acc {100 * sum(acc[:task.id + 1]) / (task.id + 1):.2f}% class-IL, "
                  f"{100 * sum(acc_til[:task.id + 1]) / (task.id + 1):.2f}% task-IL, "
                  f"{train_time:.1f}s, memory {ledger.total_bytes:,} B", flush=True)
            save_checkpoint(run_dir, task.id, method.state_dict(), progress,
                            keep_last=int(log_cfg.get("keep_checkpoints") or 0))
            write_metrics_csv(run_dir / "metrics.csv", progress["R"], progress["R_til"], progress["per_task_s"],
                              [lg["total_bytes"] for lg in progress["ledgers"]])
    finally:
        if writer is not None:
            writer.close()

    if not progress["R"]:
        raise ResumeError(f"{run_dir}: nothing left to train (all {stream.n_tasks} tasks are done)")
    results = assemble_results(cfg, stream, method_name, seed, progress, budget)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    if log_cfg.get("plots", True):
        write_plots(run_dir, progress["R"], progress["R_til"], f"{method_name} on {stream.name}")
    print(summary(results), flush=True)
    return results


def assemble_results(cfg, stream, method_name, seed, progress, budget) -> dict:
    R, R_til = progress["R"], progress["R_til"]
    metrics = {**M.all_metrics(R, progress["R0"]), **M.all_metrics(R_til, progress["R0_til"], "_task_il")}
    last = progress["ledgers"][-1]
    memory = {**last, "per_task": progress["ledgers"], "violations": progress["violations"],
              "budget_mb": budget.mb, "enforce": budget.enforce}
    return {
        "config": cfg,
        "config_hash": progress["config_hash"],
        "seed": seed,
        "versions": _versions(),
        "stream": {"name": stream.name, "n_tasks": stream.n_tasks, "scenario": stream.scenario,
                   "dataset": stream.info.get("dataset"), "n_classes": stream.n_classes,
                   "class_order": stream.class_order, "class_order_seed": stream.info.get("class_order_seed"),
                   "online": stream.online, "train_sizes": [t.n_train for t in stream.tasks]},
        "method": method_name,
        "acc_matrix": R,
        "acc_matrix_task_il": R_til,
        "acc_init": progress["R0"],
        "acc_init_task_il": progress["R0_til"],
        "metrics": metrics,
        "time": {"train_s": progress["train_s"], "eval_s": progress["eval_s"], "per_task_s": progress["per_task_s"]},
        "memory": memory,
        "backbone": progress.get("backbone"),
        "status": "complete" if len(R) == stream.n_tasks else "partial",
        "completed_tasks": len(R),
    }
