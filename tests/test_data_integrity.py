"""Data integrity: the decoded-tensor cache follows its sources and survives damage; bad source files, empty
classes and empty tasks give one clear error naming what is wrong. Small generated image folders and tiny fake
MNIST idx files only (offline, fast)."""
from __future__ import annotations

import gzip
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clzoo.data import DatasetNotFoundError, Source, StreamError, build_stream, load_source
from clzoo.data import cache as data_cache
from clzoo.data.cache import DataWarning
from clzoo.data.sources import DataError, read_idx

SPLITS = ("train", "test")


# ------------------------------------------------------------------------------------------------ helpers
def png_bytes(seed: int, size: int = 8, value: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (np.full((size, size, 3), value, np.uint8) if value is not None
              else rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def make_folder(root: Path, counts: dict[str, tuple[int, int]], size: int = 8) -> Path:
    """``root/{train,test}/<class>/<i>.png`` with ``counts[class] = (n_train, n_test)`` random images."""
    seed = 0
    for name, per_split in counts.items():
        for split, n in zip(SPLITS, per_split):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{i:03d}.png").write_bytes(png_bytes(seed, size))
                seed += 1
    return root


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_mnist(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """A tiny fake ``root/MNIST/raw`` (4x4 images, labels 0..9) in MNIST's idx format."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(rng.integers(0, 256, (n, 4, 4))))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(n) % 10))
    return raw


def same_data(a: Source, b: Source) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("x_train", "y_train", "x_test", "y_test"))


def cache_file(root: Path) -> Path:
    (found,) = (root / ".clzoo-cache").glob("*.cache")
    return found


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "imgs", {"a": (4, 2), "b": (4, 2), "c": (4, 2), "d": (4, 2)})


def load_folder(root: Path, path: Path, **kw) -> Source:
    return load_source("imagefolder", root, path=path, **kw)


# ------------------------------------------------------------------------------------ cache: staleness
def test_edited_image_folder_is_decoded_again(tmp_path, folder):
    root = tmp_path / "root"
    first = load_folder(root, folder)
    assert len(first.y_train) == 16 and first.fingerprint
    for p in list((folder / "train" / "a").iterdir())[:3]:  # train images deleted
        p.unlink()
    for p in (folder / "test" / "b").iterdir():  # test images blanked
        p.write_bytes(png_bytes(0, value=0))
    second = load_folder(root, folder)
    assert len(second.y_train) == 13 and int(second.x_test[second.y_test == 1].max()) == 0
    assert second.fingerprint != first.fingerprint
    assert same_data(second, load_image_folder_uncached(folder))
    assert len(list((root / ".clzoo-cache").iterdir())) == 1  # rewritten in place, no temporaries left


def load_image_folder_uncached(path: Path) -> Source:
    from clzoo.data.sources import load_image_folder

    return load_image_folder(path)


def test_repaired_mnist_labels_are_read_again_even_with_the_old_mtime(tmp_path):
    raw = make_mnist(tmp_path)
    labels = raw / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    before = os.stat(labels)
    bad = bytearray(good)
    bad[8 + 5] = 3  # a valid but wrong label: cached first ...
    labels.write_bytes(bytes(bad))
    os.utime(labels, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... with the file's old mtime kept
    assert int(load_source("mnist", tmp_path).y_train[5]) == 3
    labels.write_bytes(good)  # repaired, again keeping the mtime (size unchanged): ctime still tells
    os.utime(labels, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert int(load_source("mnist", tmp_path).y_train[5]) == 5


# ------------------------------------------------------------------------------------ cache: corruption
def test_bit_flips_in_the_cache_are_detected_and_rebuilt(tmp_path, folder):
    root = tmp_path / "root"
    good = load_folder(root, folder)
    path = cache_file(root)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    header_end = len(data) - good.x_train.numel() - good.x_test.numel() - 8 * (len(good.y_train) + len(good.y_test))
    for i in rng.choice(np.arange(header_end, len(data)), size=min(4000, len(data) - header_end), replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(DataWarning, match="checksum mismatch"):
        again = load_folder(root, folder)
    assert same_data(again, good) and again.fingerprint == good.fingerprint
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: the next load is clean
        assert same_data(load_folder(root, folder), good)


@pytest.mark.parametrize("damage", ["empty", "truncated_header", "truncated_data", "garbage", "header_flip"])
def test_truncated_or_empty_cache_is_rebuilt(tmp_path, damage):
    make_mnist(tmp_path)
    good = load_source("mnist", tmp_path)
    path = cache_file(tmp_path)
    data = path.read_bytes()
    at = data.index(b'"sha256": "') + 15  # a digit of the stored digest
    damaged = {"empty": b"", "truncated_header": data[:20], "truncated_data": data[:len(data) - 100],
               "garbage": os.urandom(len(data)),
               "header_flip": data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]}[damage]
    path.write_bytes(damaged)
    with pytest.warns(DataWarning, match="is corrupt"):
        again = load_source("mnist", tmp_path)
    assert same_data(again, good) and again.fingerprint == good.fingerprint


def test_cache_write_is_atomic_and_cleans_up(tmp_path, monkeypatch):
    make_mnist(tmp_path)
    folder = tmp_path / ".clzoo-cache"
    folder.mkdir()
    stale = folder / ".mnist.cache.tmp-99999"
    stale.write_bytes(b"left by a killed writer")
    os.utime(stale, (0, 0))
    fresh = folder / ".mnist.cache.tmp-99998"  # another process writing right now: left alone
    fresh.write_bytes(b"in progress")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data_cache.os, "replace", full_disk)
    src = load_source("mnist", tmp_path)  # the cache cannot be published: the data still loads
    assert len(src.y_train) == 40
    assert sorted(p.name for p in folder.iterdir()) == [fresh.name]  # no half-written file, stale temp gone
    monkeypatch.undo()
    load_source("mnist", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [fresh.name, "mnist.cache"]


def test_cache_of_an_older_clzoo_is_replaced(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / ".clzoo-cache").mkdir()
    (tmp_path / ".clzoo-cache" / "mnist.pt").write_bytes(b"torch.save output of an older clzoo")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_source("mnist", tmp_path)
    assert [p.name for p in (tmp_path / ".clzoo-cache").iterdir()] == ["mnist.cache"]


# ------------------------------------------------------------------------------ fingerprint in results
def test_fingerprint_is_the_data_not_the_machine(tmp_path, folder):
    copy = make_folder(tmp_path / "copy", {"a": (4, 2), "b": (4, 2), "c": (4, 2), "d": (4, 2)})
    a, b = load_folder(tmp_path / "r1", folder), load_folder(tmp_path / "r2", copy)
    assert a.fingerprint == b.fingerprint  # same pixels elsewhere (other path, mtimes): same fingerprint
    hand = Source("x", a.x_train.clone(), a.y_train.clone(), a.x_test.clone(), a.y_test.clone(), a.class_names)
    stream = build_stream(source=hand, n_tasks=2)
    assert stream.info["data_fingerprint"] == a.fingerprint
    hand.y_train[0] = 1 - hand.y_train[0]
    hand.fingerprint = None
    assert build_stream(source=hand, n_tasks=2).info["data_fingerprint"] != a.fingerprint


def test_results_json_records_the_data_fingerprint_and_resume_refuses_other_data(tmp_path, folder):
    from clzoo.config import compose
    from clzoo.engine import run
    from clzoo.engine.runner import ResumeError

    overrides = ["stream.dataset=imagefolder", f"stream.path={folder}", "stream.n_tasks=2", f"data.root={tmp_path}",
                 "log.progress=false", "log.tensorboard=false", "log.plots=false", "trainer.num_threads=1",
                 "trainer.epochs=1", "method=finetune"]
    results = run(compose([*overrides, "trainer.max_tasks=1"]), tmp_path / "run", show_progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["stream"]["data_fingerprint"] == results["stream"]["data_fingerprint"]
    assert saved["stream"]["data_fingerprint"] == load_folder(tmp_path, folder).fingerprint
    (folder / "train" / "a" / "000.png").write_bytes(png_bytes(99))  # the data changes under a paused run
    with pytest.raises(ResumeError, match="the dataset changed since the run started"):
        run(compose([*overrides, "resume=true"]), tmp_path / "run", show_progress=False)


# -------------------------------------------------------------------------------------- bad image files
def flip_image_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[data.index(b"IDAT") + 20] ^= 0xFF  # inside the compressed pixels: torchvision 0.29's decoder segfaults
    path.write_bytes(bytes(data))


def in_child(fn) -> tuple[int, str]:
    """Run ``fn`` in a forked child; returns (exit status or -signal, text it reported)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_end)
        try:
            message = f"returned {fn()!r}"
        except BaseException as err:
            message = f"{type(err).__name__}: {err}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    return (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), text


def test_corrupt_png_is_a_clear_error_not_a_crash(tmp_path, folder):
    bad = folder / "train" / "b" / "001.png"
    flip_image_data(bad)
    status, text = in_child(lambda: len(load_folder(tmp_path, folder).y_train))
    assert status == 0, f"the process died (status {status})"
    assert text.startswith("DataError: ") and str(bad) in text and "replace or remove the file" in text


def test_truncated_png_names_the_file(tmp_path, folder):
    bad = folder / "test" / "c" / "000.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError, match=f"{bad}: cannot be decoded .*truncated"):
        load_folder(tmp_path, folder)


def test_non_image_files_are_skipped_and_counted(tmp_path, folder):
    (folder / "train" / "a" / "notes.txt").write_text("not an image")
    (folder / "test" / "d" / "Thumbs.db").write_bytes(b"\0" * 10)
    with pytest.warns(DataWarning, match=r"skipped 2 file\(s\) that are not images"):
        src = load_folder(tmp_path, folder)
    assert len(src.y_train) == 16 and len(src.y_test) == 8
    (folder / "train" / "a" / "fake.png").write_text("a text file named .png")  # claims to be an image
    with pytest.raises(DataError, match=f"{folder / 'train' / 'a' / 'fake.png'}: not an image"), \
            pytest.warns(DataWarning, match="skipped 2"):
        load_folder(tmp_path, folder)


def test_images_of_different_sizes_name_examples(tmp_path, folder):
    (folder / "train" / "a" / "big.png").write_bytes(png_bytes(0, size=16))
    with pytest.raises(DataError, match=r"different sizes: 8x8 .*16x16 \(train/a/big.png\)"):
        load_folder(tmp_path, folder)


# ---------------------------------------------------------------------------------------- bad idx files
def test_truncated_mnist_file_says_truncated(tmp_path):
    raw = make_mnist(tmp_path)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-7])
    with pytest.raises(DataError, match=f"{images}: truncated: the header describes 40x4x4 values "
                                        f"\\(640 bytes\\), the file holds 633"):
        load_source("mnist", tmp_path)
    images.write_bytes(b"\0\0")
    with pytest.raises(DataError, match="truncated: 2 bytes"):
        load_source("mnist", tmp_path)


def test_corrupt_mnist_header_names_the_file(tmp_path):
    raw = make_mnist(tmp_path)
    labels = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[2] = 0x0D  # float data type instead of unsigned bytes
    labels.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{labels}: not an IDX file of 1-d unsigned bytes \\(header 00 00 0d 01"):
        load_source("mnist", tmp_path)
    labels.write_bytes(idx_bytes(np.arange(20) % 10) + b"junk")
    with pytest.raises(DataError, match="4 bytes more than its header"):
        load_source("mnist", tmp_path)
    labels.write_bytes(idx_bytes(np.arange(19) % 10))
    with pytest.raises(DataError, match="holds 20 images but .* 19 labels"):
        load_source("mnist", tmp_path)


def test_mnist_labels_outside_the_class_range(tmp_path):
    raw = make_mnist(tmp_path)
    labels = raw / "train-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[8 + 17] = 200
    labels.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{labels}: 1 train label\\(s\\) outside the class range 0..9 "
                                        f"\\(e.g. 200 at index 17\\)"):
        load_source("mnist", tmp_path)


def test_gzipped_idx_files_are_read(tmp_path):
    raw = make_mnist(tmp_path)
    plain = load_source("mnist", tmp_path)
    for p in raw.iterdir():
        (raw / f"{p.name}.gz").write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
    assert same_data(load_source("mnist", tmp_path), plain)
    broken = raw / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:30])
    with pytest.raises(DataError, match=f"{broken}: cannot be read"):
        read_idx(broken, 3)


# -------------------------------------------------------------------------------------- missing datasets
def test_missing_mnist_points_at_what_a_user_has(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_source("mnist", tmp_path)
    text = str(err.value)
    assert "data.download=true" in text and "README.md, section 'Real datasets'" in text
    assert "train-labels-idx1-ubyte" in text and "install.sh" not in text and "shared/" not in text


def test_download_fetches_from_the_mirrors(tmp_path, monkeypatch):
    import functools
    import hashlib
    import http.server
    import threading

    import torchvision.datasets as tvd

    served = tmp_path / "mirror"
    raw = make_mnist(tmp_path / "made")
    served.mkdir()
    resources = []
    for p in sorted(raw.iterdir()):
        data = gzip.compress(p.read_bytes())
        (served / f"{p.name}.gz").write_bytes(data)
        resources.append((f"{p.name}.gz", hashlib.md5(data).hexdigest()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/", f"http://127.0.0.1:{server.server_port}/"])
        monkeypatch.setattr(tvd.MNIST, "resources", resources)
        got = load_source("mnist", tmp_path / "root", download=True)  # the first mirror refuses, the second serves
    finally:
        server.shutdown()
    assert same_data(got, load_source("mnist", tmp_path / "made"))
    assert sorted(p.name for p in (tmp_path / "root" / "MNIST" / "raw").iterdir() if not p.name.endswith(".gz")) \
        == sorted(p.name for p in raw.iterdir())


def test_failed_download_says_why(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there: refused at once
    with pytest.raises(DatasetNotFoundError) as err:
        load_source("mnist", tmp_path, download=True)
    text = str(err.value)
    assert text.startswith("data.download=true could not download MNIST (train-images-idx3-ubyte.gz")
    assert "refused" in text.lower() and "set data.download" not in text and "install.sh" not in text
    monkeypatch.setattr(tvd.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DatasetNotFoundError, match="data.download=true could not download cifar10 .*refused"):
        load_source("cifar10", tmp_path, download=True)
    with pytest.raises(DatasetNotFoundError) as err:
        load_source("cifar10", tmp_path)
    assert "set data.download=true" in str(err.value) and "install.sh" not in str(err.value)


def test_damaged_cifar_pickles_are_named(tmp_path):
    pickled = tmp_path / "cifar-10-batches-py"
    pickled.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (pickled / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=f"{pickled}: torchvision cannot read cifar10 there .*MD5 check"):
        load_source("cifar10", tmp_path)


# ------------------------------------------------------------------------------- empty classes and tasks
def test_empty_class_folder_is_an_error_or_dropped_on_request(tmp_path, folder):
    for p in (folder / "test" / "c").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"class folder\(s\) test/c hold no images.*drop_empty_classes=true"):
        load_folder(tmp_path, folder)
    with pytest.warns(DataWarning, match=r"dropped 1 class\(es\).*: c"):
        src = load_folder(tmp_path, folder, drop_empty_classes=True)
    assert src.class_names == ["a", "b", "d"] and sorted(src.y_train.unique().tolist()) == [0, 1, 2]
    from clzoo.config import compose
    from clzoo.engine.runner import build_stream_from_config

    cfg = compose(["stream.dataset=imagefolder", f"stream.path={folder}", "stream.n_tasks=3",
                   f"data.root={tmp_path}", "data.drop_empty_classes=true"])
    with pytest.warns(DataWarning, match="dropped 1"):
        assert build_stream_from_config(cfg).class_names == ["a", "b", "d"]


def test_task_without_test_images_is_an_error(tmp_path):
    x = torch.zeros(12, 1, 2, 2, dtype=torch.uint8)
    y = torch.arange(12) % 4
    src = Source("toy", x, y, x[:4], torch.tensor([0, 1, 0, 1]), ["w", "x", "y", "z"])
    with pytest.raises(StreamError, match="task 1 \\(classes y, z\\) has no test samples"):
        build_stream(source=src, n_tasks=2)
    with pytest.raises(StreamError, match="task 0 .* has no training samples"):
        build_stream(source=Source("toy", x[:0], y[:0], x, y, ["w", "x", "y", "z"]), n_tasks=2)
    with pytest.raises(StreamError, match="task 0 .* has no test samples .*stream.test_per_task"):
        build_stream(source=src, n_tasks=2, test_per_task=0)


def test_clzoo_run_reports_a_damaged_image_in_one_line(cli, tmp_path, run_dir):
    from conftest import error_line

    folder = make_folder(tmp_path / "imgs", {"a": (4, 2), "b": (4, 2)})
    (folder / "train" / "a" / "notes.txt").write_text("not an image")
    bad = folder / "train" / "b" / "001.png"
    flip_image_data(bad)
    proc = cli("stream.dataset=imagefolder", f"stream.path={folder}", "stream.n_tasks=2", f"data.root={tmp_path}",
               f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert line.startswith(f"clzoo-run: error: {bad}: cannot be decoded (") and line.endswith("remove the file")
    assert (f"clzoo-run: warning: {folder}: skipped 1 file(s) that are not images (e.g. train/a/notes.txt)"
            in proc.stderr.splitlines()[0])


def test_hand_built_source_with_labels_outside_the_class_range(tmp_path):
    x = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
    src = Source("toy", x, torch.tensor([0, 1, 2, 3, 4, 1]), x, torch.tensor([0, 1, 2, 3, 0, 1]), ["a", "b", "c", "d"])
    with pytest.raises(StreamError, match="dataset 'toy': train labels span 0..4, outside the class range 0..3"):
        build_stream(source=src, n_tasks=2)
