"""Avalanche benchmarks as clzoo streams: ``clzoo-run stream=avalanche stream.benchmark=SplitMNIST
stream.args='{n_experiences: 5}'``.

The benchmark is built once (``stream.benchmark``: a factory of ``avalanche.benchmarks.classic`` such as
``SplitMNIST``, ``SplitCIFAR100``, ``CORe50``, or a dotted path ``package.module.function`` returning a
benchmark; ``stream.args``: its keyword arguments) and converted to clzoo's uint8 tensors, one task per
training experience, keeping the benchmark's structure: the classes of each experience (remapped in order of
first appearance, ``class_order`` keeps the original labels), its task labels (a benchmark with several task
labels is a ``task_il`` stream), and experiences that repeat classes (new instances: a ``domain_il`` stream).
The converted tensors are cached under ``<data.root>/.clzoo-cache/`` with a checksum, so later runs do not
import Avalanche's data pipeline again. Inputs must come out of the benchmark as uint8 or as [0, 1] floats:
clzoo passes :class:`AsTensor` as ``train_transform`` / ``eval_transform`` to factories that accept them
(Avalanche's defaults normalise), unless ``stream.args`` sets them.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from pathlib import Path

import torch
from torch import Tensor

from ..data.disk_store import is_stored, take
from ..data.scenarios import Stream, StreamError, Task, _subsample
from ..data.sources import check_store

CACHE_VERSION = 1


def resolve_factory(benchmark: str):
    """``SplitMNIST`` -> ``avalanche.benchmarks.classic.SplitMNIST``; ``pkg.mod.fn`` -> that function."""
    if not benchmark or not isinstance(benchmark, str):
        raise StreamError("stream=avalanche needs stream.benchmark: an Avalanche benchmark such as SplitMNIST, or "
                          "a dotted path package.module.function returning one")
    if "." in benchmark:
        module, _, attr = benchmark.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise StreamError(f"stream.benchmark={benchmark}: cannot import it ({err})") from err
    try:
        classic = importlib.import_module("avalanche.benchmarks.classic")
    except ImportError as err:
        raise StreamError("stream=avalanche needs avalanche-lib: pip install 'clzoo[avalanche]'") from err
    if not hasattr(classic, benchmark):
        names = sorted(n for n in dir(classic) if n[:1].isupper() and callable(getattr(classic, n)))
        raise StreamError(f"stream.benchmark={benchmark}: not an Avalanche classic benchmark; choose one of "
                          f"{', '.join(names)}, or give a dotted path package.module.function")
    return getattr(classic, benchmark)


class AsTensor:
    """The transform clzoo gives Avalanche factories: PIL images and arrays to [0, 1] tensors (``ToTensor``),
    tensors unchanged (Avalanche's MNIST already yields [0, 1] float tensors); no normalisation."""

    def __call__(self, pic):
        if isinstance(pic, Tensor):
            return pic
        from torchvision.transforms.functional import to_tensor

        return to_tensor(pic)

    def __repr__(self) -> str:
        return "AsTensor()"


def _to_uint8(x: Tensor, where: str) -> Tensor:
    if x.dtype == torch.uint8:
        return x
    if not torch.is_floating_point(x):
        raise StreamError(f"{where}: inputs of type {x.dtype}; clzoo stores uint8 images")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise StreamError(f"{where}: inputs span {lo:.2f}..{hi:.2f}, not [0, 1] (normalised by a transform?); "
                          "clzoo stores uint8 images and normalises itself (stream.augment.mean/std): give "
                          "train_transform / eval_transform that only convert to tensors (ToTensor)")
    return (x * 255).round_().to(torch.uint8)


def _batches(dataset, where: str):
    """``(uint8 images, labels, task labels)`` of an Avalanche dataset, 1,000 samples at a time."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=1000, shuffle=False, num_workers=0)
    for batch in loader:
        x, y = batch[0], batch[1]
        t = batch[2] if len(batch) > 2 else torch.zeros_like(y)
        if x.dim() == 3:  # (N, H, W): one channel
            x = x.unsqueeze(1)
        yield _to_uint8(x, where), y.long(), torch.as_tensor(t).long()


def _dataset_tensors(dataset, where: str) -> tuple[Tensor, Tensor, Tensor]:
    """(uint8 images, labels, task labels) of an Avalanche dataset, read in batches."""
    xs, ys, ts = [], [], []
    for x, y, t in _batches(dataset, where):
        xs.append(x)
        ys.append(y)
        ts.append(t)
    if not xs:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(xs), torch.cat(ys), torch.cat(ts)


def build_benchmark(benchmark: str, args: dict | None, root=None):
    factory = resolve_factory(benchmark)
    kwargs = dict(args or {})
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "dataset_root" in params and "dataset_root" not in kwargs and root is not None:
        kwargs["dataset_root"] = str(Path(root).expanduser())
    if "train_transform" in params or "eval_transform" in params:
        kwargs.setdefault("train_transform", AsTensor())
        kwargs.setdefault("eval_transform", AsTensor())
    try:
        return factory(**kwargs)
    except StreamError:
        raise
    except Exception as err:  # noqa: BLE001 - Avalanche raises many types; all mean "cannot build it here"
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StreamError(f"stream.benchmark={benchmark} with args {args or {}} cannot be built: {msg}") from err


def convert(bench, name: str = "avalanche") -> tuple[dict[str, Tensor], dict]:
    """The benchmark as tensors ``x_train_<i>`` ... (uint8, original labels) and its structure."""
    train_exps, test_exps = list(bench.train_stream), list(bench.test_stream)
    tensors, classes, task_labels = {}, [], []
    for i, exp in enumerate(train_exps):
        x, y, t = _dataset_tensors(exp.dataset, f"{name}: training experience {i}")
        tensors[f"x_train_{i}"], tensors[f"y_train_{i}"] = x, y
        classes.append(sorted(int(c) for c in exp.classes_in_this_experience))
        task_labels.append(int(t[0]) if len(t) else 0)
    for i, exp in enumerate(test_exps):
        x, y, _ = _dataset_tensors(exp.dataset, f"{name}: test experience {i}")
        tensors[f"x_test_{i}"], tensors[f"y_test_{i}"] = x, y
    names = getattr(bench, "classes_order_original_ids", None)
    return tensors, {"classes": classes, "task_labels": task_labels, "n_test": len(test_exps),
                     "label_names": None if names is None else [str(n) for n in names]}


def load_avalanche(benchmark: str, args: dict | None, root=None) -> tuple[dict[str, Tensor], dict, str]:
    """Converted tensors of the benchmark, from the cache under ``root`` when there (``root=None``: no cache)."""
    key = json.dumps({"benchmark": benchmark, "args": args or {}, "v": CACHE_VERSION}, sort_keys=True, default=str)
    if root is None:
        tensors, extra = convert(build_benchmark(benchmark, args, root), benchmark)
        from ..data.cache import content_digest

        return tensors, extra, content_digest(tensors, extra)
    from ..data import cache

    path = cache.cache_dir(Path(root).expanduser()) / f"avalanche-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    return cache.load_or_build(path, key, lambda: convert(build_benchmark(benchmark, args, root), benchmark))


def _store_writer(dataset, split: str, where: str, on_first_task_label=None):
    """A :func:`~clzoo.data.disk_store.build_store_from` writer streaming one experience into split ``split``."""
    from ..data.disk_store import write_split

    def write(folder):
        n = len(dataset)
        if n == 0:
            raise StreamError(f"{where} has no samples")
        first = dataset[0][0]
        shape = (n, *((1, *first.shape) if first.dim() == 2 else first.shape))

        def fill(x):
            labels, pos = [], 0
            for xb, yb, tb in _batches(dataset, where):
                x[pos:pos + len(yb)] = xb.numpy()
                if pos == 0 and on_first_task_label is not None:
                    on_first_task_label(int(tb[0]))
                labels.append(yb)
                pos += len(yb)
            return torch.cat(labels).numpy()

        return write_split(folder, split, shape, fill)

    return write


def load_avalanche_store(benchmark: str, args: dict | None, store_dir, verify: bool = False, bench=None, root=None):
    """The benchmark decoded once into a disk store under ``store_dir`` (:mod:`clzoo.data.disk_store`; one split
    per experience, the task structure in the manifest): ``(tensors, extra, digest)`` as :func:`load_avalanche`
    returns them, with the images as lazy :class:`~clzoo.data.disk_store.StoredImages` views, so a benchmark larger
    than memory trains in batches. The digest equals the in-memory path's for the same data."""
    from ..data.disk_store import DiskStore, build_store_from, is_complete

    key = json.dumps({"benchmark": benchmark, "args": args or {}, "v": CACHE_VERSION}, sort_keys=True, default=str)
    out = Path(store_dir).expanduser() / f"avalanche-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    options = {"avalanche": key}
    if not is_complete(out, options):
        bench = bench if bench is not None else build_benchmark(benchmark, args, root)
        train_exps, test_exps = list(bench.train_stream), list(bench.test_stream)
        names = getattr(bench, "classes_order_original_ids", None)
        extra = {"classes": [sorted(int(c) for c in e.classes_in_this_experience) for e in train_exps],
                 "task_labels": [0] * len(train_exps), "n_test": len(test_exps),
                 "label_names": None if names is None else [str(n) for n in names]}
        writers = {}
        for i, exp in enumerate(train_exps):
            def remember(label, i=i):
                extra["task_labels"][i] = label
            writers[f"train_{i}"] = _store_writer(exp.dataset, f"train_{i}", f"{benchmark}: training experience {i}",
                                                  remember)
        for i, exp in enumerate(test_exps):
            writers[f"test_{i}"] = _store_writer(exp.dataset, f"test_{i}", f"{benchmark}: test experience {i}")
        build_store_from(out, options, [], writers, extra)
    store = DiskStore(out, verify=verify)
    tensors = {}
    for split in store.manifest["splits"]:
        part = store.split(split)
        tensors[f"x_{split}"], tensors[f"y_{split}"] = part.images(), part.y
    return tensors, store.manifest["extra"], store.manifest["content_sha256"]


def _rows(x, index: Tensor):
    """``x[index]``: a view that stays on disk for a stored split, a contiguous tensor in memory."""
    return take(x, index) if is_stored(x) else x[index].contiguous()


def build_avalanche_stream(benchmark: str | None = None, args: dict | None = None, name: str | None = None,
                           root=None, train_per_task: int | None = None, test_per_task: int | None = None,
                           online: bool = False, class_order_seed: int | None = None, bench=None,
                           store: str = "memory", store_dir=None, store_verify: bool = False,
                           **_ignored) -> Stream:
    """A clzoo :class:`~clzoo.data.Stream` with one task per training experience of the benchmark (``bench``:
    an already built benchmark, e.g. in tests; else ``benchmark`` / ``args``). ``store="disk"``: decoded once into
    a disk store under ``store_dir`` (default ``<root>/.clzoo-store``) and read in batches, for benchmarks larger
    than memory."""
    check_store(store)
    if store == "disk":
        from ..data.disk_store import default_store_dir

        if store_dir is None and root is None:
            raise StreamError("data.store=disk needs a folder for the store: set data.root or data.store_dir")
        tensors, extra, digest = load_avalanche_store(benchmark or name or "avalanche", args,
                                                      store_dir or default_store_dir(root), store_verify, bench, root)
    elif bench is not None:
        tensors, extra = convert(bench, name or "avalanche")
        from ..data.cache import content_digest

        digest = content_digest(tensors, extra)
    else:
        tensors, extra, digest = load_avalanche(benchmark, args, root)
    exp_classes, n_test = extra["classes"], extra["n_test"]
    order: list[int] = []
    for cls in exp_classes:
        order += [c for c in cls if c not in order]
    n_classes = len(order)
    remap = torch.full((max(order) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(n_classes)
    repeated = sum(len(c) for c in exp_classes) > n_classes
    scenario = "domain_il" if repeated else ("task_il" if len(set(extra["task_labels"])) > 1 else "class_il")
    if n_test not in (len(exp_classes), 1):
        raise StreamError(f"stream.benchmark={benchmark}: {len(exp_classes)} training experiences but {n_test} test "
                          "experiences; clzoo pairs them one to one, or splits a single test experience by class")
    gen = torch.Generator().manual_seed(0 if class_order_seed is None else int(class_order_seed))
    tasks = []
    for i, cls in enumerate(exp_classes):
        xtr, ytr = tensors[f"x_train_{i}"], remap[tensors[f"y_train_{i}"]]
        j = i if n_test > 1 else 0
        xte, yte = tensors[f"x_test_{j}"], remap[tensors[f"y_test_{j}"]]
        task_cls = sorted(int(c) for c in remap[torch.tensor(cls)]) if not repeated else list(range(n_classes))
        if n_test == 1 and not repeated:  # the single test experience holds every class: this task's part
            keep = torch.isin(yte, torch.tensor(task_cls))
            xte, yte = take(xte, keep), yte[keep]
        itr, ite = _subsample(ytr, train_per_task, gen), _subsample(yte, test_per_task, gen)
        tasks.append(Task(i, task_cls, _rows(xtr, itr), ytr[itr], _rows(xte, ite), yte[ite]))
    for t in tasks:
        if not t.n_train or not len(t.y_test):
            raise StreamError(f"stream.benchmark={benchmark}: experience {t.id} has no training or test samples")
    names = extra.get("label_names")
    class_names = [str(c) for c in order]
    shape = tuple(tasks[0].x_train.shape[1:])
    return Stream(name=name or f"avalanche-{benchmark}", scenario=scenario, tasks=tasks, n_classes=n_classes,
                  input_shape=shape, class_order=order, class_names=class_names, online=online,
                  info={"dataset": f"avalanche:{benchmark}", "class_order_seed": class_order_seed,
                        "class_order_rng": None, "domain_transform": None, "data_fingerprint": digest,
                        "task_labels": extra["task_labels"], "label_names": names})
