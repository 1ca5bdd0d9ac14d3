"""Streams: class-IL / task-IL splits, domain-IL transforms, seeded subsets, uint8 storage, the digits source."""
from __future__ import annotations

import pytest
import torch

from clzoo.config import compose
from clzoo.data import Source, StreamError, build_stream, load_source
from clzoo.engine import build_stream_from_config
from conftest import real_data_root, skip_reason


def indexed_source(n_train: int = 300, n_test: int = 100, n_classes: int = 10, side: int = 8) -> Source:
    """A synthetic source whose every image carries its own index in its first two pixels (so a test can tell
    exactly which samples a task holds) and a class label that cycles through ``n_classes``."""

    def make(n: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(offset)
        x = torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=gen)
        idx = torch.arange(n)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = (idx % 256).to(torch.uint8), (idx // 256).to(torch.uint8)
        y = (idx * 7 + offset) % n_classes  # every class present, not in blocks
        return x, y.long()

    x_tr, y_tr = make(n_train, 0)
    x_te, y_te = make(n_test, 1)
    return Source("indexed", x_tr, y_tr, x_te, y_te, [f"c{i}" for i in range(n_classes)])


def sample_ids(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()


@pytest.fixture(scope="module")
def digits() -> Source:
    return load_source("digits")


# ---------------------------------------------------------------------------------------------- class-IL
@pytest.mark.parametrize("order_kw", [{}, {"class_order": [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]}, {"class_order_seed": 11}])
def test_class_il_split_invariants(order_kw):
    src = indexed_source()
    stream = build_stream(scenario="class_il", n_tasks=5, source=src, **order_kw)
    order = stream.class_order
    assert sorted(order) == list(range(10))
    assert stream.n_tasks == 5 and stream.n_classes == 10 and stream.input_shape == (1, 8, 8)

    seen_classes: list[int] = []
    for t, task in enumerate(stream.tasks):
        # labels remapped to a contiguous block per task, in task order
        assert task.id == t and task.classes == [2 * t, 2 * t + 1]
        seen_classes += task.classes
        for x, y, x_src, y_src in ((task.x_train, task.y_train, src.x_train, src.y_train),
                                   (task.x_test, task.y_test, src.x_test, src.y_test)):
            assert x.dtype == torch.uint8 and y.dtype == torch.int64
            ids = sample_ids(x)
            original = [order[c] for c in task.classes]
            expected = torch.isin(y_src, torch.tensor(original)).nonzero().squeeze(1)
            # every sample of the task's classes, each exactly once, and nothing else
            assert len(set(ids.tolist())) == len(ids)
            assert sorted(ids.tolist()) == expected.tolist()
            assert torch.equal(x, x_src[ids])
            # remapped label r stands for original class order[r]
            assert torch.equal(torch.tensor(order)[y], y_src[ids])
            assert set(y.tolist()) == set(task.classes)
    # disjoint tasks whose union is every class
    assert seen_classes == list(range(10))
    assert stream.classes_seen(0) == 2 and stream.classes_seen(4) == 10


def test_class_il_on_digits_keeps_every_sample(digits):
    stream = build_stream(dataset="digits", n_tasks=5, source=digits)
    assert sum(t.n_train for t in stream.tasks) == len(digits.y_train) == 1437
    assert sum(len(t.y_test) for t in stream.tasks) == len(digits.y_test) == 360
    for task in stream.tasks:
        mask = torch.isin(digits.y_train, torch.tensor(task.classes))  # natural order: remapped == original
        assert torch.equal(task.x_train, digits.x_train[mask]) and torch.equal(task.y_train, digits.y_train[mask])
        assert task.x_train.dtype == torch.uint8 and task.x_train.shape[1:] == (1, 8, 8)


def test_class_order_fixed_and_seeded_are_recorded_and_independent_of_training_seed():
    src = indexed_source()
    fixed = build_stream(n_tasks=5, source=src, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert fixed.class_order == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert fixed.class_names[:2] == ["c9", "c8"]
    natural = build_stream(n_tasks=5, source=src)
    assert natural.class_order == list(range(10)) and natural.info["class_order_seed"] is None

    torch.manual_seed(0)
    a = build_stream(n_tasks=5, source=src, class_order_seed=11)
    torch.manual_seed(12345)  # the global (training) RNG plays no part
    torch.rand(100)
    b = build_stream(n_tasks=5, source=src, class_order_seed=11)
    c = build_stream(n_tasks=5, source=src, class_order_seed=12)
    assert a.class_order == b.class_order and a.info["class_order_seed"] == 11
    assert a.class_order != list(range(10)) and a.class_order != c.class_order
    for ta, tb in zip(a.tasks, b.tasks):
        assert torch.equal(ta.x_train, tb.x_train) and torch.equal(ta.y_train, tb.y_train)

    # through the config: the training seed does not move the class order
    base = ["stream.class_order_seed=11"]
    s0 = build_stream_from_config(compose(base + ["seed=0"]))
    s1 = build_stream_from_config(compose(base + ["seed=1"]))
    assert s0.class_order == s1.class_order and s0.class_order != list(range(10))


def test_invalid_class_order_raises():
    with pytest.raises(StreamError, match="permutation of 0..9"):
        build_stream(n_tasks=5, source=indexed_source(), class_order=[0, 1, 2])


@pytest.mark.parametrize("kw, sizes", [
    ({"n_tasks": 5}, [2] * 5),
    ({"n_tasks": 2}, [5, 5]),
    ({"n_tasks": 10}, [1] * 10),
    ({"n_tasks": None, "classes_per_task": 2}, [2] * 5),
    ({"n_tasks": 5, "classes_per_task": 2}, [2] * 5),  # both, consistent
    ({"n_tasks": None, "first_task_classes": 4, "classes_per_task": 2}, [4, 2, 2, 2]),
    ({"n_tasks": 4, "first_task_classes": 4}, [4, 2, 2, 2]),
    ({"n_tasks": 2, "first_task_classes": 6}, [6, 4]),
])
def test_task_counts(kw, sizes):
    stream = build_stream(source=indexed_source(), **kw)
    assert [len(t.classes) for t in stream.tasks] == sizes
    assert [c for t in stream.tasks for c in t.classes] == list(range(10))


@pytest.mark.parametrize("kw, message", [
    ({"n_tasks": 3}, r"cannot split 10 classes into 3 equal tasks .*choose n_tasks in \[1, 2, 5, 10\]"),
    ({"n_tasks": 4}, r"cannot split 10 classes into 4 equal tasks"),
    ({"n_tasks": None, "classes_per_task": 3}, r"cannot split 10 classes into tasks of 3 classes"),
    ({"n_tasks": 3, "classes_per_task": 2}, r"n_tasks=3 disagrees with classes_per_task=2 .*n_tasks=null"),
    ({"n_tasks": 3, "first_task_classes": 5}, r"cannot split 5 classes into 2 equal tasks"),
    ({"n_tasks": 2, "first_task_classes": 11}, r"first_task_classes=11 exceeds the dataset's 10 classes"),
    ({"n_tasks": None}, r"set stream.n_tasks or stream.classes_per_task"),
    ({"scenario": "nope"}, r"unknown scenario 'nope'"),
    ({"scenario": "domain_il"}, r"domain_transform=permute or rotate"),
])
def test_impossible_splits_raise_stream_error(kw, message):
    with pytest.raises(StreamError, match=message):
        build_stream(source=indexed_source(), **{"n_tasks": 5, **kw})


def test_task_il_uses_the_same_split():
    src = indexed_source()
    cil = build_stream(scenario="class_il", n_tasks=5, source=src)
    til = build_stream(scenario="task_il", n_tasks=5, source=src)
    assert til.scenario == "task_il"
    for a, b in zip(cil.tasks, til.tasks):
        assert a.classes == b.classes and torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


# ------------------------------------------------------------------------------------------- subsets
def test_train_per_task_subsets_are_seeded_and_exact():
    src = indexed_source(n_train=600, n_test=200)
    kw = dict(n_tasks=5, train_per_task=20, test_per_task=7, source=src)
    torch.manual_seed(0)
    a = build_stream(**kw)
    torch.manual_seed(99)
    b = build_stream(**kw)
    c = build_stream(**kw, class_order_seed=3)
    for ta, tb in zip(a.tasks, b.tasks):
        assert ta.n_train == 20 and len(ta.y_test) == 7
        assert torch.equal(ta.x_train, tb.x_train) and torch.equal(ta.x_test, tb.x_test)
        ids = sample_ids(ta.x_train).tolist()
        assert len(set(ids)) == 20  # no sample twice
        assert all(int(src.y_train[i]) in ta.classes for i in ids)  # natural order: only the task's classes
        assert ta.x_train.dtype == torch.uint8
    assert any(not torch.equal(ta.x_train, tc.x_train) for ta, tc in zip(a.tasks, c.tasks))
    # more than there is: everything, in order
    full = build_stream(n_tasks=5, train_per_task=10_000, source=src)
    assert sum(t.n_train for t in full.tasks) == 600


# ------------------------------------------------------------------------------------------- domain-IL
def with_index_image(src: Source) -> tuple[Source, torch.Tensor]:
    """``src`` with an image whose pixels are 0..63 prepended to train and test: a permuted copy of it *is* the
    permutation. Test = train, so train and test transforms can be compared sample by sample."""
    probe = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    x = torch.cat([probe, src.x_train])
    y = torch.cat([torch.zeros(1, dtype=torch.long), src.y_train])
    return Source(src.name, x, y, x.clone(), y.clone(), src.class_names), x


def test_domain_il_permute_is_a_fixed_bijection_per_task(digits):
    src, x = with_index_image(digits)
    stream = build_stream(scenario="domain_il", domain_transform="permute", n_tasks=3, source=src)
    again = build_stream(scenario="domain_il", domain_transform="permute", n_tasks=3, source=src)
    perms = []
    for task, task2 in zip(stream.tasks, again.tasks):
        assert task.classes == list(range(10))
        assert task.x_train.dtype == torch.uint8 and task.x_train.shape == x.shape
        assert torch.equal(task.y_train, src.y_train) and torch.equal(task.y_test, src.y_test)  # labels unchanged
        perm = task.x_train[0].flatten().long()
        assert sorted(perm.tolist()) == list(range(64))  # a bijection of the pixels
        inverse = torch.argsort(perm)
        assert torch.equal(task.x_train.flatten(1)[:, inverse].view_as(x), x)  # undoing it gives the originals
        assert torch.equal(task.x_test, task.x_train)  # the same permutation on train and test
        assert torch.equal(task2.x_train, task.x_train)  # fixed: rebuilding gives the same permutation
        perms.append(perm)
    assert all(not torch.equal(perms[i], perms[j]) for i in range(3) for j in range(i + 1, 3))


def test_domain_il_rotate_is_a_fixed_different_rotation_per_task(digits):
    small = Source("digits", digits.x_train[:200], digits.y_train[:200], digits.x_test, digits.y_test,
                   digits.class_names)
    src, x = with_index_image(small)
    stream = build_stream(scenario="domain_il", domain_transform="rotate", n_tasks=3, source=src)
    again = build_stream(scenario="domain_il", domain_transform="rotate", n_tasks=3, source=src)
    for task, task2 in zip(stream.tasks, again.tasks):
        assert task.x_train.dtype == torch.uint8 and task.x_train.shape == x.shape
        assert torch.equal(task.y_train, src.y_train)
        assert torch.equal(task.x_test, task.x_train) and torch.equal(task2.x_train, task.x_train)
        assert not torch.equal(task.x_train, x)
    probes = [t.x_train[0] for t in stream.tasks]
    assert all(not torch.equal(probes[i], probes[j]) for i in range(3) for j in range(i + 1, 3))


def test_domain_il_subsets_and_stream_info(digits):
    stream = build_stream(scenario="domain_il", domain_transform="permute", n_tasks=4, train_per_task=50,
                          test_per_task=20, source=digits)
    assert stream.n_tasks == 4 and stream.classes_seen(0) == 10
    assert [t.n_train for t in stream.tasks] == [50] * 4 and [len(t.y_test) for t in stream.tasks] == [20] * 4


# ------------------------------------------------------------------------------------------- sources
def test_digits_split_is_stratified_and_fixed(tmp_path, digits):
    again = load_source("digits", tmp_path)  # decoded afresh (empty root), not from a cache
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test, digits.y_test)
    cached = load_source("digits", tmp_path)  # now from the cache written by the call above
    assert torch.equal(cached.x_test, digits.x_test) and cached.class_names == digits.class_names
    assert digits.x_train.dtype == torch.uint8 and digits.x_train.shape == (1437, 1, 8, 8)
    assert int(digits.x_train.max()) == 255 and int(digits.x_train.min()) == 0
    assert len(digits.y_train) + len(digits.y_test) == 1797
    n_train = torch.bincount(digits.y_train, minlength=10)
    n_test = torch.bincount(digits.y_test, minlength=10)
    fraction = n_test.float() / (n_train + n_test).float()
    assert torch.all((fraction - 0.2).abs() < 0.01), fraction  # stratified 80/20 in every class


def test_unknown_dataset_and_unwritable_cache(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_source("nope", tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    src = load_source("digits", blocker / "root")  # the cache cannot be written (even as root); data still loads
    assert len(src.y_train) == 1437 and src.x_train.dtype == torch.uint8


@pytest.mark.skipif(real_data_root("MNIST/raw") is None, reason=skip_reason("MNIST/raw"))
def test_split_mnist_on_real_data():
    cfg = compose(["stream=split_mnist", f"data.root={real_data_root('MNIST/raw')}"])
    stream = build_stream_from_config(cfg)
    assert stream.n_tasks == 5 and stream.input_shape == (1, 28, 28)
    assert sum(t.n_train for t in stream.tasks) == 60_000
    assert sum(len(t.y_test) for t in stream.tasks) == 10_000
    for t, task in enumerate(stream.tasks):
        assert task.classes == [2 * t, 2 * t + 1] and task.x_train.dtype == torch.uint8
        assert set(task.y_train.unique().tolist()) == {2 * t, 2 * t + 1}
