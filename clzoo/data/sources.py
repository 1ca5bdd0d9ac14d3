"""Dataset sources: turn a dataset into uint8 image tensors ``(N, C, H, W)`` and int64 labels.

Every source returns a :class:`Source`. The decoded tensors are cached under ``ROOT/.clzoo-cache/``, keyed by
the source files they came from and verified when loaded (:mod:`clzoo.data.cache`), so an edited dataset is
decoded again and a damaged cache is rebuilt. ``Source.fingerprint`` is the SHA-256 of the decoded data.

Bad inputs give one :class:`DataError` naming the file and what is wrong with it: an image that cannot be
decoded, a truncated or malformed MNIST idx file, labels outside the class range, an empty class folder
(``data.drop_empty_classes=true`` drops such classes instead). Files that are not images are skipped with a
:class:`~clzoo.data.cache.DataWarning` that counts them.

Images are decoded with Pillow, which raises on a damaged file: torchvision 0.29's ``decode_image`` segfaults on a
PNG with one flipped byte in its image data (flipping any one of the 211 compressed-data bytes of a generated 8x8
PNG crashed it). The cost, measured on CIFAR-10's PNGs on this project's 2-core machine: 117 us of CPU per image
with Pillow against 79 us with torchvision (single thread), paid once per dataset version since the result is
cached; the pixels are identical for all 60,000 images (torchvision deprecates its image decoders from 0.29 on).
MNIST's idx files are parsed here (torchvision is used only to download), so a truncated or damaged file is named
as such instead of being reported as missing.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import cache
from .cache import DataWarning

#: where a user reads about data roots, layouts and downloads
README_DATA = "README.md, section 'Real datasets'"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing under the data root and could not be downloaded."""


class DataError(ValueError):
    """A dataset file exists but is unreadable or inconsistent (corrupt image, truncated idx file, bad labels)."""


@dataclass
class Source:
    """A dataset as uint8 tensors: images ``(N, C, H, W)`` and int64 labels.

    ``fingerprint`` is the SHA-256 of the decoded data (set by the loaders; :func:`fingerprint` computes it for a
    source built by hand)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: list[str]
    fingerprint: str | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


_TENSORS = ("x_train", "y_train", "x_test", "y_test")


def fingerprint(src: Source) -> str:
    """The SHA-256 of a source's decoded data (class names, shapes, every pixel and label)."""
    if src.fingerprint is None:
        src.fingerprint = cache.content_digest({k: getattr(src, k) for k in _TENSORS},
                                               {"class_names": list(src.class_names)})
    return src.fingerprint


def default_root() -> Path:
    """``$CLZOO_DATA`` if set, else ``~/.cache/clzoo/data``."""
    return Path(os.environ.get("CLZOO_DATA", "~/.cache/clzoo/data")).expanduser()


def _check_labels(src: Source, where: dict[str, str]) -> Source:
    """Labels must be class ids ``0..n_classes-1``; ``where`` names the file each split's labels came from."""
    for split in ("train", "test"):
        y = getattr(src, f"y_{split}")
        bad = ((y < 0) | (y >= src.n_classes)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{where[split]}: {len(bad)} {split} label(s) outside the class range "
                            f"0..{src.n_classes - 1} (e.g. {int(y[i])} at index {i}); the file is corrupt, restore "
                            f"it (or delete it and set data.download=true)")
    return src


def _cached(root: Path, key: str, name: str, sources: str, build) -> Source:
    """The source built by ``build() -> Source``, from the verified cache ``ROOT/.clzoo-cache/<key>.cache`` when
    its source fingerprint ``sources`` still matches."""
    path = cache.cache_dir(root) / f"{key}.cache"
    built: list[Source] = []

    def decode():
        src = build()
        built.append(src)
        return ({k: getattr(src, k) for k in _TENSORS}, {"class_names": list(src.class_names)})

    tensors, extra, digest = cache.load_or_build(path, sources, decode)
    if built:
        try:  # a cache file written by clzoo before the verified format: replaced by the file just written
            (path.parent / f"{key}.pt").unlink(missing_ok=True)
        except OSError:
            pass
    return Source(name, *(tensors[k] for k in _TENSORS), list(extra["class_names"]), digest)


# ------------------------------------------------------------------------------------------------ digits
def load_digits(root: Path, download: bool = False, test_fraction: float = 0.2, split_seed: int = 0) -> Source:
    """scikit-learn's bundled 8x8 digits (1,797 images), split train/test with a fixed stratified seed.

    Pixel values 0..16 are rescaled to 0..255 so every source speaks uint8. Cached like the other sources
    (importing scikit-learn costs seconds per process; the cached tensors load in milliseconds); the cache is keyed
    by scikit-learn's bundled ``digits.csv.gz``, found without importing scikit-learn.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    files = []
    if spec is not None and spec.submodule_search_locations:
        csv = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        files = [csv] if csv.is_file() else []
    params = {"dataset": "digits", "test_fraction": test_fraction, "split_seed": split_seed}
    sources = cache.stat_fingerprint(files, files[0].parent if files else Path("."), params)
    return _cached(Path(root), f"digits-{test_fraction}-{split_seed}", "digits", sources,
                   lambda: _decode_digits(test_fraction, split_seed))


def _decode_digits(test_fraction: float, split_seed: int) -> Source:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = torch.from_numpy((bunch.images * 255.0 / 16.0).round()).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    idx_train, idx_test = train_test_split(
        range(len(labels)), test_size=test_fraction, random_state=split_seed, stratify=bunch.target
    )
    idx_train, idx_test = torch.tensor(sorted(idx_train)), torch.tensor(sorted(idx_test))
    return Source("digits", images[idx_train], labels[idx_train], images[idx_test], labels[idx_test],
                  [str(i) for i in range(10)])


# ------------------------------------------------------------------------------------- MNIST idx files
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
#: class names as torchvision gives them (written out: importing torchvision.datasets costs seconds)
MNIST_CLASSES = {
    "MNIST": ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
              "8 - eight", "9 - nine"],
    "FashionMNIST": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"],
}


def read_idx(path: Path, ndim: int) -> Tensor:
    """An IDX file of unsigned bytes (MNIST's format: magic ``00 00 08 ndim``, big-endian int32 sizes, data) as a
    uint8 tensor, reading ``path.gz`` when ``path`` ends in ``.gz``. Raises :class:`DataError` naming the file when
    it is truncated, longer than its header says, or not such an IDX file."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as err:  # gzip: "Compressed file ended before the end-of-stream marker"
        raise DataError(f"{path}: cannot be read ({err.__class__.__name__}: {err}); the file is damaged, "
                        f"restore it (or delete it and set data.download=true)") from err
    fix = "restore it (or delete it and set data.download=true)"
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated: {len(data)} bytes, shorter than an IDX header ({4 + 4 * ndim} bytes); "
                        f"{fix}")
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != ndim:
        raise DataError(f"{path}: not an IDX file of {ndim}-d unsigned bytes (header {data[:4].hex(' ')}, expected "
                        f"00 00 08 {ndim:02x}); the file is corrupt or not MNIST, {fix}")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected = 1
    for d in dims:
        expected *= d
    got = len(data) - 4 - 4 * ndim
    shape = "x".join(map(str, dims))
    if got < expected:
        raise DataError(f"{path}: truncated: the header describes {shape} values ({expected:,} bytes), the file "
                        f"holds {got:,}; {fix}")
    if got > expected:
        raise DataError(f"{path}: {got - expected:,} bytes more than its header ({shape}) describes; the file is "
                        f"corrupt, {fix}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=4 + 4 * ndim).view(dims) if expected \
        else torch.empty(dims, dtype=torch.uint8)


def _idx_path(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mnist_files(cls_name: str, raw: Path) -> dict[str, tuple[Path | None, Path | None]]:
    return {split: (_idx_path(raw, img), _idx_path(raw, lbl)) for split, (img, lbl) in MNIST_FILES.items()}


def _download_failed(what: str, dest: Path, err: BaseException, layout: str) -> DatasetNotFoundError:
    reason = str(getattr(err, "reason", "") or err).strip().splitlines()[0] if str(err).strip() else ""
    return DatasetNotFoundError(
        f"data.download=true could not download {what} into {dest}: {err.__class__.__name__}"
        f"{': ' + reason if reason else ''}; check the network (or proxy), or copy the files there yourself "
        f"({layout}; see {README_DATA})")


def _download_mnist(cls_name: str, raw: Path) -> None:
    """Fetch the missing idx files from torchvision's mirrors for ``cls_name``, saying why when all fail."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(tvd, cls_name)
    raw.mkdir(parents=True, exist_ok=True)
    for filename, md5 in cls.resources:
        if _idx_path(raw, filename.removesuffix(".gz")) is not None:
            continue
        last: BaseException | None = None
        for mirror in cls.mirrors:
            try:
                download_and_extract_archive(f"{mirror}{filename}", download_root=str(raw), filename=filename, md5=md5)
                break
            except Exception as err:  # URLError, socket errors, MD5 mismatch (RuntimeError)
                last = err
                (raw / filename).unlink(missing_ok=True)  # a partial or wrong download would pass for the file
        else:
            raise _download_failed(f"{cls_name} ({filename}, tried {len(cls.mirrors)} mirror(s))", raw, last,
                                   _mnist_layout(raw))


def _mnist_layout(raw: Path) -> str:
    names = [n for pair in MNIST_FILES.values() for n in pair]
    return f"expected {raw}/ holding {', '.join(names)} (or the same names with .gz)"


def _torchvision_mnist_like(cls_name: str, folder: str, root: Path, download: bool) -> Source:
    raw = root / folder / "raw"
    files = _mnist_files(cls_name, raw)
    missing = [n for split, pair in files.items() for n, p in zip(MNIST_FILES[split], pair) if p is None]
    if missing and download:
        _download_mnist(cls_name, raw)
        files = _mnist_files(cls_name, raw)
        missing = [n for split, pair in files.items() for n, p in zip(MNIST_FILES[split], pair) if p is None]
    if missing:
        raise DatasetNotFoundError(
            f"{cls_name} not found under {raw}: missing {', '.join(missing)} ({_mnist_layout(raw)}); "
            f"set data.download=true "
            f"where the network is reachable, or point data.root at a folder holding {folder}/raw/ "
            f"(see {README_DATA})")
    paths = [p for pair in files.values() for p in pair]
    sources = cache.stat_fingerprint(paths, root, {"dataset": cls_name})

    def build() -> Source:
        arrays = {}
        for split, (img_path, lbl_path) in files.items():
            images, labels = read_idx(img_path, 3), read_idx(lbl_path, 1)
            if len(images) != len(labels):
                raise DataError(f"{img_path} holds {len(images):,} images but {lbl_path} {len(labels):,} labels; "
                                f"one of them is corrupt, restore it (or delete both and set data.download=true)")
            arrays[split] = (images.unsqueeze(1).clone(), labels.long())
        src = Source(cls_name.lower(), *arrays["train"], *arrays["test"], list(MNIST_CLASSES[cls_name]))
        return _check_labels(src, {s: str(files[s][1]) for s in files})

    key = "mnist" if cls_name == "MNIST" else "fashion_mnist"
    return _cached(root, key, cls_name.lower(), sources, build)


def load_mnist(root: Path, download: bool = False) -> Source:
    return _torchvision_mnist_like("MNIST", "MNIST", Path(root), download)


def load_fashion_mnist(root: Path, download: bool = False) -> Source:
    return _torchvision_mnist_like("FashionMNIST", "FashionMNIST", Path(root), download)


# ------------------------------------------------------------------------------------------ image folders
def _image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def _visible(entries) -> list:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


class _Listing:
    """The files of an image folder: image files per split and class, non-image files skipped (and counted)."""

    def __init__(self, path: Path, drop_empty_classes: bool):
        self.path = path
        train_dir, test_dir = path / "train", path / "test"
        if not train_dir.is_dir() or not test_dir.is_dir():
            raise DatasetNotFoundError(
                f"image folder {path} is missing train/ or test/; expected {path}/train/<class>/*.png and "
                f"{path}/test/<class>/*.png (one sub-folder per class, the same classes in both; see {README_DATA})")
        dirs = {split: {e.name for e in _visible(os.scandir(path / split)) if e.is_dir()}
                for split in ("train", "test")}
        if dirs["train"] != dirs["test"]:
            only_train, only_test = sorted(dirs["train"] - dirs["test"]), sorted(dirs["test"] - dirs["train"])
            raise DataError(f"{path}: train/ and test/ hold different class folders (only in train/: "
                            f"{only_train or 'none'}; only in test/: {only_test or 'none'}); they must match")
        classes = sorted(dirs["train"])
        if not classes:
            raise DatasetNotFoundError(f"no class folders under {path}/train/; expected one folder of images per "
                                       f"class ({path}/train/<class>/*.png, and the same under test/)")
        extensions = _image_extensions()
        # per split and class: (file name, os.stat_result) of each image file, as strings (60,000 Path objects
        # and relpath calls cost more than the stat calls themselves)
        self.entries: dict[str, dict[str, list[tuple[str, os.stat_result]]]] = {"train": {}, "test": {}}
        self.skipped: list[str] = []
        for split in ("train", "test"):
            for name in classes:
                images = []
                with os.scandir(path / split / name) as it:
                    for e in it:
                        if e.name.startswith(".") or not e.is_file():
                            continue
                        if "." + e.name.rpartition(".")[2].lower() in extensions:
                            images.append((e.name, e.stat()))
                        else:
                            self.skipped.append(f"{split}/{name}/{e.name}")
                images.sort(key=lambda item: item[0])
                self.entries[split][name] = images
        empty = [f"{split}/{name}" for name in classes for split in ("train", "test") if not self.entries[split][name]]
        if empty and not drop_empty_classes:
            raise DataError(f"{path}: class folder(s) {', '.join(empty)} hold no images; add images, remove the "
                            f"folder(s), or set data.drop_empty_classes=true to drop such classes")
        dropped = sorted({e.split("/", 1)[1] for e in empty})
        self.classes = [c for c in classes if c not in dropped]
        if dropped:
            warnings.warn(f"{path}: dropped {len(dropped)} class(es) with an empty train/ or test/ folder "
                          f"(data.drop_empty_classes=true): {', '.join(dropped)}", DataWarning, stacklevel=4)
            if not self.classes:
                raise DataError(f"{path}: every class folder is empty; nothing to train on")
        if self.skipped:
            example = sorted(self.skipped)[0]
            warnings.warn(f"{path}: skipped {len(self.skipped)} file(s) that are not images (e.g. {example}); "
                          f"image files end in .png, .jpg, ... (any format Pillow reads)", DataWarning, stacklevel=4)

    def files(self, split: str, name: str) -> list[Path]:
        folder = self.path / split / name
        return [folder / f for f, _ in self.entries[split][name]]

    def fingerprint(self) -> str:
        """What :func:`clzoo.data.cache.stat_fingerprint` computes, from the stat results already taken."""
        h = hashlib.sha256(json.dumps({"format": cache.FORMAT, "params": {"dataset": "imagefolder",
                                       "classes": self.classes}}, sort_keys=True).encode())
        for split in ("train", "test"):
            for name in self.classes:
                h.update("".join(f"{split}/{name}/{f}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n"
                                 for f, st in self.entries[split][name]).encode())
        return h.hexdigest()


def _decode_image(path: Path, size: int | None = None):
    """``(H, W, 3)`` uint8 array of an image file, or the reason it cannot be decoded (a string). ``size``: resized
    so its shorter side is ``size``, then centre-cropped to ``size x size`` (``ImageOps.fit``; the disk store's
    ``stream.image_size``)."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
            if size is not None and rgb.size != (size, size):
                rgb = ImageOps.fit(rgb, (size, size), Image.BILINEAR)
            return np.asarray(rgb)
    except UnidentifiedImageError:
        return "not an image Pillow can identify (corrupt, or another kind of file)"
    except MemoryError:  # not the file's fault: the process is out of memory
        raise
    except Exception as err:  # OSError("image file is truncated"), SyntaxError("broken PNG file"), ...
        return f"cannot be decoded ({err.__class__.__name__}: {err})"


def _decode_folder(listing: _Listing, split: str) -> tuple[Tensor, Tensor]:
    import numpy as np

    files, labels = [], []
    for label, name in enumerate(listing.classes):
        files += listing.files(split, name)
        labels += [label] * len(listing.entries[split][name])
    try:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            images = list(pool.map(_decode_image, files, chunksize=256))
    except MemoryError as err:
        raise MemoryError(f"out of memory decoding the {len(files):,} images of {listing.path / split} into one "
                          f"tensor; for data larger than memory use data.store=disk (decoded once into a "
                          f"memory-mapped store, read in batches)") from err
    bad = [(p, im) for p, im in zip(files, images) if isinstance(im, str)]
    if bad:
        more = f" (and {len(bad) - 1} more damaged file(s))" if len(bad) > 1 else ""
        raise DataError(f"{bad[0][0]}: {bad[0][1]}{more}; replace or remove the file")
    shapes: dict[tuple, Path] = {}
    for p, im in zip(files, images):
        shapes.setdefault(im.shape, p)
    if len(shapes) != 1:
        seen = ", ".join(f"{h}x{w} ({p.relative_to(listing.path)})" for (h, w, _), p in list(shapes.items())[:3])
        raise DataError(f"images under {listing.path / split} have different sizes: {seen}; resize them to one "
                        f"size before using them as a stream")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long)


def load_image_folder(path: Path, name: str = "imagefolder", drop_empty_classes: bool = False,
                      listing: _Listing | None = None) -> Source:
    """Any ``{train,test}/<class>/<image>`` tree; class ids follow the sorted folder names (not cached)."""
    listing = listing or _Listing(Path(path).expanduser(), drop_empty_classes)
    x_train, y_train = _decode_folder(listing, "train")
    x_test, y_test = _decode_folder(listing, "test")
    return Source(name, x_train, y_train, x_test, y_test, list(listing.classes))


def _cached_folder(root: Path, key: str, path: Path, name: str, drop_empty_classes: bool) -> Source:
    listing = _Listing(path, drop_empty_classes)
    sources = listing.fingerprint()
    key += "-drop_empty" if drop_empty_classes else ""
    return _cached(root, key, name, sources, lambda: load_image_folder(path, name, listing=listing))


# ----------------------------------------------------------------------------------------------- CIFAR
def _load_cifar(which: str, root: Path, download: bool, drop_empty_classes: bool = False) -> Source:
    folder = root / which
    if (folder / "train").is_dir():
        return _cached_folder(root, which, folder, which, drop_empty_classes)
    def cls():  # imported only to download or decode: importing torchvision.datasets costs seconds
        import torchvision.datasets as tvd

        return tvd.CIFAR10 if which == "cifar10" else tvd.CIFAR100

    pickled = root / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    layout = (f"expected the image folder {folder}/{{train,test}}/<class>/*.png or torchvision's {pickled}/")
    if not pickled.is_dir():
        if not download:
            raise DatasetNotFoundError(
                f"{which} not found under {root}: {layout}; set data.download=true where the network is reachable, "
                f"or point data.root at a folder holding one of them (see {README_DATA})")
        try:
            cls()(str(root), train=True, download=True)
        except Exception as err:  # URLError, socket errors, MD5 mismatch
            raise _download_failed(which, root, err, layout) from err
    files = sorted(p for p in pickled.iterdir() if p.is_file())
    sources = cache.stat_fingerprint(files, root, {"dataset": which})

    def build() -> Source:
        try:
            train = cls()(str(root), train=True, download=False)
            test = cls()(str(root), train=False, download=False)
        except (RuntimeError, OSError, EOFError, ValueError) as err:  # "Dataset not found or corrupted", unpickling
            raise DataError(f"{pickled}: torchvision cannot read {which} there ({err.__class__.__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); its files fail their MD5 check or are "
                            f"damaged: delete the folder and set data.download=true, or restore it") from err
        src = Source(which, torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(train.targets),
                     torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(test.targets),
                     list(train.classes))
        return _check_labels(src, {"train": str(pickled), "test": str(pickled)})

    return _cached(root, which + "-pickle", which, sources, build)


def _load_user_folder(root: Path, path, drop_empty_classes: bool = False) -> Source:
    if path is None:
        raise ValueError("stream.dataset=imagefolder needs stream.path=/path/to/folder holding train/ and test/")
    path = Path(path).expanduser()
    if not path.is_absolute():
        path = root / path
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    return _cached_folder(root, f"imagefolder-{key}", path, "imagefolder", drop_empty_classes)


SOURCES = {
    "digits": lambda root, download, path=None, **_: load_digits(root, download),
    "mnist": lambda root, download, path=None, **_: load_mnist(root, download),
    "fashion_mnist": lambda root, download, path=None, **_: load_fashion_mnist(root, download),
    "cifar10": lambda root, download, path=None, **kw: _load_cifar("cifar10", root, download, **kw),
    "cifar100": lambda root, download, path=None, **kw: _load_cifar("cifar100", root, download, **kw),
    "imagefolder": lambda root, download, path=None, **kw: _load_user_folder(root, path, **kw),
}


#: the datasets data.store=disk reads: image folders (CIFAR in its image-folder layout)
STORE_DATASETS = ("imagefolder", "cifar10", "cifar100")
STORES = ("memory", "disk")


def check_store(store: str) -> None:
    """A one-line error unless ``store`` is one of :data:`STORES`."""
    if store not in STORES:
        raise ValueError(f"data.store={store} is not a store; choose memory (the default: one tensor in memory) or "
                         f"disk (a memory-mapped store for data larger than memory)")


def load_source(name: str, root: str | Path | None = None, download: bool = False, path=None,
                drop_empty_classes: bool = False, store: str = "memory", store_dir=None,
                image_size: int | None = None, store_verify: bool = False) -> Source:
    """Load dataset ``name`` (one of :data:`SOURCES`) from ``root`` as uint8 tensors.

    ``drop_empty_classes`` (image folders only) drops classes whose train/ or test/ folder holds no image instead
    of failing. ``store="disk"``: the images stay on disk in a store under ``store_dir`` (default
    ``<root>/.clzoo-store``; :func:`clzoo.data.disk_store.open_store`), resized to ``image_size`` when set."""
    if name not in SOURCES:
        raise ValueError(f"unknown dataset '{name}'; choose one of {', '.join(sorted(SOURCES))}")
    root = Path(root).expanduser() if root else default_root()
    check_store(store)
    if store == "disk":
        return _load_into_store(name, root, path, drop_empty_classes, store_dir, image_size, store_verify)
    if image_size is not None:
        raise ValueError(f"stream.image_size={image_size} resizes images into a disk store: add data.store=disk "
                         f"(or remove stream.image_size to read images at their own size)")
    return SOURCES[name](root, download, path, drop_empty_classes=bool(drop_empty_classes))


def _load_into_store(name: str, root: Path, path, drop_empty_classes: bool, store_dir, image_size,
                     verify: bool) -> Source:
    from .disk_store import default_store_dir, open_store

    if name not in STORE_DATASETS:
        raise ValueError(f"data.store=disk reads image folders (stream.dataset={' | '.join(STORE_DATASETS)}); "
                         f"{name} is small enough for memory: use data.store=memory")
    if name == "imagefolder":
        if path is None:
            raise ValueError("stream.dataset=imagefolder needs stream.path=/path/to/folder holding train/ and test/")
        folder = Path(path).expanduser()
        folder = folder if folder.is_absolute() else root / folder
    else:
        folder = root / name
        if not (folder / "train").is_dir():
            raise DatasetNotFoundError(f"data.store=disk reads {name} as an image folder: expected "
                                       f"{folder}/{{train,test}}/<class>/*.png (see {README_DATA})")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"stream.image_size={image_size} is not a size in pixels (e.g. stream.image_size=224)")
    return open_store(folder, name, store_dir or default_store_dir(root), image_size, bool(verify),
                      bool(drop_empty_classes))
