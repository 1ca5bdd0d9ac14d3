"""The disk-backed uint8 store: built once from an image folder, manifest and checksums, read by index in batches
with a background prefetch, and a store larger than the process's memory limit read with bounded memory."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from clzoo.data import DataError
from clzoo.data.disk_store import DiskStore, build_store


def make_folder(root, n_per_class=(7, 5, 6), size=8, seed=0, fmt="png"):
    """An image folder train/ and test/ of random RGB images; returns {split: (images N x C x H x W, labels)}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for c, n in enumerate(n_per_class):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i:05d}.{fmt}")
                xs.append(arr.transpose(2, 0, 1))
                ys.append(c)
        out[split] = (np.stack(xs), np.array(ys))
    return out


def test_store_round_trip_batches_and_checksums(tmp_path):
    truth = make_folder(tmp_path / "imgs")
    store_dir = build_store(tmp_path / "imgs", tmp_path / "store")
    store = DiskStore(store_dir)
    assert store.class_names == ["class0", "class1", "class2"]
    train = store.split("train")
    assert len(train) == 18 and train.shape == (3, 8, 8)
    x, y = train.get([17, 0, 5])
    assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(truth["train"][0][[17, 0, 5]]))
    assert y.tolist() == truth["train"][1][[17, 0, 5]].tolist()
    seen = []
    for xb, yb in train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(1), prefetch=2):
        assert len(xb) <= 4
        seen += [int(v) for v in xb.flatten(1).sum(1)]
    assert sorted(seen) == sorted(int(v) for v in truth["train"][0].reshape(18, -1).sum(1))
    # built once: a second build reuses the complete store
    mtime = (store_dir / "train_x.npy").stat().st_mtime_ns
    build_store(tmp_path / "imgs", tmp_path / "store")
    assert (store_dir / "train_x.npy").stat().st_mtime_ns == mtime
    # an altered byte is caught by the checksum; a store without manifest is incomplete
    with open(store_dir / "test_x.npy", "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(DataError, match="checksum mismatch"):
        DiskStore(store_dir)
    (store_dir / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest.json; the store is incomplete"):
        DiskStore(store_dir)


def test_mismatched_sizes_need_resize(tmp_path):
    from PIL import Image

    for name, s in (("a", 8), ("b", 9)):
        (tmp_path / "imgs" / "train" / "c").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((s, s, 3), np.uint8)).save(tmp_path / "imgs" / "train" / "c" / f"{name}.png")
    (tmp_path / "imgs" / "test" / "c").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "test" / "c" / "x.png")
    with pytest.raises(DataError, match="set stream.image_size=N"):
        build_store(tmp_path / "imgs", tmp_path / "s1", splits=("train",))
    store = DiskStore(build_store(tmp_path / "imgs", tmp_path / "s2", size=6))
    assert store.split("train").shape == (3, 6, 6) and len(store.split("test")) == 1


def write_bmp_folder(root, n_train: int, n_test: int, size: int, n_classes: int = 4) -> int:
    """A large image folder written fast: one BMP per class made by Pillow, copied with a few pixel bytes changed
    per file (uncompressed BMP: the pixels sit at a fixed offset). Returns the bytes of its decoded training images."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(n_classes):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="BMP")
        template = bytearray(buf.getvalue())
        offset = int.from_bytes(template[10:14], "little")
        for split, n in (("train", n_train), ("test", n_test)):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                template[offset:offset + 3] = bytes([i & 255, (i >> 8) & 255, c])
                (folder / f"{i:05d}.bmp").write_bytes(template)
    return n_classes * n_train * size * size * 3


def _limited_run(queue, store: str, root: str, headroom_mb: int) -> None:
    """In a forked child: limit the data segment (RLIMIT_DATA) to what the process uses now plus ``headroom_mb``,
    then run ER through the runner on the folder; report the accuracies or the error."""
    import resource

    import torch._dynamo  # noqa: F401 - imported now (as in any run), so the limit measures data, not modules

    from clzoo.config import compose
    from clzoo.engine.runner import run

    cfg = compose(["stream.dataset=imagefolder", f"stream.path={root}/imgs", "stream.n_tasks=2", "stream.name=big",
                   "model=mlp", "method=er", "trainer.epochs=1", "trainer.batch_size=32", "trainer.eval_batch_size=64",
                   "log.progress=false", "log.tensorboard=false", "log.plots=false", "budget.mb=1",
                   "+stream.train_per_class=64", f"data.store={store}", f"data.root={root}",
                   f"data.store_dir={root}/stores"])
    used_kb = int(next(line for line in open("/proc/self/status") if line.startswith("VmData")).split()[1])
    limit = (used_kb * 1024) + headroom_mb * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    try:
        results = run(cfg, f"{root}/run-{store}")
        queue.put(("ok", results["acc_matrix"], results["stream"]["train_sizes"]))
    except (MemoryError, RuntimeError) as err:  # RuntimeError: torch's allocator ("can't allocate memory")
        queue.put(("failed", f"{type(err).__name__}: {str(err)[:200]}", None))
    except BaseException as err:  # noqa: BLE001 - the data error the in-memory path turns a MemoryError into
        queue.put(("failed", f"{type(err).__name__}: {str(err)[:200]}", None))


def test_store_trains_on_a_folder_larger_than_the_memory_limit(tmp_path):
    """98 MB of images (8,000 RGB 64x64) and a run allowed 80 MB more data than it holds at start (RLIMIT_DATA, in
    a forked process): data.store=disk decodes the folder into its store and trains ER on it through the runner;
    the in-memory path (the default) fails under the same limit."""
    import multiprocessing

    if not hasattr(__import__("resource"), "RLIMIT_DATA") or sys.platform != "linux":
        pytest.skip("needs Linux's RLIMIT_DATA")
    decoded = write_bmp_folder(tmp_path / "imgs", n_train=2000, n_test=25, size=64)
    headroom = 80
    assert decoded > headroom * 2**20
    ctx = multiprocessing.get_context("fork")
    outcome = {}
    for store in ("disk", "memory"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_limited_run, args=(queue, store, str(tmp_path), headroom))
        proc.start()
        proc.join(120)
        outcome[store] = queue.get(timeout=5) if not proc.is_alive() and proc.exitcode == 0 else ("died", proc.exitcode, None)
        if proc.is_alive():
            proc.kill()
    status, acc, sizes = outcome["disk"]
    assert status == "ok", acc
    assert sizes == [128, 128] and len(acc) == 2 and all(0.0 <= a <= 1.0 for row in acc for a in row)
    status, error, _ = outcome["memory"]
    assert status == "failed" and ("MemoryError" in error or "allocate" in error), error
