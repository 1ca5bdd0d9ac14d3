"""Scenarios: cut a :class:`Source` into a :class:`Stream` of :class:`Task` objects.

* ``class_il``  - classes split into disjoint tasks; no task id at test time.
* ``task_il``   - the same split; the task id is given at test time.
* ``domain_il`` - every task holds all classes, each task under its own input transform
  (``permute``: a fixed pixel permutation; ``rotate``: a fixed rotation angle).

Labels are remapped so that the classes of task ``t`` are a contiguous block in class order; the original
dataset labels are kept in ``Stream.class_order``. Images stay uint8 throughout.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .disk_store import is_stored, take
from .sources import DataError, DatasetNotFoundError, Source, fingerprint, load_source

SCENARIOS = ("class_il", "task_il", "domain_il")


class StreamError(ValueError):
    """A stream definition that cannot be built (impossible split, unknown scenario, ...)."""


@dataclass
class Task:
    """One step of the stream: its classes (remapped labels) and its train / test data.

    This is the engine's object: the test data is for evaluation only. Methods are handed
    :meth:`training_view` (a :class:`TrainingTask`), which carries no test data.
    """

    id: int
    classes: list[int]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    def training_view(self, validation_fraction: float = 0.0, seed: int = 0) -> "TrainingTask":
        """What a method sees of this task: the training data, less a validation split of
        ``validation_fraction`` of every class (seeded by ``seed`` and the task id), and no test data."""
        fraction = float(validation_fraction or 0.0)
        if not 0.0 <= fraction < 1.0:
            raise StreamError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        empty = torch.zeros(0, dtype=torch.long)
        if fraction == 0.0:
            return TrainingTask(self.id, list(self.classes), self.x_train, self.y_train,
                                take(self.x_train, empty), self.y_train[empty])
        val = validation_split(self.y_train, fraction, seed * 1_000_003 + self.id)
        keep = torch.ones(len(self.y_train), dtype=torch.bool)
        keep[val] = False
        train = keep.nonzero().squeeze(1)
        return TrainingTask(self.id, list(self.classes), take(self.x_train, train), self.y_train[train],
                            take(self.x_train, val), self.y_train[val])


def validation_split(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of a seeded, class-stratified ``fraction`` of ``labels``: ``round(fraction * n_c)`` samples
    of every class c (at least one when the class has two or more samples, never all of them)."""
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(labels), generator=gen)
    labels = labels.cpu()
    picked = []
    for c in labels.unique().tolist():
        members = perm[labels[perm] == c]
        n = len(members)
        k = min(max(int(round(fraction * n)), 1 if n >= 2 else 0), n - 1)
        picked.append(members[:k])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class TrainingTask:
    """The task as a method sees it while training (``begin_task``, ``training_data``, ``end_task``).

    ``x_train`` / ``y_train``: the data the engine trains on (the task's training data less the validation
    split); ``x_val`` / ``y_val``: the validation split the method asked for with ``validation_fraction``
    (empty otherwise), carved from the same training data and never fed to ``observe`` by the engine. There is
    no test data: it is the engine's, for evaluation only.
    """

    id: int
    classes: list[int]
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_val(self) -> int:
        return len(self.y_val)

    def __getattr__(self, name):
        if name in ("x_test", "y_test"):
            raise AttributeError(f"task.{name}: methods do not see test data (the engine keeps it for evaluation); "
                                 f"ask for a validation split with validation_fraction and use task.x_val / task.y_val")
        raise AttributeError(f"'TrainingTask' object has no attribute '{name}'")


@dataclass
class Stream:
    """A sequence of tasks plus what a method needs to know about it up front."""

    name: str
    scenario: str
    tasks: list[Task]
    n_classes: int
    input_shape: tuple[int, ...]
    class_order: list[int]
    class_names: list[str]
    online: bool = False
    info: dict = field(default_factory=dict)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def classes_seen(self, task_id: int) -> int:
        """Number of (remapped) classes seen after training task ``task_id``."""
        return max(c for t in self.tasks[: task_id + 1] for c in t.classes) + 1

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def copy(self) -> "Stream":
        """A copy another run can own: its own tasks, lists and info (a run may re-split its tasks, e.g.
        ``trainer.validation_fraction``), sharing the image tensors, which nothing writes to."""
        return replace(self, tasks=[replace(t, classes=list(t.classes)) for t in self.tasks],
                       class_order=list(self.class_order), class_names=list(self.class_names),
                       info=copy.deepcopy(self.info))


def _task_class_counts(n_classes: int, n_tasks: int | None, classes_per_task: int | None,
                       first_task_classes: int | None) -> list[int]:
    first = first_task_classes or 0
    rest = n_classes - first
    if rest < 0:
        raise StreamError(f"first_task_classes={first} exceeds the dataset's {n_classes} classes")
    if classes_per_task is None:
        if n_tasks is None:
            raise StreamError("set stream.n_tasks or stream.classes_per_task")
        splits = n_tasks - (1 if first else 0)
        if splits <= 0 or rest % splits:
            valid = [d for d in range(1, n_classes + 1) if n_classes % d == 0] if not first else []
            hint = f"choose n_tasks in {valid}" if valid else "change n_tasks or first_task_classes"
            raise StreamError(
                f"cannot split {rest} classes into {splits} equal tasks (n_tasks={n_tasks}, "
                f"first_task_classes={first_task_classes}); {hint}, or set classes_per_task")
        classes_per_task = rest // splits
    if classes_per_task <= 0 or rest % classes_per_task:
        raise StreamError(f"cannot split {rest} classes into tasks of {classes_per_task} classes; "
                          f"classes_per_task must divide {rest}")
    counts = ([first] if first else []) + [classes_per_task] * (rest // classes_per_task)
    if n_tasks is not None and len(counts) != n_tasks:
        raise StreamError(f"n_tasks={n_tasks} disagrees with classes_per_task={classes_per_task} "
                          f"({len(counts)} tasks from {n_classes} classes); set only one of them, e.g. stream.n_tasks=null")
    return counts


def _subsample(y: Tensor, n: int | None, gen: torch.Generator) -> Tensor:
    """Indices of a seeded random subset of size ``n`` (all, in order, when n is None or too large)."""
    if n is None or n >= len(y):
        return torch.arange(len(y))
    return torch.randperm(len(y), generator=gen)[:n].sort().values


def shuffled_class_order(n_classes: int, seed: int, rng: str = "torch", gen: torch.Generator | None = None) -> list[int]:
    """A seeded class order. ``rng="numpy"`` reproduces the orders of PyCIL / PASS / MEMO
    (``np.random.seed(seed); np.random.permutation(n)``; their CIFAR-100 papers use seed 1993); ``"torch"`` draws
    from ``gen`` (clzoo's own order, seeded by ``stream.class_order_seed``)."""
    if rng == "numpy":
        import numpy as np

        return np.random.RandomState(seed).permutation(n_classes).tolist()
    if rng != "torch":
        raise StreamError(f"unknown stream.class_order_rng '{rng}'; choose torch or numpy")
    return torch.randperm(n_classes, generator=gen or torch.Generator().manual_seed(seed)).tolist()


def _rotate(x: Tensor, degrees: float) -> Tensor:
    from torchvision.transforms.functional import rotate

    return rotate(x, degrees)


def build_stream(
    dataset: str = "digits",
    scenario: str = "class_il",
    n_tasks: int | None = 5,
    classes_per_task: int | None = None,
    first_task_classes: int | None = None,
    class_order: list[int] | None = None,
    class_order_seed: int | None = None,
    class_order_rng: str = "torch",
    domain_transform: str | None = None,
    train_per_task: int | None = None,
    test_per_task: int | None = None,
    train_per_class: int | None = None,
    online: bool = False,
    name: str | None = None,
    root=None,
    download: bool = False,
    path=None,
    drop_empty_classes: bool = False,
    source: Source | None = None,
    image_size: int | None = None,
    store: str = "memory",
    store_dir=None,
    store_verify: bool = False,
    layout_help: str | None = None,
    **_ignored,
) -> Stream:
    """Build a stream. ``source`` may be given directly (tests); otherwise ``dataset`` is loaded from ``root``.

    ``class_order`` fixes the order of classes; ``class_order_seed`` shuffles it reproducibly (its own seed,
    independent of the training seed). ``train_per_task`` / ``test_per_task`` take a seeded subset per task;
    ``train_per_class`` a seeded subset of that many training samples of every class (class-IL / task-IL), which
    keeps classes balanced when tasks differ in size.

    ``store="disk"`` keeps the images on disk (:mod:`clzoo.data.disk_store`): the image folder is decoded once
    into a memory-mapped store under ``store_dir`` (``image_size``: resized to that square size), and the tasks
    hold lazy views of it that the engine reads in batches.
    """
    if dataset == "avalanche" and source is None:  # an Avalanche benchmark (stream=avalanche; imported only here)
        from ..interop.avalanche import build_avalanche_stream

        return build_avalanche_stream(name=name, root=root, train_per_task=train_per_task,
                                      test_per_task=test_per_task, online=online, class_order_seed=class_order_seed,
                                      store=store, store_dir=store_dir, store_verify=store_verify, **_ignored)
    if scenario not in SCENARIOS:
        raise StreamError(f"unknown scenario '{scenario}'; choose one of {', '.join(SCENARIOS)}")
    try:
        src = source or load_source(dataset, root, download, path, drop_empty_classes, store=store,
                                    store_dir=store_dir, image_size=image_size, store_verify=store_verify)
    except (DatasetNotFoundError, DataError) as err:  # missing, or laid out otherwise: say how to arrange it
        if not layout_help:
            raise
        raise type(err)(f"{err}. {layout_help}") from err
    gen = torch.Generator().manual_seed(0 if class_order_seed is None else int(class_order_seed))
    n_classes = src.n_classes
    for split, y in (("train", src.y_train), ("test", src.y_test)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise StreamError(f"dataset '{src.name}': {split} labels span {int(y.min())}..{int(y.max())}, outside "
                              f"the class range 0..{n_classes - 1} of its {n_classes} class names")

    if scenario == "domain_il":
        if is_stored(src.x_train):
            raise StreamError("scenario=domain_il transforms every image up front, which a disk store cannot do; "
                              "use data.store=memory for permuted / rotated streams")
        if domain_transform not in ("permute", "rotate"):
            raise StreamError("scenario=domain_il needs stream.domain_transform=permute or rotate")
        if not n_tasks or n_tasks < 1:
            raise StreamError("scenario=domain_il needs stream.n_tasks >= 1")
        tasks = []
        n_pixels = src.x_train[0].numel()
        for t in range(n_tasks):
            idx_tr = _subsample(src.y_train, train_per_task, gen)
            idx_te = _subsample(src.y_test, test_per_task, gen)
            xtr, xte = src.x_train[idx_tr], src.x_test[idx_te]
            if domain_transform == "permute":
                perm = torch.randperm(n_pixels, generator=gen)
                xtr = xtr.flatten(1)[:, perm].view_as(xtr)
                xte = xte.flatten(1)[:, perm].view_as(xte)
            else:
                angle = float(torch.rand((), generator=gen)) * 180.0
                xtr, xte = _rotate(xtr, angle), _rotate(xte, angle)
            tasks.append(Task(t, list(range(n_classes)), xtr.contiguous(), src.y_train[idx_tr],
                              xte.contiguous(), src.y_test[idx_te]))
        order = list(range(n_classes))
    else:
        if class_order is not None:
            order = [int(c) for c in class_order]
            if sorted(order) != list(range(n_classes)):
                raise StreamError(f"class_order must be a permutation of 0..{n_classes - 1}; got {order}")
        elif class_order_seed is not None:
            order = shuffled_class_order(n_classes, int(class_order_seed), class_order_rng, gen)
        else:
            order = list(range(n_classes))
        counts = _task_class_counts(n_classes, n_tasks, classes_per_task, first_task_classes)
        remap = torch.empty(n_classes, dtype=torch.long)
        remap[torch.tensor(order)] = torch.arange(n_classes)
        ytr_all, yte_all = remap[src.y_train], remap[src.y_test]
        tasks, start = [], 0
        for t, count in enumerate(counts):
            cls = list(range(start, start + count))
            start += count
            in_tr = ((ytr_all >= cls[0]) & (ytr_all <= cls[-1])).nonzero().squeeze(1)
            in_te = ((yte_all >= cls[0]) & (yte_all <= cls[-1])).nonzero().squeeze(1)
            if train_per_class is not None:
                in_tr = torch.cat([in_tr[ytr_all[in_tr] == c][_subsample(in_tr[ytr_all[in_tr] == c], train_per_class, gen)]
                                   for c in cls]).sort().values
            in_tr = in_tr[_subsample(in_tr, train_per_task, gen)]
            in_te = in_te[_subsample(in_te, test_per_task, gen)]
            tasks.append(Task(t, cls, take(src.x_train, in_tr), ytr_all[in_tr], take(src.x_test, in_te),
                              yte_all[in_te]))

    _check_tasks_have_data(tasks, src, order)
    return Stream(
        name=name or f"{src.name}-{scenario}-{len(tasks)}",
        scenario=scenario,
        tasks=tasks,
        n_classes=n_classes,
        input_shape=src.input_shape,
        class_order=order,
        class_names=[src.class_names[c] for c in order],
        online=online,
        info={"dataset": src.name, "class_order_seed": class_order_seed, "class_order_rng": class_order_rng,
              "domain_transform": domain_transform, "data_fingerprint": fingerprint(src)},
    )


def _check_tasks_have_data(tasks: list[Task], src: Source, order: list[int]) -> None:
    """A task without training or test samples would train on nothing or score 0 and drag the averages down."""
    for task in tasks:
        for split, y in (("training", task.y_train), ("test", task.y_test)):
            if len(y) == 0:
                names = ", ".join(src.class_names[order[c]] for c in task.classes[:5])
                more = ", ..." if len(task.classes) > 5 else ""
                raise StreamError(f"task {task.id} (classes {names}{more}) has no {split} samples in dataset "
                                  f"'{src.name}'; add {split} data for these classes, or check "
                                  f"stream.train_per_task / stream.test_per_task")
