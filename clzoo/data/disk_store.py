"""A disk-backed uint8 store for data larger than memory: one memory-mapped ``.npy`` array per split (images
``(N, C, H, W)`` uint8, labels int64), decoded once from an image folder, with a manifest (shapes, class names,
SHA-256 of every file) written last, so an interrupted build is never mistaken for a finished one.

Reading is by index, in batches: :meth:`DiskSplit.get` copies only the rows asked for, and
:meth:`DiskSplit.batches` reads the next batches in a background thread (optionally into pinned memory for a
fast copy to the GPU) while the current one trains. Memory in use stays at a few batches whatever the size of
the data: the store's pages are file-backed and the OS drops them under pressure.

    store = build_store("/data/tiny-imagenet", "/data/tiny-imagenet.store", size=64)   # once
    train = DiskStore("/data/tiny-imagenet.store").split("train")
    for x, y in train.batches(256, shuffle=True, generator=torch.Generator().manual_seed(0)):
        ...
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .sources import DataError

MANIFEST = "manifest.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    out = []
    for label, name in enumerate(classes):
        sub = folder / name
        if sub.is_dir():
            out += [(p, label) for p in sorted(sub.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return out


def _decode(path: Path, size: int | None, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert(mode)
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def build_store(image_folder, out, size: int | None = None, mode: str = "RGB", splits=("train", "test")) -> Path:
    """Decode ``image_folder/{train,test}/<class>/*`` once into the store folder ``out`` (one image in memory at a
    time). ``size``: resize to ``size x size`` (else every image must have the first one's size); ``mode``: PIL
    mode, ``RGB`` or ``L``. An existing complete store with the same source and options is reused."""
    src, out = Path(image_folder).expanduser(), Path(out).expanduser()
    classes = sorted(p.name for p in (src / splits[0]).iterdir() if p.is_dir()) if (src / splits[0]).is_dir() else []
    if not classes:
        raise DataError(f"{src}: no class folders in {src / splits[0]}; an image folder holds train/<class>/ and "
                        "test/<class>/")
    options = {"source": str(src.resolve()), "size": size, "mode": mode, "splits": list(splits)}
    if (out / MANIFEST).is_file():
        old = json.loads((out / MANIFEST).read_text())
        if old.get("options") == options:
            return out
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    manifest = {"version": 1, "options": options, "class_names": classes, "splits": {}}
    for split in splits:
        files = _files(src / split, classes)
        if not files:
            raise DataError(f"{src / split}: no images (suffixes {', '.join(IMAGE_SUFFIXES)})")
        first = _decode(files[0][0], size, mode)
        x = np.lib.format.open_memmap(out / f"{split}_x.npy", mode="w+", dtype=np.uint8, shape=(len(files), *first.shape))
        y = np.empty(len(files), dtype=np.int64)
        for i, (path, label) in enumerate(files):
            arr = first if i == 0 else _decode(path, size, mode)
            if arr.shape != first.shape:
                raise DataError(f"{path}: image of shape {arr.shape[1:]} where {files[0][0].name} has {first.shape[1:]}; "
                                "give size=N to resize every image")
            x[i] = arr
            y[i] = label
            if i % 4096 == 4095:
                x.flush()
        x.flush()
        del x
        np.save(out / f"{split}_y.npy", y)
        manifest["splits"][split] = {"n": len(files), "shape": list(first.shape), "x": f"{split}_x.npy",
                                     "y": f"{split}_y.npy", "sha256_x": _sha256(out / f"{split}_x.npy"),
                                     "sha256_y": _sha256(out / f"{split}_y.npy")}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)  # last: a store without its manifest is incomplete
    return out


class DiskSplit:
    """One split of a store: ``len``, ``shape``, :meth:`get` by index, :meth:`batches`."""

    def __init__(self, folder: Path, entry: dict):
        self.x = np.load(folder / entry["x"], mmap_mode="r")
        self.y = torch.from_numpy(np.load(folder / entry["y"]))
        self.shape = tuple(entry["shape"])

    def __len__(self) -> int:
        return len(self.y)

    def get(self, indices) -> tuple[Tensor, Tensor]:
        """The uint8 images and labels at ``indices`` (read from disk; only these rows)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        order = torch.argsort(idx)  # read in file order, return in the order asked
        rows = np.asarray(self.x[idx[order].numpy()])
        x = torch.empty((len(idx), *self.shape), dtype=torch.uint8)
        x[order] = torch.from_numpy(rows)
        return x, self.y[idx]

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                prefetch: int = 2, pin_memory: bool = False):
        """Batches ``(x uint8, y)`` over the split, the next ``prefetch`` read in a background thread."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        ready: queue.Queue = queue.Queue(maxsize=max(int(prefetch), 1))
        stop = threading.Event()

        def reader():
            try:
                for idx in chunks:
                    if stop.is_set():
                        return
                    x, y = self.get(idx)
                    ready.put((x.pin_memory(), y.pin_memory()) if pin_memory else (x, y))
                ready.put(None)
            except BaseException as err:  # noqa: BLE001 - handed to the consumer
                ready.put(err)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a reader waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(0.05)


class DiskStore:
    """A store built by :func:`build_store`; ``verify=True`` checks every file against the manifest's SHA-256."""

    def __init__(self, folder, verify: bool = True):
        self.folder = Path(folder).expanduser()
        if not (self.folder / MANIFEST).is_file():
            raise DataError(f"{self.folder}: no {MANIFEST}; the store is incomplete or not a clzoo store: build it "
                            "with clzoo.data.disk_store.build_store")
        self.manifest = json.loads((self.folder / MANIFEST).read_text())
        self.class_names = self.manifest["class_names"]
        if verify:
            self.verify()

    def verify(self) -> None:
        for split, entry in self.manifest["splits"].items():
            for key in ("x", "y"):
                got = _sha256(self.folder / entry[key])
                if got != entry[f"sha256_{key}"]:
                    raise DataError(f"{self.folder / entry[key]}: checksum mismatch (file altered or truncated); "
                                    "rebuild the store from its image folder")

    def split(self, name: str) -> DiskSplit:
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.folder}: no split '{name}'; it has {', '.join(self.manifest['splits'])}")
        return DiskSplit(self.folder, self.manifest["splits"][name])
