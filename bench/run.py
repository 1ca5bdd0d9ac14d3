#!/usr/bin/env python
"""Speed benchmark: the same continual-learning work in clzoo, in Avalanche, and as a bare PyTorch loop.

    python bench/run.py                      # full run, writes bench/RESULTS.md
    python bench/run.py --quick              # reduced version, well under a minute
    python bench/run.py --check-only         # no timing: checks the three systems compute the same thing
    python bench/run.py --suite gpu --device cuda   # the GPU table (bench/gpu.sh; cases in bench/gpu.py)

Every case runs the three systems on one in-memory stream (uint8 tensors), from the same initial weights,
with the same batch size, epochs, optimizer and learning rate, on the same number of torch threads:

* ``clzoo``     - ``clzoo.engine.run(cfg, run_dir)``, the call behind ``clzoo-run``, with its defaults
                  (TensorBoard events and a checkpoint after every task; plots off, progress bar off);
* ``avalanche`` - Avalanche's own strategies (``Naive``, ``Naive`` + ``ReplayPlugin`` with a
                  ``ReservoirSamplingBuffer``, ``DER``) on an Avalanche benchmark built from the same tensors,
                  with an ``EvaluationPlugin`` that only computes accuracy and logs nothing;
* ``bare``      - a plain PyTorch loop written for this file that does the same forward / backward work as
                  clzoo (same replay batch sizes, same losses, a vectorised reservoir buffer).

Timed, identically for all three: from building the model to the end of the last evaluation, i.e.
model construction, the initial evaluation, training on every task and the evaluation of every task's test
set after each task. Not timed: reading data from disk, building the stream / the Avalanche benchmark from
the in-memory tensors, Python imports (a warm-up run precedes the measurements). See bench/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent))

from clzoo.data import build_stream  # noqa: E402
from clzoo.data.sources import DatasetNotFoundError, Source, default_root, load_source  # noqa: E402
from clzoo.engine.checkpoint import seed_everything  # noqa: E402
from clzoo.engine.runner import build_model  # noqa: E402

SYSTEMS = ("clzoo", "avalanche", "avalanche-tensor", "bare")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2615)


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One workload: a stream, a model, a method and its hyper-parameters (shared by the three systems)."""

    name: str
    data: str                      # "mnist" (sequential MNIST; digits when absent) or "images" (CIFAR-shaped)
    method: str                    # finetune | er | der
    model: dict                    # a clzoo model config (_target_ + arguments)
    lr: float
    batch_size: int = 10
    epochs: int = 1
    buffer: int = 500
    minibatch: int = 10            # replay samples per step
    alpha: float = 1.0             # DER's logit-matching weight
    n_tasks: int = 5
    train_per_task: int | None = None
    test_per_task: int | None = None
    augment: dict | None = None    # clzoo stream.augment (mean/std/crop_padding/hflip)
    accuracy_systems: tuple = ()   # extra systems run for the accuracy comparison only (untimed)

    @property
    def model_name(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.model.items() if k != "_target_")
        return f"{self.model['_target_'].rsplit('.', 1)[-1]}({args})"


MLP = {"_target_": "clzoo.models.MLP", "hidden_sizes": [100, 100]}
IMAGE_AUG = {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "crop_padding": 4, "hflip": True}


def full_cases() -> list[Case]:
    # Sequential MNIST as in the DER paper (Buzzega et al. 2020): MLP 100-100, batch 10, 1 epoch, plain SGD;
    # lr 0.1 for fine-tuning and ER (replaying 10 samples per step), lr 0.03 with alpha 1 and 128 replayed samples
    # per step for DER (the paper's buffer-500 arguments, clzoo's DER defaults).
    mnist = dict(data="mnist", model=MLP, batch_size=10, epochs=1)
    # CIFAR-10 images (uint8, 3x32x32) with random crop + flip, on GEM's reduced ResNet-18: a subset keeps the
    # single-thread CPU run to about a minute per system
    resnet = {"_target_": "clzoo.models.reduced_resnet18", "nf": 20}
    images = dict(data="images", model=resnet, batch_size=10, epochs=1, lr=0.05, augment=IMAGE_AUG,
                  train_per_task=200, test_per_task=100)
    return [
        Case("seq-mnist/finetune", method="finetune", lr=0.1, **mnist),
        Case("seq-mnist/er", method="er", lr=0.1, minibatch=10, accuracy_systems=("bare-avalanche-schedule",),
             **mnist),
        Case("seq-mnist/der", method="der", lr=0.03, minibatch=128, alpha=1.0, **mnist),
        Case("images/er", method="er", minibatch=10, **images),
    ]


def quick_cases() -> list[Case]:
    mnist = dict(data="mnist", model=MLP, batch_size=10, epochs=1, train_per_task=200, test_per_task=100)
    tiny = {"_target_": "clzoo.models.reduced_resnet18", "nf": 4}
    images = dict(data="images", model=tiny, batch_size=10, epochs=1, lr=0.05, augment=IMAGE_AUG,
                  train_per_task=30, test_per_task=20)
    return [
        Case("seq-mnist/finetune", method="finetune", lr=0.1, **mnist),
        Case("seq-mnist/er", method="er", lr=0.1, minibatch=10, **mnist),
        Case("seq-mnist/der", method="der", lr=0.03, minibatch=128, alpha=1.0, **mnist),
        Case("images/er", method="er", minibatch=10, **images),
    ]


#: the full-width ResNet-18 for small images (model=resnet18), the DER paper's Seq-CIFAR-10 network
RESNET18 = {"_target_": "clzoo.models.reduced_resnet18", "nf": 64}


def gpu_cases(quick: bool = False) -> list[Case]:
    """The GPU table (issue 18): Seq-CIFAR-10 ER on ResNet-18 with the DER paper's buffer-500 arguments (SGD lr 0.1,
    batch 32, 32 replayed samples), one epoch per task instead of the paper's 50 so that each system runs in a
    minute or two on a GPU; and Seq-MNIST ER as in the CPU table. ``quick``: tiny streams and a narrow ResNet, a
    dry run of the code path (numbers meaningless)."""
    if quick:
        return [Case("seq-cifar10/er", data="images", method="er", model={**RESNET18, "nf": 4}, lr=0.1,
                     batch_size=32, minibatch=32, augment=IMAGE_AUG, train_per_task=64, test_per_task=32),
                Case("seq-mnist/er", data="mnist", method="er", model=MLP, lr=0.1, minibatch=10,
                     train_per_task=200, test_per_task=100)]
    return [Case("seq-cifar10/er", data="images", method="er", model=RESNET18, lr=0.1, batch_size=32, epochs=1,
                 minibatch=32, augment=IMAGE_AUG),
            Case("seq-mnist/er", data="mnist", method="er", model=MLP, lr=0.1, batch_size=10, epochs=1,
                 minibatch=10)]


def gpu_module():
    """bench/gpu.py (the bare loop on an accelerator, the GPU targets), loaded from beside this file."""
    import importlib.util

    name = "clzoo_bench_gpu"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "gpu.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


# ---------------------------------------------------------------------------------------------- data
def find_root(data_root: str | None) -> Path:
    return Path(data_root).expanduser() if data_root else default_root()


def load_mnist(root: Path) -> Source:
    """MNIST from ``root`` (torchvision layout), else scikit-learn's bundled 8x8 digits."""
    try:
        return load_source("mnist", root)
    except (DatasetNotFoundError, FileNotFoundError, RuntimeError):
        return load_source("digits", root)


def load_images(root: Path, n_train: int = 5000, n_test: int = 1000) -> Source:
    """CIFAR-10 from ``root`` when present, else random CIFAR-shaped uint8 images (timing only)."""
    try:
        return load_source("cifar10", root)
    except (DatasetNotFoundError, FileNotFoundError, RuntimeError):
        g = torch.Generator().manual_seed(0)
        return Source("random-cifar", torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.arange(n_train) % 10,
                      torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.arange(n_test) % 10, [str(i) for i in range(10)])


def make_stream(case: Case, sources: dict):
    return build_stream(source=sources[case.data], n_tasks=case.n_tasks, train_per_task=case.train_per_task,
                        test_per_task=case.test_per_task, name=case.name)


# ---------------------------------------------------------------------------------------------- clzoo
def clzoo_config(case: Case, seed: int, device: str = "cpu") -> dict:
    from clzoo.config import compose

    overrides = [f"method={case.method}", f"seed={seed}", f"trainer.optimizer.lr={case.lr}",
                 f"trainer.batch_size={case.batch_size}", f"trainer.epochs={case.epochs}",
                 "log.plots=false", "log.progress=false", f"trainer.device={device}"]
    if case.method in ("er", "der"):
        overrides += [f"method.buffer.capacity={case.buffer}", f"method.minibatch_size={case.minibatch}"]
    if case.method == "der":
        overrides += [f"method.alpha={case.alpha}"]
    cfg = compose(overrides)
    cfg["model"] = dict(case.model)
    cfg["stream"] = {"name": case.name, "n_tasks": case.n_tasks}
    if case.augment:
        cfg["stream"]["augment"] = dict(case.augment)
    return cfg


def run_clzoo(case: Case, stream, seed: int, keep_dir: Path | None = None, device: str = "cpu") -> dict:
    """``clzoo.engine.run`` on the in-memory stream (the stream builder is bypassed: data loading is not timed)."""
    from clzoo.engine import runner

    cfg = clzoo_config(case, seed, device)
    run_dir = Path(tempfile.mkdtemp(prefix="clzoo-bench-")) if keep_dir is None else keep_dir
    original = runner.build_stream_from_config
    runner.build_stream_from_config = lambda _cfg: stream
    try:
        gc.collect()
        with contextlib.redirect_stdout(io.StringIO()):
            t0, c0 = time.perf_counter(), time.process_time()
            results = runner.run(cfg, run_dir, show_progress=False)
            synchronize(device)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        runner.build_stream_from_config = original
        if keep_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    final = results["acc_matrix"][-1]
    return {"time": elapsed, "cpu": cpu, "acc": sum(final) / len(final), "per_task": final}


# ---------------------------------------------------------------------------------------------- bare loop
def _crop_flip(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop (after zero padding) and horizontal flip of each image: slices of the padded batch (for
    batches of 10 to 20 images this is faster than clzoo's gather-based BatchTransform on CPU)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (b, 2)).tolist()
    flips = (torch.rand(b) < 0.5).tolist()
    return torch.stack([img[:, i:i + h, j:j + w].flip(-1) if f else img[:, i:i + h, j:j + w]
                        for img, (i, j), f in zip(padded, offsets, flips)])


def run_bare(case: Case, stream, seed: int, return_model: bool = False, end_of_task: bool = False,
             device: str = "cpu") -> dict:
    """A plain PyTorch loop doing clzoo's work: same model, init, batch order, replay batches and losses.

    ``end_of_task`` (ER only) switches to Avalanche's replay schedule instead: the buffer is only updated after a
    task (the task's samples offered to the reservoir then), so there is no replay during the first task and
    task t replays tasks < t only. Used to check that this schedule explains the accuracy gap to Avalanche's ER.
    On another device than the CPU the loop of bench/gpu.py runs (nothing read back per step).
    """
    if device != "cpu":
        return gpu_module().run_bare_device(case, stream, seed, device)
    aug = case.augment or {}
    mean = torch.tensor(aug["mean"]).view(1, -1, 1, 1) if aug.get("mean") else None
    std = torch.tensor(aug["std"]).view(1, -1, 1, 1) if aug.get("std") else None
    pad = int(aug.get("crop_padding") or 0)

    def prepare(xb, train):
        x = xb.float().div_(255.0)
        if train and pad:
            x = _crop_flip(x, pad)
        if mean is not None:
            x = (x - mean) / std
        return x

    @torch.no_grad()
    def evaluate(n_seen):
        model.eval()
        accs = []
        for task in stream.tasks:
            correct = correct_til = 0
            lo, hi = task.classes[0], task.classes[-1] + 1
            for i in range(0, len(task.y_test), 1000):
                logits = model(prepare(task.x_test[i:i + 1000], False))
                y = task.y_test[i:i + 1000]
                if n_seen:
                    correct += (logits[:, :n_seen].argmax(1) == y).sum().item()
                # task-IL accuracy too, as clzoo computes it from the same forward pass
                correct_til += (logits[:, lo:hi].argmax(1) + lo == y).sum().item()
            accs.append(correct / len(task.y_test))
        model.train()
        return accs

    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    seed_everything(seed)
    model = build_model(case.model, stream)
    replay = case.method in ("er", "der")
    if replay:
        cap = case.buffer
        buf_x = torch.zeros((cap, *stream.input_shape), dtype=torch.uint8)
        buf_y = torch.zeros(cap, dtype=torch.long)
        buf_z = torch.zeros(cap, stream.n_classes) if case.method == "der" else None
        n_seen = 0
    n_before = 0  # samples seen before the current task (end_of_task schedule)
    evaluate(0)
    model.train()
    for task in stream.tasks:
        opt = torch.optim.SGD(model.parameters(), lr=case.lr)
        x_all, y_all = task.x_train, task.y_train
        n = len(y_all)
        for _ in range(case.epochs):
            order = torch.randperm(n)
            for b in range(0, n, case.batch_size):
                idx = order[b:b + case.batch_size]
                x, y = x_all[idx], y_all[idx]
                if case.method == "der":
                    logits = model(prepare(x, True))
                    loss = F.cross_entropy(logits, y)
                    if n_seen:
                        j = torch.randperm(min(n_seen, cap))[:case.minibatch]
                        loss = loss + case.alpha * F.mse_loss(model(prepare(buf_x[j], True)), buf_z[j])
                else:
                    inputs, labels = prepare(x, True), y
                    if replay and (n_before if end_of_task else n_seen):
                        j = torch.randperm(min(n_before if end_of_task else n_seen, cap))[:case.minibatch]
                        inputs = torch.cat([inputs, prepare(buf_x[j], True)])
                        labels = torch.cat([labels, buf_y[j]])
                    logits = model(inputs)
                    loss = F.cross_entropy(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss.item()
                if replay and not end_of_task:  # reservoir sampling (Vitter's algorithm R), vectorised
                    pos = n_seen + torch.arange(len(y))
                    slots = torch.where(pos < cap, pos, (torch.rand(len(y)) * (pos + 1)).long())
                    keep = slots < cap
                    s = slots[keep]
                    buf_x[s], buf_y[s] = x[keep], y[keep]
                    if buf_z is not None:
                        buf_z[s] = logits.detach()[:len(y)][keep]
                    n_seen += len(y)
        if replay and end_of_task:  # the whole task offered to the reservoir at its end
            for b in range(0, n, case.batch_size):
                x, y = x_all[b:b + case.batch_size], y_all[b:b + case.batch_size]
                pos = n_seen + torch.arange(len(y))
                slots = torch.where(pos < cap, pos, (torch.rand(len(y)) * (pos + 1)).long())
                keep = slots < cap
                buf_x[slots[keep]], buf_y[slots[keep]] = x[keep], y[keep]
                n_seen += len(y)
            n_before = n_seen
        acc = evaluate(stream.classes_seen(task.id))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"time": elapsed, "cpu": cpu, "acc": sum(acc) / len(acc), "per_task": acc}
    if return_model:
        out["model"] = model
    return out


# ---------------------------------------------------------------------------------------------- Avalanche
class _UInt8ToFloat:
    """uint8 CHW tensor -> float in [0, 1] (torchvision's ToTensor does this for PIL images)."""

    def __call__(self, x):
        return x.float().div(255.0)


class _StockPipeline:
    """The per-sample input pipeline of Avalanche's stock benchmarks, which wrap torchvision datasets: each sample
    becomes a PIL image (torchvision's MNIST / CIFAR10 ``__getitem__``), then goes through torchvision transforms:
    ``ToTensor`` for SplitMNIST (which also normalises; here values stay x / 255, as in the other systems, so the
    work and the numbers are the same), ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` +
    ``Normalize`` for SplitCIFAR10's training set (``ToTensor`` + ``Normalize`` for evaluation)."""

    def __init__(self, augment: dict | None, train: bool, size: int):
        import torchvision.transforms as T

        aug = augment or {}
        steps = []
        if train and aug.get("crop_padding"):
            steps.append(T.RandomCrop(size, padding=int(aug["crop_padding"])))
        if train and aug.get("hflip"):
            steps.append(T.RandomHorizontalFlip())
        steps.append(T.ToTensor())
        if aug.get("mean"):
            steps.append(T.Normalize(aug["mean"], aug["std"]))
        self.transform = T.Compose(steps)

    def __call__(self, x):
        from PIL import Image

        array = x.permute(1, 2, 0).numpy()
        return self.transform(Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array))


def avalanche_benchmark(case: Case, stream, orders: list[torch.Tensor] | None = None, pipeline: str = "stock"):
    """An Avalanche benchmark holding the stream's tensors (not timed: this is data preparation).

    ``pipeline="stock"``: every sample goes through the PIL + torchvision pipeline of Avalanche's own SplitMNIST /
    SplitCIFAR10 benchmarks (:class:`_StockPipeline`), as Avalanche's users run it. ``pipeline="tensor"``:
    Avalanche's fastest input path: MNIST-like streams as float tensors already scaled to [0, 1] (no per-sample
    transform); image streams as uint8 tensors with torchvision's tensor transforms per sample (RandomCrop(32,
    padding=4) + RandomHorizontalFlip + scaling + Normalize for training, scaling + Normalize for evaluation).
    ``orders`` re-orders each task's training data (to reproduce clzoo's batch order exactly when Avalanche is
    told not to shuffle).
    """
    from avalanche.benchmarks import tensors_benchmark
    import torchvision.transforms as T

    aug = case.augment or {}
    train, test = [], []
    for t, task in enumerate(stream.tasks):
        x, y = task.x_train, task.y_train
        if orders is not None:
            x, y = x[orders[t]], y[orders[t]]
        train.append((x, y))
        test.append((task.x_test, task.y_test))
    if pipeline == "stock":
        size = stream.input_shape[-1]
        return tensors_benchmark(train, test, task_labels=[0] * len(train),
                                 train_transform=_StockPipeline(aug, True, size),
                                 eval_transform=_StockPipeline(aug, False, size))
    if aug:
        tail = [_UInt8ToFloat()]
        if aug.get("mean"):
            tail.append(T.Normalize(aug["mean"], aug["std"]))
        head = []
        if aug.get("crop_padding"):
            head.append(T.RandomCrop(stream.input_shape[-1], padding=int(aug["crop_padding"])))
        if aug.get("hflip"):
            head.append(T.RandomHorizontalFlip())
        return tensors_benchmark(train, test, task_labels=[0] * len(train), train_transform=T.Compose(head + tail),
                                 eval_transform=T.Compose(tail))
    scale = lambda pairs: [(x.float().div_(255.0), y) for x, y in pairs]  # noqa: E731
    return tensors_benchmark(scale(train), scale(test), task_labels=[0] * len(train))


def _clzoo_orders(case: Case, stream, seed: int) -> list[torch.Tensor]:
    """The batch order clzoo's fine-tuning run draws with ``seed`` (model init first, then one randperm per task)."""
    seed_everything(seed)
    build_model(case.model, stream)
    return [torch.randperm(len(t.y_train)) for t in stream.tasks]


def avalanche_strategy(case: Case, model, device="cpu"):
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import DER, Naive
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[])
    opt = torch.optim.SGD(model.parameters(), lr=case.lr)
    common = dict(train_mb_size=case.batch_size, train_epochs=case.epochs, eval_mb_size=1000, device=device,
                  evaluator=evaluator)
    if case.method == "finetune":
        return Naive(model=model, optimizer=opt, **common)
    if case.method == "er":
        plugin = ReplayPlugin(mem_size=case.buffer, batch_size=case.batch_size, batch_size_mem=case.minibatch,
                              storage_policy=ReservoirSamplingBuffer(case.buffer))
        return Naive(model=model, optimizer=opt, plugins=[plugin], **common)
    if case.method == "der":
        return DER(model=model, optimizer=opt, mem_size=case.buffer, batch_size_mem=case.minibatch, alpha=case.alpha,
                   beta=0.0, **common)
    raise ValueError(case.method)


def run_avalanche(case: Case, stream, seed: int, bench=None, return_model: bool = False,
                  pipeline: str = "stock", device: str = "cpu") -> dict:
    """Avalanche's strategy on the same images, fed through ``pipeline`` (see :func:`avalanche_benchmark`).
    Fine-tuning sees clzoo's exact batch order (shuffle off, data pre-ordered); replay strategies shuffle with
    Avalanche's own sampler (the buffer loader must shuffle)."""
    same_order = case.method == "finetune" and case.epochs == 1
    if bench is None:
        bench = avalanche_benchmark(case, stream, _clzoo_orders(case, stream, seed) if same_order else None,
                                    pipeline=pipeline)
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    seed_everything(seed)
    model = build_model(case.model, stream)
    # silence Avalanche's own warnings (deprecations, "no loggers"): it prints some whatever the filters say
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        strategy = avalanche_strategy(case, model, device)
        strategy.eval(bench.test_stream)  # the initial evaluation clzoo and the bare loop also do
        for exp in bench.train_stream:
            strategy.train(exp, shuffle=not same_order)
            metrics = strategy.eval(bench.test_stream)
    synchronize(device)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    accs = [metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{t:03d}"] for t in range(len(stream.tasks))]
    out = {"time": elapsed, "cpu": cpu, "acc": sum(accs) / len(accs), "per_task": accs}
    if return_model:
        out["model"] = model
    return out


# ---------------------------------------------------------------------------------------------- input path alone
def time_input_pipelines(case: Case, stream, n_images: int, repeats: int = 3) -> dict:
    """Seconds per 1,000 training images that each system spends turning stored images into augmented network
    input, with no model: the part of a step clzoo removes (on an accelerator the model's share shrinks and this
    is what is left). Avalanche: its DataLoader over the task's dataset with the stock (PIL) or tensor transforms
    (what its training loop iterates); clzoo: its batched ``BatchTransform`` on the sampled uint8 batch; bare:
    the benchmark's slice-based crop + flip."""
    from torch.utils.data import DataLoader

    from clzoo.data.augment import BatchTransform

    aug = case.augment or {}
    x_all = torch.cat([t.x_train for t in stream.tasks])[:n_images]
    transform = BatchTransform(aug.get("mean"), aug.get("std"), aug.get("crop_padding", 0), aug.get("hflip", False))
    mean = torch.tensor(aug["mean"]).view(1, -1, 1, 1) if aug.get("mean") else None
    std = torch.tensor(aug["std"]).view(1, -1, 1, 1) if aug.get("std") else None
    pad = int(aug.get("crop_padding") or 0)

    def clzoo_path():
        order = torch.randperm(len(x_all))
        for b in range(0, len(x_all), case.batch_size):
            transform(x_all[order[b:b + case.batch_size]])

    def bare_path():
        order = torch.randperm(len(x_all))
        for b in range(0, len(x_all), case.batch_size):
            x = _crop_flip(x_all[order[b:b + case.batch_size]].float().div_(255.0), pad) if pad else None
            if mean is not None:
                x = (x - mean) / std

    def avalanche_path(pipeline):
        one = replace(case, n_tasks=1)
        dataset = avalanche_benchmark(one, _Stream([_Task(x_all, torch.zeros(len(x_all), dtype=torch.long))],
                                                   stream.input_shape), pipeline=pipeline).train_stream[0].dataset
        dataset = dataset.train()
        return lambda: [None for _ in DataLoader(dataset, batch_size=case.batch_size, shuffle=True)]

    paths = {"clzoo": clzoo_path, "avalanche": avalanche_path("stock"),
             "avalanche-tensor": avalanche_path("tensor"), "bare": bare_path}
    best = {}
    for name, fn in paths.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        best[name] = 1000 * min(times) / len(x_all)
    return best


@dataclass
class _Task:
    x_train: torch.Tensor
    y_train: torch.Tensor

    @property
    def x_test(self):
        return self.x_train[:1]

    @property
    def y_test(self):
        return self.y_train[:1]


@dataclass
class _Stream:
    tasks: list
    input_shape: tuple


# ---------------------------------------------------------------------------------------------- driver
def run_avalanche_tensor(case: Case, stream, seed: int, **kwargs) -> dict:
    """Avalanche on its fastest input path (tensors, no PIL; see avalanche_benchmark)."""
    return run_avalanche(case, stream, seed, pipeline="tensor", **kwargs)


def run_bare_end_of_task(case: Case, stream, seed: int, device: str = "cpu") -> dict:
    """The bare loop with Avalanche's ER schedule (buffer updated at task ends; see run_bare; CPU only)."""
    return run_bare(case, stream, seed, end_of_task=True)


RUNNERS = {"clzoo": run_clzoo, "avalanche": run_avalanche, "avalanche-tensor": run_avalanche_tensor, "bare": run_bare,
           "bare-avalanche-schedule": run_bare_end_of_task}


def warm_up(device: str = "cpu") -> None:
    """One tiny run of each system first, so lazy imports (torch._dynamo on the first optimizer, Avalanche,
    Hydra, TensorBoard) and the GPU's start-up are not charged to whichever system happens to run first."""
    tiny = build_stream(source=load_source("digits"), n_tasks=2, train_per_task=20, test_per_task=10)
    for method in ("finetune", "er"):
        small = Case("warm-up", data="digits", method=method, model=MLP, lr=0.1, buffer=20, minibatch=4)
        for name in RUNNERS:
            RUNNERS[name](small, tiny, 0, device=device)


def synchronize(device: str) -> None:
    """Wait for the device's queued work before a clock is read (nothing to wait for on a CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def agree(a: list[float], b: list[float]) -> tuple[float, float, bool]:
    """Difference of means, its standard error, and whether |diff| <= 2 SE + 0.5 point (agreement within noise)."""
    sa = statistics.stdev(a) if len(a) > 1 else 0.0
    sb = statistics.stdev(b) if len(b) > 1 else 0.0
    se = math.sqrt(sa**2 / len(a) + sb**2 / len(b))
    diff = statistics.mean(a) - statistics.mean(b)
    return diff, se, abs(diff) <= 2 * se + 0.005


def run_case(case: Case, stream, seeds: list[int], log, acc_seeds: list[int] = (), device: str = "cpu") -> dict:
    """Every system once per seed, interleaved (the first system rotates from seed to seed); then, for the
    accuracy comparison only (untimed), clzoo and Avalanche on tensors (and the case's extra systems) on
    ``acc_seeds``."""
    timed = list(SYSTEMS)
    extra = list(case.accuracy_systems)
    runs = {s: [] for s in timed + extra}
    passes = [(seed, timed[k % len(timed):] + timed[:k % len(timed)] + extra) for k, seed in enumerate(seeds)]
    passes += [(seed, ["clzoo", "avalanche-tensor"] + extra) for seed in acc_seeds]
    for seed, names in passes:
        for name in names:
            r = RUNNERS[name](case, stream, seed, device=device)
            runs[name].append(r)
            log(f"  {case.name:20s} seed {seed} {name:23s} wall {r['time']:8.2f} s  cpu {r['cpu']:8.2f} s  "
                f"acc {100 * r['acc']:6.2f}%")
    out = {"case": case, "seeds": seeds, "acc_seeds": list(acc_seeds), "systems": timed, "extra": extra}
    for name in timed + extra:
        accs = [r["acc"] for r in runs[name]]
        times = runs[name][:len(seeds)]  # the timed passes come first
        out[name] = {"wall": [r["time"] for r in times], "cpu": [r["cpu"] for r in times], "accs": accs,
                     "acc_mean": statistics.mean(accs), "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0}
        for kind in ("wall", "cpu"):
            out[name][f"{kind}_min"] = min(out[name][kind])
            out[name][f"{kind}_med"] = statistics.median(out[name][kind])
    for kind in ("wall", "cpu"):
        best = {name: out[name][f"{kind}_min"] for name in timed}
        out[f"speedup_{kind}"] = best["avalanche"] / best["clzoo"]
        out[f"speedup_tensor_{kind}"] = best["avalanche-tensor"] / best["clzoo"]
        out[f"overhead_{kind}"] = best["clzoo"] / best["bare"]
        # what a loop with no overhead at all (the bare loop) gains over Avalanche: the most any system can
        out[f"ceiling_{kind}"] = best["avalanche"] / best["bare"]
        out[f"ceiling_tensor_{kind}"] = best["avalanche-tensor"] / best["bare"]
    out["agreement"] = agree(out["clzoo"]["accs"], out["avalanche-tensor"]["accs"])
    return out


def check_same_computation(verbose: bool = True) -> dict:
    """On a tiny digits stream: clzoo and the bare loop give bit-identical weights and accuracies (fine-tuning,
    ER and DER), and Avalanche's Naive, fed clzoo's batch order, gives the same accuracies and weights."""
    import numpy as np

    from clzoo.engine.checkpoint import latest_checkpoint, load_checkpoint

    stream = build_stream(source=load_source("digits"), n_tasks=5, train_per_task=40, test_per_task=30)
    report = {}
    for method in ("finetune", "er", "der"):
        case = Case(f"check/{method}", data="digits", method=method, model=MLP, lr=0.05, buffer=40, minibatch=8,
                    alpha=0.5)
        with tempfile.TemporaryDirectory() as tmp:
            c = run_clzoo(case, stream, 0, keep_dir=Path(tmp))
            state = load_checkpoint(latest_checkpoint(tmp))["method"]
        c_weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        b = run_bare(case, stream, 0, return_model=True)
        b_weights = b["model"].state_dict()
        same = all(torch.equal(c_weights[k], b_weights[k]) for k in b_weights)
        report[f"{method}: clzoo == bare weights"] = same
        report[f"{method}: clzoo == bare accuracies"] = np.allclose(c["per_task"], b["per_task"], atol=0)
        if method == "finetune":
            a = run_avalanche_tensor(case, stream, 0, return_model=True)
            a_weights = a["model"].state_dict()
            diff = max((a_weights[k] - b_weights[k]).abs().max().item() for k in b_weights)
            report["finetune: avalanche max |w - w_clzoo|"] = diff
            report["finetune: avalanche == clzoo accuracies"] = np.allclose(a["per_task"], c["per_task"], atol=1e-9)
    if verbose:
        for k, v in report.items():
            print(f"  {k}: {v}")
    return report


TARGETS = {"er": 3.0, "der": 3.0, "images": 5.0}  # issue 5: speedup over Avalanche per case kind
OVERHEAD_TARGET = 1.3


def target_for(case: Case, suite: str = "default") -> float:
    if suite == "gpu":
        return gpu_module().SPEEDUP_TARGET
    return TARGETS["images"] if case.data == "images" else TARGETS.get(case.method, 1.0)


def overhead_target(suite: str = "default") -> float:
    if suite == "gpu":
        return gpu_module().OVERHEAD_TARGET
    return OVERHEAD_TARGET


def write_results(path: Path, results: list[dict], args, env: dict, summary: str) -> None:
    def pct(r, s):
        return f"{100 * r[s]['acc_mean']:.2f} ± {100 * r[s]['acc_sd']:.2f} (n={len(r[s]['accs'])})"

    def t(r, s, kind="wall"):
        return f"{r[s][kind + '_min']:.2f} ({r[s][kind + '_med']:.2f})"

    lines = ["# Speed benchmark: clzoo vs Avalanche vs a bare PyTorch loop", "",
             f"Generated by `{' '.join(['python bench/run.py'] + args.argv)}` on {env['when']} "
             f"({env['elapsed'] / 60:.0f} min in all).", ""]
    if args.quick:
        lines += ["**Quick mode: reduced streams, one seed: not the reference numbers.**", ""]
    suite, device = getattr(args, "suite", "default"), getattr(args, "device", "cpu")
    if device != "cpu":
        lines += [f"- Device: **{env.get('device', device)}** for every system (model, training batches, replay "
                  "buffer; Avalanche moves each batch there, its input pipeline runs on the CPU as its users run "
                  "it). Every timing waits for the device to finish (`torch.cuda.synchronize`).", ""]
    lines += [f"- Machine: {env['machine']}.", f"- Software: {env['software']}.", f"- Data: {env['data']}.",
              f"- Threads: `torch.set_num_threads({args.threads})` for every system; Avalanche's DataLoaders use "
              "no worker processes (its default).",
              f"- Repeats: timed seeds {args.seeds}; for each seed the systems run one after the other in one "
              "process, the first system rotating from seed to seed. Each time below is the **minimum over the "
              "timed seeds** (median in brackets). *wall* is `time.perf_counter`, *cpu* is `time.process_time` "
              "(CPU time of the process, all threads). The machine may be shared with other jobs, which inflates "
              "both; the minimum is the best estimate of the undisturbed time and the ratios compare runs made "
              "minutes apart under the same load.",
              "- Timed, identically for all systems: model construction, the initial evaluation, training on "
              "every task and the evaluation of every task's test set after each task (clzoo: the whole "
              "`clzoo.engine.run` call, TensorBoard events and per-task checkpoints included). Not timed: "
              "reading data from disk, building the stream / the Avalanche benchmark from in-memory tensors, "
              "imports (one warm-up run of every system precedes the measurements).",
              "- Avalanche runs twice: **Avalanche** = as its users run it, every sample through the PIL + "
              "torchvision pipeline of its stock `SplitMNIST` / `SplitCIFAR10` benchmarks; **Avalanche (tensors)** "
              "= its fastest input path (MNIST as float tensors without per-sample transform; images as uint8 "
              "tensors with torchvision's tensor transforms per sample). Same strategy, model, initial weights and "
              "hyper-parameters.",
              "- *ceiling* = Avalanche / bare: the speedup over Avalanche of a loop with no overhead at all, i.e. "
              "the most any framework can reach on this work (Amdahl: the model's forward/backward is the same in "
              "every system).", "",
              "## Wall time", "",
              "| case | model | clzoo s | Avalanche s | Avalanche (tensors) s | bare s | **speedup vs Avalanche** "
              "(ceiling) | speedup vs Avalanche (tensors) (ceiling) | **clzoo / bare** |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["case"]
        lines.append(f"| {c.name} | {c.model_name} | {t(r, 'clzoo')} | {t(r, 'avalanche')} | "
                     f"{t(r, 'avalanche-tensor')} | {t(r, 'bare')} | **{r['speedup_wall']:.2f}x** "
                     f"({r['ceiling_wall']:.2f}x) | {r['speedup_tensor_wall']:.2f}x ({r['ceiling_tensor_wall']:.2f}x) | "
                     f"**{r['overhead_wall']:.2f}x** |")
    lines += ["", "## CPU time", "",
              "| case | clzoo s | Avalanche s | Avalanche (tensors) s | bare s | speedup vs Avalanche (ceiling) | "
              "vs Avalanche (tensors) (ceiling) | clzoo / bare |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['case'].name} | {t(r, 'clzoo', 'cpu')} | {t(r, 'avalanche', 'cpu')} | "
                     f"{t(r, 'avalanche-tensor', 'cpu')} | {t(r, 'bare', 'cpu')} | {r['speedup_cpu']:.2f}x "
                     f"({r['ceiling_cpu']:.2f}x) | {r['speedup_tensor_cpu']:.2f}x ({r['ceiling_tensor_cpu']:.2f}x) | "
                     f"{r['overhead_cpu']:.2f}x |")
    lines += ["", "## Targets (issue 18, GPU)" if suite == "gpu" else "## Targets (issue 5)", "",
              "| case | target vs Avalanche | measured (wall) | ceiling | met | clzoo / bare (target <= "
              f"{overhead_target(suite)}) | met |", "|---|---|---|---|---|---|---|"]
    for r in results:
        goal = target_for(r["case"], suite)
        hit = r["speedup_wall"] >= goal
        why = "" if hit else (" (ceiling below target)" if r["ceiling_wall"] < goal else "")
        lines.append(f"| {r['case'].name} | {goal:.0f}x | {r['speedup_wall']:.2f}x | {r['ceiling_wall']:.2f}x | "
                     f"{'yes' if hit else 'no' + why} | {r['overhead_wall']:.2f}x | "
                     f"{'yes' if r['overhead_wall'] <= overhead_target(suite) else 'no'} |")
    pipelines = getattr(args, "pipelines", {})
    if pipelines:
        lines += ["", "## The input pipeline alone (augmented images)", "",
                  "Seconds per 1,000 training images to go from stored uint8 images to augmented, normalised network "
                  "input, with no model (minimum of 3 passes; Avalanche: its DataLoader over the task's dataset, "
                  "which its training loop iterates; clzoo: its batched on-device `BatchTransform`). On this CPU "
                  "the ResNet's forward/backward dominates a step, so these differences hardly show in the wall "
                  "times above; on an accelerator, where the model's share shrinks, they are what remains.", "",
                  "| case | clzoo | Avalanche | Avalanche (tensors) | bare | Avalanche / clzoo | "
                  "Avalanche (tensors) / clzoo |", "|---|---|---|---|---|---|---|"]
        for name, p in pipelines.items():
            lines.append(f"| {name} | {p['clzoo']:.3f} | {p['avalanche']:.3f} | {p['avalanche-tensor']:.3f} | "
                         f"{p['bare']:.3f} | **{p['avalanche'] / p['clzoo']:.1f}x** | "
                         f"{p['avalanche-tensor'] / p['clzoo']:.1f}x |")
    acc_seeds = results[0]["acc_seeds"] if results else []
    lines += ["", "## Final accuracy", "",
              f"Final average accuracy (class-IL, mean over the tasks after the last one), mean ± standard deviation "
              f"over seeds {args.seeds + acc_seeds} for clzoo and Avalanche (tensors) (the seeds after the timed "
              f"ones are untimed accuracy-only runs), over the timed seeds for the others; same hyper-parameters in "
              f"every system. *agree*: |clzoo - Avalanche (tensors)| <= 2 standard errors + 0.5 point.", "",
              "| case | clzoo % | Avalanche (tensors) % | Avalanche % | bare % | clzoo - Avalanche (tensors) (2 SE) "
              "| other |", "|---|---|---|---|---|---|---|"]
    for r in results:
        diff, se, ok = r["agreement"]
        other = "; ".join(f"{s}: {pct(r, s)}" for s in r["extra"]) or ""
        lines.append(f"| {r['case'].name} | {pct(r, 'clzoo')} | {pct(r, 'avalanche-tensor')} | {pct(r, 'avalanche')} "
                     f"| {pct(r, 'bare')} | {100 * diff:+.2f} ({200 * se:.2f}) {'agree' if ok else 'DIFFER'} | {other} |")
    lines += ["", "`bare-avalanche-schedule` is the bare loop with Avalanche's ER schedule (buffer updated only at the "
              "end of each task: no replay during the first task, task t replays tasks < t). Differences between "
              "clzoo's and Avalanche's ER / DER are listed in bench/README.md.",
              "", "## Every run", "", "Wall s / CPU s / final accuracy %, in seed order (accuracy-only runs last):", ""]
    for r in results:
        c = r["case"]
        lines.append(f"- `{c.name}`: {c.method}, {c.model_name}, SGD lr {c.lr}, batch {c.batch_size}, "
                     f"epochs {c.epochs}" + (f", buffer {c.buffer}, replay minibatch {c.minibatch}"
                                              if c.method != "finetune" else "")
                     + (f", alpha {c.alpha}" if c.method == "der" else "")
                     + (", random crop (padding 4) + horizontal flip" if c.augment else "")
                     + f"; train / test images per task: {c.train_per_task or 'all'} / {c.test_per_task or 'all'}")
        for s in r["systems"] + r["extra"]:
            timed = [f"{w:.2f} / {u:.2f} / {100 * a:.2f}" for w, u, a in zip(r[s]["wall"], r[s]["cpu"], r[s]["accs"])]
            untimed = [f"{100 * a:.2f}" for a in r[s]["accs"][len(r[s]["wall"]):]]
            if s in r["extra"]:
                timed, untimed = [], [f"{100 * a:.2f}" for a in r[s]["accs"]]
            parts = (["; ".join(timed)] if timed else []) + (["accuracy only: " + ", ".join(untimed)] if untimed else [])
            lines.append(f"  - {s}: " + " | ".join(parts))
    lines += ["", "```", summary, "```", ""]
    path.write_text("\n".join(lines) + kept_sections(path))


#: sections of RESULTS.md that other benchmarks write (bench/throughput.py): kept when this table is rewritten
KEPT_HEADINGS = ("## Leaderboard throughput",)


def kept_sections(path: Path) -> str:
    """The part of the existing file from the first heading in :data:`KEPT_HEADINGS` on ("" when none)."""
    old = path.read_text() if path.is_file() else ""
    starts = [i for h in KEPT_HEADINGS if (i := old.find("\n" + h)) >= 0]
    return old[min(starts):] if starts else ""


def environment(sources: dict, started: float, device: str = "cpu") -> dict:
    import avalanche

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} at the end (the benchmark itself is about 1)"
    gpu = {}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = {"device": f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
                         f"cuDNN {torch.backends.cudnn.version()}"}
    return {**gpu, "when": time.strftime("%Y-%m-%d %H:%M"), "elapsed": time.perf_counter() - started,
            "machine": f"{cpu}, {os.cpu_count()} logical CPUs{load}, {platform.system()}",
            "software": f"python {platform.python_version()}, torch {torch.__version__}, "
                        f"avalanche-lib {avalanche.__version__}",
            "data": "; ".join(f"{k}: {v.name} ({len(v.y_train)} train / {len(v.y_test)} test images, "
                              f"{'x'.join(map(str, v.input_shape))} uint8)" for k, v in sources.items())}


def device_problem(device: str) -> str | None:
    """One line saying why ``--device`` cannot be used here (None: it can)."""
    if device == "cpu":
        return None
    if not device.startswith("cuda") or (":" in device and not device.split(":", 1)[1].isdigit()):
        return f"--device {device} is not a device: use cpu, cuda or cuda:N"
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "torch finds no usable NVIDIA GPU"
        return (f"--device {device} but {why}; run the GPU table on a machine with one (bench/gpu.sh), or check "
                f"the code path here with --device cpu --quick")
    if ":" in device and int(device.split(":", 1)[1]) >= torch.cuda.device_count():
        return f"--device {device} but only {torch.cuda.device_count()} CUDA device(s) are visible"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced streams and one seed (well under a minute)")
    p.add_argument("--check-only", action="store_true", help="only check that the systems compute the same thing")
    p.add_argument("--data-root", default=None, help="datasets root (default: $CLZOO_DATA, else ~/.cache/clzoo/data)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="timed seeds = repeats (default 0 1 2; quick: 0)")
    p.add_argument("--acc-seeds", type=int, nargs="*", default=None,
                   help="extra untimed seeds for the accuracy comparison (default 3 4 5; quick: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every system (default 1)")
    p.add_argument("--cases", nargs="+", default=None, help="run only the cases whose name contains one of these")
    p.add_argument("--out", default=None, help="results file (default bench/RESULTS.md; quick: bench/out/QUICK.md)")
    p.add_argument("--suite", choices=("default", "gpu"), default="default",
                   help="default: the CPU cases; gpu: Seq-CIFAR-10 ER on ResNet-18 and Seq-MNIST ER (bench/gpu.py)")
    p.add_argument("--device", default="cpu", help="where every system runs: cpu (default), cuda or cuda:N")
    args = p.parse_args(argv)
    problem = device_problem(args.device)
    if problem:
        print(f"bench/run.py: error: {problem}", file=sys.stderr)
        return 2
    try:
        import avalanche  # noqa: F401
    except ImportError:
        print("bench/run.py: error: Avalanche is not installed; it is an optional dependency of clzoo: "
              "pip install -e '.[bench]'", file=sys.stderr)
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    if args.check_only:
        report = check_same_computation()
        ok = all(v is True or (isinstance(v, float) and v < 1e-6) for v in report.values())
        print("check " + ("ok" if ok else "FAILED"))
        return 0 if ok else 1

    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    if args.acc_seeds is None:
        args.acc_seeds = [] if args.quick else [3, 4, 5]
    root = find_root(args.data_root)
    sources = {"mnist": load_mnist(root), "images": load_images(root)}
    if args.suite == "gpu":
        cases = gpu_cases(args.quick)
    else:
        cases = quick_cases() if args.quick else full_cases()
    if args.cases:
        cases = [c for c in cases if any(sel in c.name for sel in args.cases)]
    streams = {c.name: make_stream(c, sources) for c in cases}
    log(f"data: mnist={sources['mnist'].name}, images={sources['images'].name}; threads={args.threads}; "
        f"seeds={args.seeds}; device={args.device}")
    warm_up(args.device)

    results = []
    for case in cases:
        r = run_case(case, streams[case.name], args.seeds, log, args.acc_seeds, args.device)
        results.append(r)
        diff, se, ok = r["agreement"]
        log(f"{case.name:20s} wall: clzoo {r['clzoo']['wall_min']:.2f} s, avalanche {r['avalanche']['wall_min']:.2f} s "
            f"(tensors {r['avalanche-tensor']['wall_min']:.2f} s), bare {r['bare']['wall_min']:.2f} s -> speedup vs "
            f"avalanche {r['speedup_wall']:.2f}x (ceiling {r['ceiling_wall']:.2f}x; tensors {r['speedup_tensor_wall']:.2f}x, "
            f"ceiling {r['ceiling_tensor_wall']:.2f}x), clzoo/bare {r['overhead_wall']:.2f}x (cpu {r['overhead_cpu']:.2f}x); "
            f"acc clzoo {100 * r['clzoo']['acc_mean']:.2f} avalanche-tensor {100 * r['avalanche-tensor']['acc_mean']:.2f} "
            f"bare {100 * r['bare']['acc_mean']:.2f} ({'agree' if ok else 'DIFFER'}: {100 * diff:+.2f} +- {200 * se:.2f})")

    pipelines = {}
    for case in cases:
        if case.augment and args.device == "cpu":  # the CPU input paths alone (not what a GPU run is about)
            pipelines[case.name] = time_input_pipelines(case, streams[case.name], 1000 if args.quick else 5000)
            log(f"{case.name:20s} input pipeline alone, s per 1000 images: "
                + ", ".join(f"{k} {v:.3f}" for k, v in pipelines[case.name].items()))
    args.pipelines = pipelines
    print(f"speedup_vs_avalanche_tensors_min={min(r['speedup_tensor_wall'] for r in results):.2f} "
          f"ceiling_vs_avalanche_min={min(r['ceiling_wall'] for r in results):.2f}", flush=True)
    summary = (f"speedup_vs_avalanche_min={min(r['speedup_wall'] for r in results):.2f} "
               f"overhead_vs_bare_max={max(r['overhead_wall'] for r in results):.2f}")
    default_out = "RESULTS_gpu.md" if args.suite == "gpu" else "RESULTS.md"
    out = Path(args.out) if args.out else (HERE / "out" / "QUICK.md" if args.quick else HERE / default_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results(out, results, args, environment(sources, started, args.device), summary)
    log(f"wrote {out}")
    print(summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
