"""The task loop: begin_task -> epochs of batches through observe -> end_task -> evaluate every task.

:func:`run` takes a plain configuration dict (the resolved Hydra config) and a run directory, and writes
``results.json``, ``metrics.csv``, TensorBoard events, PNG plots and a checkpoint after every task.
"""
from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .. import __version__
from ..data import BatchTransform, build_stream
from ..data.disk_store import is_stored
from ..memory.ledger import Budget, measure
from ..methods.base import RunContext, StreamInfo, check_losses_finite, check_parameters_finite
from ..models import ContinualModel, mask_logits
from ..models.pretrained import check_input_pipeline, check_source_overlap
from . import metrics as M
from . import online
from .acceleration import Acceleration, eval_batch_size
from .checkpoint import (UNHASHED_KEYS, BackgroundCheckpoints, atomic_write_text, config_hash, ensure_writable,
                         load_latest_intact, remove_temporary_files, seed_everything, set_aside, set_rng_state)
from .lock import run_dir_lock
from .validation import final_validation_accuracy, hold_out_validation, validation_accuracy
from .reporting import ProgressLines, summary, trained_metrics, write_metrics_csv, write_plots


#: config keys a refused resume does not list as changed: the unhashed ones, and the thread count (hashed as the
#: count in effect, and refused with its own message)
HASH_IGNORED = (*UNHASHED_KEYS, "trainer.num_threads")


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


def check_model_fits(model: ContinualModel, stream, choice: str | None) -> None:
    """One forward pass on two blank inputs of the stream's shape, so a model that cannot take the stream's
    inputs (a patch-16 ViT on 8x8 digits) fails here, in one line, before any training."""
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, *stream.input_shape))
        model.train(was_training)
    except Exception as err:  # noqa: BLE001 - any failure here means this model cannot run on these inputs
        shape = "x".join(str(s) for s in stream.input_shape)
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ValueError(f"model={choice or 'this model'} cannot take {stream.name}'s {shape} inputs ({reason}); "
                         f"choose a model for these inputs (model=mlp takes any size) or a stream with larger images")


def build_stream_from_config(cfg: dict):
    stream_cfg = {k: v for k, v in cfg["stream"].items() if k != "augment"}
    data = cfg.get("data", {})
    return build_stream(**stream_cfg, root=data.get("root"), download=data.get("download", False),
                        drop_empty_classes=data.get("drop_empty_classes", False), store=data.get("store") or "memory",
                        store_dir=data.get("store_dir"), store_verify=bool(data.get("store_verify", False)))


def stored_batches(x_all, order, batch_size: int, y_all, device):
    """``(x, y)`` on ``device`` at the positions ``order``, ``batch_size`` at a time, read from a disk store
    (:class:`~clzoo.data.disk_store.StoredImages`) in a background thread (into pinned memory on CUDA). Closing
    this generator stops the reader."""
    batches = x_all.batches(order, batch_size, y_all, pin_memory=device.type == "cuda")
    try:
        for x, y in batches:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    finally:
        batches.close()


def eval_batches(x_all, y_all, batch_size: int, device):
    """``(x, y)`` on ``device``, ``batch_size`` at a time, in order: slices of an in-memory tensor, or reads of a
    disk store prefetched in a background thread (:func:`stored_batches`)."""
    if is_stored(x_all):
        yield from stored_batches(x_all, torch.arange(len(y_all)), batch_size, y_all, device)
        return
    for i in range(0, len(y_all), batch_size):
        yield x_all[i:i + batch_size].to(device, non_blocking=True), y_all[i:i + batch_size].to(device, non_blocking=True)


def transforms_from_config(augment: dict | None, device) -> tuple[BatchTransform, BatchTransform]:
    augment = augment or {}
    train = BatchTransform(augment.get("mean"), augment.get("std"), augment.get("crop_padding", 0),
                           augment.get("hflip", False), augment.get("brightness", 0.0),
                           augment.get("resized_crop")).to(device)
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
        for x, y in eval_batches(x_all, y_all, batch_size, device):
            x = method.preprocess(x)
            logits = method(x, task_id=None)  # task-agnostic
            logits_til = method(x, task_id=task.id) if oracle else logits
            # counts stay on the device: one host read per task's test set, not one per batch
            if n_seen:
                correct_cil += (mask_logits(logits, n_seen).argmax(1) == y).sum()
            correct_til += (mask_logits(logits_til, task.classes).argmax(1) == y).sum()
        acc_cil.append(int(correct_cil) / max(len(y_all), 1))
        acc_til.append(int(correct_til) / max(len(y_all), 1))
    method.train()
    return acc_cil, acc_til


def _versions() -> dict:
    import hydra
    import torchvision

    return {"clzoo": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__, "platform": sys.platform}


#: training-loss points held back before they go to TensorBoard in one burst (see train_task)
LOG_BURST = 100


#: steps between two reads of the training losses on the host (the non-finite check, progress lines)
CHECK_EVERY = 50


def _write_losses(writer, pending: list) -> None:
    if not pending:
        return
    # one host read for the whole burst (float64 holds every float32 / float64 loss exactly)
    values = torch.stack([value.reshape(()).double() for _, value, _ in pending]).tolist()
    for (step, _, walltime), value in zip(pending, values):
        writer.add_scalar("train/loss", value, step, walltime=walltime)
    pending.clear()


def drive(steps):
    """Run a step generator (:func:`train_task_steps`, :func:`run_steps`) to its end, answering every step it yields,
    ``(method, x, y, task_id, last_of_epoch)``, with ``method.observe(x, y, task_id)``; returns its return value.
    :mod:`clzoo.engine.seed_group` answers the steps of several seeds together instead."""
    try:
        request = next(steps)
        while True:
            try:
                loss = request[0].observe(*request[1:4])
            except BaseException as err:  # raised where the step was asked for, so the loop's cleanup runs
                request = steps.throw(err)
                continue
            request = steps.send(loss)
    except StopIteration as stop:
        return stop.value


def train_task(method, task, cfg: dict, device, writer, progress: dict, show_progress: bool,
               anytime: "online.Anytime | None" = None) -> None:
    """Train ``method`` on ``task`` (every epoch of its batches through ``observe``)."""
    drive(train_task_steps(method, task, cfg, device, writer, progress, show_progress, anytime))


def train_task_steps(method, task, cfg: dict, device, writer, progress: dict, show_progress: bool,
                     anytime: "online.Anytime | None" = None):
    """:func:`train_task` as a generator: yields each step as ``(method, x, y, task_id, last_of_epoch)`` and takes
    the loss ``method.observe(x, y, task_id)`` returned back (see :func:`drive`)."""
    trainer = cfg["trainer"]
    # task-free: the method is not told which task a batch belongs to (engine/online.py)
    task_arg = None if online.is_task_free(cfg) else task.id
    epochs = method.ctx.epochs_of(task.id)
    bs = int(trainer["batch_size"])
    log_every = max(int(trainer.get("log_every", 10)), 1)
    x_all, y_all = method.training_data(task)
    # a disk store's images stay on disk: each epoch's batches are read in the background (pinned on CUDA)
    stored = is_stored(x_all)
    x_all, y_all = (x_all, y_all.cpu()) if stored else (x_all.to(device), y_all.to(device))
    n = len(y_all)
    steps_per_epoch = (n + bs - 1) // bs
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"task {task.id}", disable=None if show_progress else True,
               leave=False, mininterval=0.5, dynamic_ncols=True)
    started, seen = time.perf_counter(), 0
    # no terminal (piped, logged, a batch job): periodic lines instead of the bar
    lines = (ProgressLines(task.id, epochs, epochs * steps_per_epoch, (cfg.get("log") or {}).get("progress_every_s") or 30)
             if show_progress and bar.disable else None)
    # loss points are written to TensorBoard in bursts of LOG_BURST (with the time each was taken) and at the end:
    # one add_scalar per point wakes TensorBoard's writer thread every time, which slowed small-model CPU
    # training by ~10-15% (bench/); the events written are the same
    pending: list = []
    # the losses stay on the device and are checked for NaN / infinity CHECK_EVERY steps at a time (one host read,
    # not one a step, which on an accelerator would wait for every step to finish); a bad loss is still reported
    # with its own step number, and before end_task and the checkpoint
    recent: list = []
    first_step = progress["step"]
    batches = None
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, device=device)
            batches = stored_batches(x_all, order, bs, y_all, device) if stored else None
            for b in range(steps_per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                if stored:
                    x, y = next(batches)
                else:
                    x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)
                loss = yield (method, x, y, task_arg, b + 1 == steps_per_epoch)
                loss = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
                step = progress["step"]
                recent.append(loss)
                progress["step"] = step + 1
                seen += len(idx)
                if anytime is not None:
                    anytime.after_batch(method, task.id, progress, len(idx))
                if writer is not None and step % log_every == 0:
                    pending.append((step, loss, time.time()))
                    if len(pending) >= LOG_BURST:
                        _write_losses(writer, pending)
                if len(recent) >= CHECK_EVERY:  # the only host read of the step loop, every CHECK_EVERY steps
                    check_losses_finite(recent, task.id, progress["step"] - len(recent))
                    if lines is not None:
                        lines.update(progress["step"] - first_step, seen, epoch, float(loss))
                    elif show_progress:
                        bar.set_postfix(loss=f"{float(loss):.3f}",
                                        samples_s=f"{seen / (time.perf_counter() - started):.0f}", epoch=epoch)
                if show_progress and lines is None:
                    bar.update(1)
            if batches is not None:
                batches.close()
            check_losses_finite(recent, task.id, progress["step"] - len(recent))
            method.end_epoch()
    finally:
        if batches is not None:  # a step that raised: stop the store's reader thread too
            batches.close()
        if writer is not None:
            _write_losses(writer, pending)
        bar.close()


# ------------------------------------------------------------------------------------------ run folder safety
def prepare_run_dir(run_dir: Path) -> None:
    """Before anything is computed: remove temporary files a killed run or a full disk left behind (the caller
    holds the folder's lock, so no other writer is active), and fail now if checkpoints cannot be written."""
    removed = remove_temporary_files(run_dir)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by an interrupted write in {run_dir}", flush=True)
    ensure_writable(run_dir)
    ensure_writable(run_dir / "checkpoints")


def apply_num_threads(trainer: dict) -> int:
    """Set torch's CPU thread count from ``trainer.num_threads`` (null: torch's default) and return the count
    in effect. Results depend on it (the BLAS splits matrix products differently), so it is hashed."""
    if trainer.get("num_threads"):
        torch.set_num_threads(int(trainer["num_threads"]))
    return torch.get_num_threads()


def run_config_hash(cfg: dict, num_threads: int) -> str:
    """The configuration hash of a run: :func:`config_hash` with the CPU thread count in effect.

    Measured with torch 2.14 (MKL BLAS) at 1 and 2 threads: a 10 x 784 by 784 x 100 matrix product already
    differs in its last bits; DER on split_mnist (MLP, default config) ends at 88.45 vs 89.42 % class-IL (weights
    apart by up to 2.97), SI at equal accuracy with weights apart by 2.6e-6. Making runs independent of the
    thread count is not cheap: MKL's strict reproducibility mode (MKL_CBWR=AUTO,STRICT, an environment variable
    read before the first product) made ER bit-identical on split_digits, but DER and SI still differed
    (max |dw| 9.5e-7 and 1.5e-7: torch's own parallel kernels split their work by thread count too), and it
    does nothing for other BLAS builds. So the count is hashed and a resume with another count is refused."""
    trainer = {**cfg.get("trainer", {}), "num_threads": int(num_threads)}
    return config_hash({**cfg, "trainer": trainer})


def resume_checkpoint(run_dir: Path, chash: str, num_threads: int, cfg: dict | None = None) -> dict | None:
    """The newest intact checkpoint of ``run_dir`` to resume from (None: nothing to resume). Damaged newer
    ones are set aside as ``*.damaged`` with a message; a different configuration or thread count is refused."""
    path, ckpt, damaged = load_latest_intact(run_dir)
    for bad, reason in damaged:
        aside = set_aside(bad)
        print(f"checkpoint {bad.name} is damaged: {reason}; set aside as {aside.name}", flush=True)
    if ckpt is None:
        if damaged:
            raise ResumeError(f"{run_dir}: no intact checkpoint to resume from (the {len(damaged)} found are damaged "
                              f"and were set aside as *.damaged); start again with resume=false")
        return None
    if damaged:
        print(f"resuming from the previous intact checkpoint, {path.name}", flush=True)
    saved = ckpt["progress"].get("config_hash")
    saved_threads = ckpt["progress"].get("num_threads")
    if saved_threads is not None and int(saved_threads) != num_threads:
        raise ResumeError(f"{run_dir} was trained with {saved_threads} CPU threads and this run has {num_threads}; "
                          f"results depend on the thread count, so resume with trainer.num_threads={saved_threads}")
    if saved != chash:
        from ..config import config_diff

        old_cfg = ckpt["progress"].get("config")
        diff = config_diff(old_cfg, cfg, ignore=HASH_IGNORED) if old_cfg is not None and cfg is not None else []
        changed = ("; changed: " + "; ".join(diff)) if diff else ""
        raise ResumeError(f"{run_dir} holds a run with a different configuration (hash {saved} != {chash}){changed}; "
                          f"resume with the same overrides (and trainer.num_threads) or use a new run directory")
    return ckpt


def run(cfg: dict, run_dir: str | Path, show_progress: bool | None = None, observer=None) -> dict:
    """Run one configuration into ``run_dir`` and return the results dict (also written as results.json).
    The run holds the folder's lock throughout: a second run there fails at once (:class:`RunDirBusyError`).

    ``observer(method, task_id)``, if given, is called once the method is built (``task_id=None``) and after every
    task, when its checkpoint is written (the conformance kit inspects the method there).
    """
    with run_session(cfg, run_dir) as run_dir:
        return drive(run_steps(cfg, run_dir, show_progress, observer))


@contextlib.contextmanager
def run_session(cfg: dict, run_dir: str | Path):
    """What a run holds around its steps (:func:`run`, and each run of a seed group): the configuration checked
    (one line naming a bad key, before any work), the folder's lock, the folder cleaned of an interrupted write,
    autocast (``trainer.amp``) and cuDNN autotuning, restored when it ends. Yields the folder as a Path."""
    from ..config import validate

    validate(cfg)
    run_dir = Path(run_dir)
    trainer = cfg["trainer"]
    around = Acceleration.from_trainer(trainer).around_run(resolve_device(trainer.get("device", "auto")))
    with run_dir_lock(run_dir), around:
        prepare_run_dir(run_dir)
        yield run_dir


def run_steps(cfg: dict, run_dir: Path, show_progress: bool | None, observer=None, stream=None):
    """The body of :func:`run` (the caller validates the config and holds the folder's lock) as a generator of
    training steps (see :func:`drive`); returns the results dict. ``stream``: the stream of ``cfg`` already built
    (a copy this run owns; seed groups build it once), else it is built here."""
    log_cfg = cfg.get("log", {}) or {}
    if show_progress is None:
        show_progress = bool(log_cfg.get("progress", True))
    trainer = cfg["trainer"]
    device = resolve_device(trainer.get("device", "auto"))
    num_threads = apply_num_threads(trainer)
    seed = int(cfg.get("seed", 0))
    chash = run_config_hash(cfg, num_threads)

    stream = build_stream_from_config(cfg) if stream is None else stream
    # trainer.validation_fraction: a validation split held out of the training data, for tuning (never the test set)
    val_fraction = float(trainer.get("validation_fraction") or 0.0)
    val_sets = hold_out_validation(stream, val_fraction, int(trainer.get("validation_seed") or 0)) if val_fraction else None
    train_tf, eval_tf = transforms_from_config(cfg["stream"].get("augment"), device)
    budget = Budget(**(cfg.get("budget") or {}))
    optimizer_cfg = dict(trainer.get("optimizer") or {"name": "sgd", "lr": 0.1})
    ctx = RunContext(StreamInfo.from_stream(stream, online.is_task_free(cfg)), device, train_tf, eval_tf, budget, optimizer_cfg,
                     int(trainer["batch_size"]), int(trainer["epochs"]),
                     first_task_epochs=int(trainer["first_task_epochs"]) if trainer.get("first_task_epochs") else None,
                     first_task_optimizer=dict(trainer.get("first_task_optimizer") or {}) or None)

    seed_everything(seed)  # the training seed fixes model initialisation, batch order, buffer draws
    model = build_model(cfg["model"], stream)
    # a pretrained backbone whose card says it has seen the stream's classes is refused (model.allow_overlap)
    provenance = check_source_overlap(model.backbone, stream)
    check_input_pipeline(model.backbone, train_tf)
    check_model_fits(model, stream, (cfg.get("_choices") or {}).get("model"))
    method = instantiate(cfg["method"], model=model, ctx=ctx).to(device)
    # trainer.channels_last / compile / amp's loss scaler, set up around the step (recorded in results.json)
    execution = Acceleration.from_trainer(trainer).prepare(method, device)
    eval_bs = execution["eval_batch_size"] = eval_batch_size(trainer, device)
    # the config group option chosen (clzoo-run method=NAME), else the registered name
    method_name = (cfg.get("_choices") or {}).get("method") or method.method_name or type(method).__name__.lower()
    if observer is not None:
        observer(method, None)
    task_free = online.is_task_free(cfg)
    online.check_task_free(method, cfg)
    ledger0 = budget.measure(method)
    violation0 = budget.check(ledger0, "before training")  # raises when enforced, else is recorded

    progress = {"R": [], "R_til": [], "per_task_s": [], "train_s": 0.0, "eval_s": 0.0, "step": 0,
                "ledgers": [], "violations": [violation0] if violation0 else [], "config_hash": chash,
                "num_threads": num_threads, "config": cfg,  # the config: a refused resume names the keys that changed
                "backbone": provenance}
    start = 0
    ckpt = resume_checkpoint(run_dir, chash, num_threads, cfg) if cfg.get("resume", False) else None
    if ckpt is not None:
        method.load_state_dict(ckpt["method"])
        method.current_task = ckpt["task_id"]
        progress = ckpt["progress"]
        online.restore_optimizer(method, progress, task_free)
        set_rng_state(ckpt["rng"])
        start = ckpt["task_id"] + 1
        data_fp = stream.info.get("data_fingerprint")
        if progress.setdefault("data_fingerprint", data_fp) != data_fp:
            raise ResumeError(f"{run_dir} was trained on other data: the dataset changed since the run started "
                              f"(data fingerprint {progress['data_fingerprint'][:12]} != {data_fp[:12]}); restore "
                              f"that data or use a new run directory")
        print(f"resuming {run_dir} after task {ckpt['task_id']} ({start}/{stream.n_tasks} tasks done)")
    else:
        # a fresh run owns its folder: checkpoints left by an earlier run there would mix with this run's (a later
        # resume=true could pick one of them up), and an old results.json would outlive a crash of this run
        for stale in [*(run_dir / "checkpoints").glob("task_*"), run_dir / "results.json"]:
            stale.unlink(missing_ok=True)
        t0 = time.perf_counter()
        progress["R0"], progress["R0_til"] = evaluate(method, stream, None, device, eval_bs)
        progress["eval_s"] += time.perf_counter() - t0
        progress["data_fingerprint"] = stream.info.get("data_fingerprint")  # a resume on other data is refused

    writer = None
    if log_cfg.get("tensorboard", True):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
    anytime = online.Anytime(stream, trainer, device, eval_bs, writer)

    progress["execution"] = execution  # what this session ran with (a resumed run may run on another device)
    # torch.optim imports torch._dynamo on first use (seconds): pay it here, not inside task 0's timed training
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    method.train()
    checkpoint_writer = BackgroundCheckpoints()
    try:
        stop = trainer.get("max_tasks") or stream.n_tasks
        for task in stream.tasks[start:stop]:
            t0 = time.perf_counter()
            # methods see the task without its test data, less the validation split they ask for
            seen_task = task.training_view(getattr(method, "validation_fraction", 0.0), seed)
            online.enter_task(method, seen_task, task_free)
            check_parameters_finite(method, task.id, "after begin_task")
            yield from train_task_steps(method, seen_task, cfg, device, writer, progress, show_progress, anytime)
            online.leave_task(method, seen_task, task_free)
            check_parameters_finite(method, task.id, "after end_task")
            progress.setdefault("task_end_samples", []).append(progress.get("samples", 0))
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_time = time.perf_counter() - t0
            t1 = time.perf_counter()
            acc, acc_til = evaluate(method, stream, task.id, device, eval_bs)
            eval_time = time.perf_counter() - t1
            ledger = budget.measure(method)
            violation = budget.check(ledger, f"after task {task.id}")
            progress["R"].append(acc)
            progress["R_til"].append(acc_til)
            if val_sets is not None:
                progress.setdefault("R_val", []).append(validation_accuracy(
                    method, stream, val_sets, task.id, device, eval_bs))
            progress["per_task_s"].append(train_time)
            progress["train_s"] += train_time
            progress["eval_s"] += eval_time
            ledger_entry = ledger.to_dict()
            report = getattr(method, "memory_report", None)
            if callable(report):  # method-specific memory figures (e.g. totals without a weight generator)
                ledger_entry["method_report"] = report(ledger)
            progress["ledgers"].append(ledger_entry)
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
            online.save_optimizer(method, progress, task_free)
            checkpoint_writer.submit(run_dir, task.id, method.state_dict(), progress,
                                     keep_last=int(log_cfg.get("keep_checkpoints") or 0))
            if observer is not None:
                observer(method, task.id)
            write_metrics_csv(run_dir / "metrics.csv", progress["R"], progress["R_til"], progress["per_task_s"],
                              [lg["total_bytes"] for lg in progress["ledgers"]])
    finally:
        try:
            checkpoint_writer.close()  # every checkpoint submitted is on disk before the run goes on or stops
        finally:
            if writer is not None:
                writer.close()

    if not progress["R"]:
        raise ResumeError(f"{run_dir}: nothing left to train (all {stream.n_tasks} tasks are done)")
    results = assemble_results(cfg, stream, method_name, seed, progress, budget)
    results["memory"]["buffers"] = buffer_fill(method)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    if results.get("anytime") is not None:
        online.write_anytime_csv(run_dir / "anytime.csv", results["anytime"])
    if log_cfg.get("plots", True):
        write_plots(run_dir, progress["R"], progress["R_til"], f"{method_name} on {stream.name}", stream.scenario)
        if results.get("anytime"):
            online.plot_anytime(run_dir / "anytime.png", results["anytime"], progress["task_end_samples"],
                                f"{method_name} on {stream.name}")
    print(summary(results), flush=True)
    return results


def buffer_fill(method) -> list[dict]:
    """Capacity and filled slots of every replay buffer the method keeps (the ledger pays for the capacity)."""
    from ..memory.buffer import ReplayBuffer

    return [{"name": name, "capacity": int(m.capacity), "filled": len(m)}
            for name, m in method.named_modules() if isinstance(m, ReplayBuffer)]


def assemble_results(cfg, stream, method_name, seed, progress, budget) -> dict:
    R, R_til = progress["R"], progress["R_til"]
    sizes = [len(t.y_test) for t in stream.tasks][: len(R)]
    metrics = {**M.all_metrics(R, progress["R0"], sizes=sizes), **M.all_metrics(R_til, progress["R0_til"], "_task_il")}
    last = progress["ledgers"][-1]
    memory = {**last, "per_task": progress["ledgers"], "violations": progress["violations"],
              "budget_mb": budget.mb, "enforce": budget.enforce}
    results = {
        "config": cfg,
        "config_hash": progress["config_hash"],
        "seed": seed,
        "versions": _versions(),
        "stream": {"name": stream.name, "n_tasks": stream.n_tasks, "scenario": stream.scenario,
                   "dataset": stream.info.get("dataset"), "data_fingerprint": stream.info.get("data_fingerprint"),
                   "n_classes": stream.n_classes,
                   "class_order": stream.class_order, "class_order_seed": stream.info.get("class_order_seed"),
                   "online": stream.online, "train_sizes": [t.n_train for t in stream.tasks],
                   "test_sizes": [len(t.y_test) for t in stream.tasks]},
        "method": method_name,
        "acc_matrix": R,
        "acc_matrix_task_il": R_til,
        "acc_init": progress["R0"],
        "acc_init_task_il": progress["R0_til"],
        "metrics": metrics,
        "time": {"train_s": progress["train_s"], "eval_s": progress["eval_s"], "per_task_s": progress["per_task_s"]},
        "memory": memory,
        **({"anytime": anytime} if (anytime := online.anytime_results(progress, cfg["trainer"])) is not None else {}),
        **({"task_free": True} if online.is_task_free(cfg) else {}),
        "backbone": progress.get("backbone"),
        "num_threads": progress.get("num_threads"),
        # the device and its settings: trainer.amp / compile / channels_last / cudnn_benchmark in effect
        "execution": progress.get("execution"),
        "status": "complete" if len(R) == stream.n_tasks else "partial",
        "completed_tasks": len(R),
        # the view the scenario is judged by: task_il streams by the task-IL matrix, others task-agnostic
        "headline": "task_il" if stream.scenario == "task_il" else "class_il",
    }
    if progress.get("R_val"):
        results["val_acc_matrix"] = progress["R_val"]
        results["metrics"]["final_val_acc"] = final_validation_accuracy(progress["R_val"])
    if results["status"] == "partial":
        # metrics over the trained tasks only (``metrics`` averages over every task of the stream)
        results["metrics_trained_tasks"] = trained_metrics(results)
    return results
