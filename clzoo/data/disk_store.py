"""A disk-backed uint8 store for data larger than memory: one memory-mapped ``.npy`` array per split (images
``(N, C, H, W)`` uint8, labels int64), decoded once from an image folder, with a manifest (source listing, shapes,
class names, SHA-256 of every file and of the decoded data) written last, so an interrupted build is never
mistaken for a finished one.

Runs turn it on with ``data.store=disk`` (:func:`open_store`): the stream's tasks then hold
:class:`StoredImages`, lazy uint8 views of the store's rows, and the engine reads training batches by index in a
background thread (into pinned memory when the device is CUDA) while the current batch trains. Memory in use
stays at a few batches whatever the size of the data: the store's pages are file-backed and the OS drops them
under pressure. A store is rebuilt when its image folder changes (file names, sizes, times) or its options do.

    store = build_store("/data/tiny-imagenet", "/data/tiny-imagenet.store", size=64)   # once
    train = DiskStore("/data/tiny-imagenet.store").split("train")
    for x, y in train.batches(256, shuffle=True, generator=torch.Generator().manual_seed(0)):
        ...
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import cache
from .sources import DataError, DatasetNotFoundError, Source, _decode_image, _Listing

MANIFEST = "manifest.json"
VERSION = 2
#: images decoded at once while building (bounds the memory of a build)
BUILD_CHUNK = 1024

try:
    import fcntl
except ImportError:  # Windows: no flock; two processes building one store at once are not serialised
    fcntl = None


# ------------------------------------------------------------------------------------------------ lazy view
class StoredImages:
    """uint8 images ``(N, C, H, W)`` that stay on disk: rows ``rows`` of a memory-mapped store array.

    It answers what the engine asks without reading pixels (``len``, ``shape``, ``dtype``, :meth:`subset`) and
    reads only the rows asked for (``x[idx]``, ``x[a:b]``, ``x.index_select(0, idx)``, :meth:`batches`). Anything
    else a method does with the whole task (``x.to(device)``, ``torch.cat([x, ...])``, ``x.clone()``) reads the
    view into an ordinary tensor first: such methods hold one task in memory, never the whole store.
    """

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, array: np.ndarray, rows: Tensor | None = None, pixels: Tensor | None = None):
        self.array = array
        self.rows = torch.arange(len(array)) if rows is None else rows.long()
        if pixels is None:  # a tensor over the map's pages, read-only: only ever read by index_select (a copy)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
                pixels = torch.from_numpy(array.view(np.ndarray)) if len(array) else torch.empty(array.shape,
                                                                                                 dtype=torch.uint8)
        self._pixels = pixels

    # ------------------------------------------------------------------ what costs no read
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.array.shape[1:]))

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def dim(self) -> int:
        return self.array.ndim

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index) -> "StoredImages":
        """The view of the samples at positions ``index`` (a tensor of positions or a boolean mask): no read."""
        return StoredImages(self.array, self.rows[index], self._pixels)

    # ------------------------------------------------------------------ reads
    def read(self, positions=None) -> Tensor:
        """The images at ``positions`` (all when None) as a new tensor, in the order asked: torch copies the rows
        out of the map (pages not in memory are read from disk then), without holding the GIL."""
        rows = self.rows if positions is None else self.rows[torch.as_tensor(positions, dtype=torch.long).cpu()]
        return self._pixels.index_select(0, rows)

    def materialize(self) -> Tensor:
        """Every image of the view as one tensor (for methods that need the whole task at once)."""
        return self.read()

    def __getitem__(self, key) -> Tensor:
        if isinstance(key, int):
            return self.read([key])[0]
        if isinstance(key, slice):
            return self.read(torch.arange(len(self))[key])
        if isinstance(key, Tensor) and key.dtype == torch.bool:
            key = key.nonzero().squeeze(1)
        return self.read(key)

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        if dim != 0:
            return self.materialize().index_select(dim, index)
        return self.read(index.cpu())

    def to(self, *args, **kwargs) -> Tensor:
        return self.materialize().to(*args, **kwargs)

    def cpu(self) -> Tensor:
        return self.materialize()

    def batches(self, order: Tensor, batch_size: int, labels: Tensor | None = None, prefetch: int = 2,
                pin_memory: bool = False):
        """``(x, y)`` batches at the positions ``order`` (``y`` from ``labels``, else None), ``batch_size`` at a
        time; the next ``prefetch`` are read in a background thread, into pinned memory when ``pin_memory``."""
        order = order.cpu()
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

        def load(idx):
            x = self.read(idx)
            y = labels[idx] if labels is not None else None
            if pin_memory:
                x, y = x.pin_memory(), (y.pin_memory() if y is not None else None)
            return x, y

        return prefetched(chunks, load, prefetch)

    # ------------------------------------------------------------------ anything else: read the view first
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_map

        def load(a):
            return a.materialize() if isinstance(a, StoredImages) else a

        return func(*tree_map(load, args), **tree_map(load, kwargs or {}))

    def __getattr__(self, name):
        if name.startswith("_") or name in ("array", "rows"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    def __repr__(self) -> str:
        return f"StoredImages(shape={tuple(self.shape)}, dtype=torch.uint8, on disk)"


def prefetched(chunks, load, prefetch: int = 2):
    """``load(chunk)`` for every chunk, computed ``prefetch`` ahead in a background thread (the reads of a
    memory-mapped array and the pinned copies overlap the training step)."""
    ready: queue.Queue = queue.Queue(maxsize=max(int(prefetch), 1))
    stop = threading.Event()

    def reader():
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                ready.put(load(chunk))
            ready.put(None)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            ready.put(err)

    thread = threading.Thread(target=reader, daemon=True, name="clzoo-store-prefetch")
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


def is_stored(x) -> bool:
    return isinstance(x, StoredImages)


def take(x, index: Tensor):
    """``x[index]``, staying on disk when ``x`` is a :class:`StoredImages` (a view, nothing read)."""
    return x.subset(index) if isinstance(x, StoredImages) else x[index]


# ------------------------------------------------------------------------------------------------ building
def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _decode(path: Path, size: int | None):
    """``(3, H, W)`` uint8 array of an image (RGB, decoded as the in-memory path decodes it), or why it cannot be
    decoded (a string). ``size``: resized so its shorter side is ``size``, then centre-cropped to ``size x size``."""
    arr = _decode_image(path, size)
    return arr if isinstance(arr, str) else arr.transpose(2, 0, 1)


@contextlib.contextmanager
def _build_lock(out: Path):
    """Serialise builders of one store (parallel runs of a sweep share it): an flock beside the store."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(out.parent / f".{out.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _npy_data_offset(path: Path) -> int:
    return int(np.load(path, mmap_mode="r").offset)


def _hash_files(out: Path, manifest: dict) -> None:
    """SHA-256 of every file (``sha256_x`` / ``sha256_y``) and of the decoded data (``content_sha256``, the
    digest the in-memory path computes for the same images: :func:`clzoo.data.cache.content_digest` of the tensors
    ``x_<split>`` / ``y_<split>`` with the manifest's ``extra``, or its class names), in one read."""
    tensors = {}
    for split, entry in manifest["splits"].items():
        tensors[f"x_{split}"] = ("uint8", [entry["n"], *entry["shape"]], out / entry["x"], entry, "x")
        tensors[f"y_{split}"] = ("int64", [entry["n"]], out / entry["y"], entry, "y")
    order = [k for s in manifest["splits"] for k in (f"x_{s}", f"y_{s}")]
    described = manifest["extra"] if "extra" in manifest else {"class_names": manifest["class_names"]}
    meta = {**described, "tensors": [[k, tensors[k][0], tensors[k][1]] for k in order]}
    content = hashlib.sha256(cache._canonical(meta))
    for key in order:
        _, _, path, entry, which = tensors[key]
        offset, seen, whole = _npy_data_offset(path), 0, hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                whole.update(block)
                if seen + len(block) > offset:
                    content.update(block[max(offset - seen, 0):])
                seen += len(block)
        entry[f"sha256_{which}"] = whole.hexdigest()
        entry[f"bytes_{which}"] = path.stat().st_size
    manifest["content_sha256"] = content.hexdigest()


def _valid(out: Path, options: dict) -> dict | None:
    """The manifest of a complete store built with ``options`` whose files have the sizes it records, else None."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != VERSION or manifest.get("options") != options:
        return None
    for entry in manifest["splits"].values():
        for key in ("x", "y"):
            path = out / entry[key]
            if not path.is_file() or path.stat().st_size != entry.get(f"bytes_{key}"):
                return None
    return manifest


def build_store(image_folder, out, size: int | None = None, splits=("train", "test"),
                drop_empty_classes: bool = False) -> Path:
    """Decode ``image_folder/{train,test}/<class>/*`` once into the store folder ``out`` and return ``out``.

    Images are read as the in-memory path reads them (non-images skipped, RGB); ``size``: each resized to
    ``size x size`` (shorter side, then centre crop), else every image must have the first one's size. A complete
    store built from the same listing (names, sizes, times of the files) with the same options is reused; a stale
    one is rebuilt. Memory used: :data:`BUILD_CHUNK` decoded images at a time."""
    src, out = Path(image_folder).expanduser(), Path(out).expanduser()
    listing = _Listing(src, drop_empty_classes)
    options = {"source": str(src.resolve()), "size": size, "splits": list(splits), "listing": listing.fingerprint()}
    writers = {split: (lambda folder, split=split: _build_split(listing, split, folder, size)) for split in splits}
    return build_store_from(out, options, list(listing.classes), writers)


def is_complete(out, options: dict) -> bool:
    """Whether ``out`` holds a complete store built with ``options`` (cheap: sizes only, no checksum)."""
    return _valid(Path(out).expanduser(), options) is not None


def build_store_from(out, options: dict, class_names: list, writers: dict, extra: dict | None = None) -> Path:
    """Build the store ``out`` once: ``writers`` maps each split's name to a function that writes the split into
    the folder it is given (with :func:`write_split`) and returns its manifest entry. A complete store built with
    the same ``options`` is reused, a stale or partial one rebuilt; the manifest (with ``extra``, e.g. a
    benchmark's task structure) is written last, so an interrupted build is never mistaken for a finished one."""
    out = Path(out).expanduser()
    with _build_lock(out):
        if _valid(out, options) is not None:
            return out
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / MANIFEST).unlink(missing_ok=True)
        except OSError as err:
            raise DataError(f"cannot write the disk store at {out} ({err.__class__.__name__}: {err}); set "
                            f"data.store_dir to a writable folder") from err
        manifest = {"version": VERSION, "options": options, "class_names": class_names, "splits": {}}
        if extra is not None:
            manifest["extra"] = extra
        for split, write in writers.items():
            manifest["splits"][split] = write(out)
        _hash_files(out, manifest)
        tmp = out / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, out / MANIFEST)  # last: a store without its manifest is incomplete
    return out


def write_split(out: Path, split: str, shape: tuple, fill) -> dict:
    """Write split ``split`` of ``shape`` ``(N, C, H, W)`` into ``out``: ``fill(x)`` writes the uint8 rows into the
    memory map ``x`` (a chunk at a time, flushing as it goes) and returns the ``N`` labels. Written under temporary
    names, then renamed: a run still reading an older store keeps its (unlinked) files."""
    tmp_x, tmp_y = out / f".{split}_x.npy.tmp", out / f".{split}_y.npy.tmp"
    x = np.lib.format.open_memmap(tmp_x, mode="w+", dtype=np.uint8, shape=tuple(shape))
    try:
        labels = fill(x)
        x.flush()
    except BaseException:
        del x
        tmp_x.unlink(missing_ok=True)
        raise
    del x
    if len(labels) != shape[0]:
        tmp_x.unlink(missing_ok=True)
        raise DataError(f"split {split}: {len(labels)} labels written for {shape[0]} images")
    with open(tmp_y, "wb") as fh:
        np.save(fh, np.asarray(labels, dtype=np.int64))
    os.replace(tmp_x, out / f"{split}_x.npy")
    os.replace(tmp_y, out / f"{split}_y.npy")
    return {"n": int(shape[0]), "shape": list(shape[1:]), "x": f"{split}_x.npy", "y": f"{split}_y.npy"}


def _build_split(listing: _Listing, split: str, out: Path, size: int | None) -> dict:
    files, labels = [], []
    for label, name in enumerate(listing.classes):
        found = listing.files(split, name)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"{listing.path / split}: no images; expected {listing.path / split}/<class>/*.png")
    first = _decode(files[0], size)
    if isinstance(first, str):
        raise DataError(f"{files[0]}: {first}; replace or remove the file")

    def fill(x):
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
            for start in range(0, len(files), BUILD_CHUNK):
                chunk = files[start:start + BUILD_CHUNK]
                for i, (path, arr) in enumerate(zip(chunk, pool.map(lambda p: _decode(p, size), chunk))):
                    if isinstance(arr, str):
                        raise DataError(f"{path}: {arr}; replace or remove the file")
                    if arr.shape != first.shape:
                        raise DataError(
                            f"{path}: image of {arr.shape[1]}x{arr.shape[2]} where {files[0].name} is "
                            f"{first.shape[1]}x{first.shape[2]}; set stream.image_size=N (build_store(size=N)) to "
                            f"resize every image to N x N")
                    x[start + i] = arr
                x.flush()
        return labels

    return write_split(out, split, (len(files), *first.shape), fill)


# ------------------------------------------------------------------------------------------------ reading
class DiskSplit:
    """One split of a store: ``len``, ``shape``, :meth:`images` (a lazy view), :meth:`get`, :meth:`batches`."""

    def __init__(self, folder: Path, entry: dict):
        self.x = np.load(folder / entry["x"], mmap_mode="r")
        self.y = torch.from_numpy(np.load(folder / entry["y"]))
        self.shape = tuple(entry["shape"])

    def __len__(self) -> int:
        return len(self.y)

    def images(self) -> StoredImages:
        return StoredImages(self.x)

    def get(self, indices) -> tuple[Tensor, Tensor]:
        """The uint8 images and labels at ``indices`` (read from disk; only these rows)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images().read(idx), self.y[idx]

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                prefetch: int = 2, pin_memory: bool = False):
        """Batches ``(x uint8, y)`` over the split, the next ``prefetch`` read in a background thread."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        return self.images().batches(order, batch_size, self.y, prefetch, pin_memory)


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
                                    "rebuild the store from its image folder (delete the folder, or run again)")

    def split(self, name: str) -> DiskSplit:
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.folder}: no split '{name}'; it has {', '.join(self.manifest['splits'])}")
        return DiskSplit(self.folder, self.manifest["splits"][name])


def default_store_dir(root: Path) -> Path:
    """Where stores live unless ``data.store_dir`` says otherwise: ``<data.root>/.clzoo-store/``."""
    return Path(root).expanduser() / ".clzoo-store"


def open_store(image_folder, name: str, store_dir, size: int | None = None, verify: bool = False,
               drop_empty_classes: bool = False) -> Source:
    """The image folder as a :class:`~clzoo.data.Source` whose images stay on disk (:class:`StoredImages`),
    building its store under ``store_dir`` first when it is missing or stale. ``verify``: check every file of the
    store against its SHA-256 (reads the whole store; a cheap size check is always made)."""
    folder = Path(image_folder).expanduser()
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        raise DatasetNotFoundError(
            f"image folder {folder} is missing train/ or test/; expected {folder}/train/<class>/*.jpg and "
            f"{folder}/test/<class>/*.jpg (one sub-folder per class, the same classes in both)")
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    out = Path(store_dir).expanduser() / f"{name}-{key}{'' if size is None else f'-{size}px'}"
    build_store(folder, out, size=size, drop_empty_classes=drop_empty_classes)
    store = DiskStore(out, verify=verify)
    train, test = store.split("train"), store.split("test")
    return Source(name, train.images(), train.y, test.images(), test.y, list(store.class_names),
                  store.manifest["content_sha256"])
