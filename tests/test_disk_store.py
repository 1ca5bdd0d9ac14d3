"""The disk-backed uint8 store: built once from an image folder, manifest and checksums, read by index in batches
with a background prefetch, and a store larger than the process's memory limit read with bounded memory."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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
    with pytest.raises(DataError, match="give size=N"):
        build_store(tmp_path / "imgs", tmp_path / "s1", splits=("train",))
    store = DiskStore(build_store(tmp_path / "imgs", tmp_path / "s2", size=6))
    assert store.split("train").shape == (3, 6, 6) and len(store.split("test")) == 1


@pytest.mark.slow
def test_store_larger_than_the_memory_limit(tmp_path):
    """48 MB of images read through the store by a process allowed 40 MB more than it uses at start
    (RLIMIT_DATA): the whole array in memory fails there, the store's batches do not."""
    n_per_class = (1000,) * 4  # 4,000 RGB 64x64 images: 49,152,000 bytes of pixels
    make_folder(tmp_path / "imgs", n_per_class=n_per_class, size=64, fmt="bmp")
    code = textwrap.dedent(f"""
        import json, resource, time
        import numpy as np, torch
        from clzoo.data.disk_store import DiskStore, build_store
        def data_kb():
            return int(next(l for l in open('/proc/self/status') if l.startswith('VmData')).split()[1])
        limit = (data_kb() + 40 * 1024) * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
        store = DiskStore(build_store({str(tmp_path / 'imgs')!r}, {str(tmp_path / 'store')!r}, splits=('train',)))
        train = store.split('train')
        try:
            whole = np.array(train.x)  # the in-memory path: every image at once
            in_memory = 'fits'
        except MemoryError:
            in_memory = 'MemoryError'
        t0, n, total = time.perf_counter(), 0, 0
        for x, y in train.batches(128, shuffle=True, generator=torch.Generator().manual_seed(0)):
            n += len(x); total += int(x.numpy().sum(dtype=np.int64))  # numpy: no int64 copy of the batch
        rate = n / (time.perf_counter() - t0)
        print(json.dumps({{'n': n, 'total': total, 'in_memory': in_memory, 'images_per_s': rate,
                           'bytes': int(np.prod(train.x.shape)), 'limit_headroom': 40 * 2**20}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    x = np.load(tmp_path / "store" / "train_x.npy", mmap_mode="r")
    assert got["n"] == 4000 and got["bytes"] > got["limit_headroom"]
    assert got["in_memory"] == "MemoryError"  # the limit is real: the data does not fit as one array
    assert got["total"] == int(np.asarray(x, dtype=np.int64).sum())
    print(f"disk store under the limit: {got['images_per_s']:.0f} images/s")
