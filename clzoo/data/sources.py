"""Dataset sources: turn a dataset into uint8 image tensors ``(N, C, H, W)`` and int64 labels.

Every source returns a :class:`Source` and caches the decoded tensors once under
``ROOT/.clzoo-cache/`` so later runs load a single file instead of decoding images again.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing under the data root and could not be downloaded."""


@dataclass
class Source:
    """A dataset as uint8 tensors: images ``(N, C, H, W)`` and int64 labels."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def default_root() -> Path:
    """``$CLZOO_DATA`` if set, else ``~/.cache/clzoo/data``."""
    return Path(os.environ.get("CLZOO_DATA", "~/.cache/clzoo/data")).expanduser()


def _cached(root: Path, key: str, build) -> Source:
    cache = root / ".clzoo-cache" / f"{key}.pt"
    if cache.exists():
        return Source(**torch.load(cache, weights_only=True))
    src = build()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")  # concurrent runs never share a temp file
        torch.save(src.__dict__, tmp)
        os.replace(tmp, cache)
    except OSError:  # a read-only data root: the cache only saves time, the data is already decoded
        pass
    return src


def load_digits(root: Path, download: bool = False, test_fraction: float = 0.2, split_seed: int = 0) -> Source:
    """scikit-learn's bundled 8x8 digits (1,797 images), split train/test with a fixed stratified seed.

    Pixel values 0..16 are rescaled to 0..255 so every source speaks uint8. Cached like the other sources
    (importing scikit-learn costs seconds per process; the cached tensors load in milliseconds).
    """
    return _cached(Path(root), f"digits-{test_fraction}-{split_seed}",
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


def _torchvision_mnist_like(cls_name: str, folder: str, root: Path, download: bool) -> Source:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True ..."
        raise DatasetNotFoundError(
            f"{cls_name} not found under {root / folder / 'raw'} (expected train-images-idx3-ubyte, "
            f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte there); "
            f"set data.download=true where the network is reachable, or point data.root at a folder holding "
            f"{folder}/raw/ (offline: bash shared/data/install.sh DEST, then data.root=DEST)"
        ) from err
    except OSError as err:  # download attempted without a network
        raise DatasetNotFoundError(
            f"{cls_name} could not be downloaded into {root / folder / 'raw'} ({err.__class__.__name__}: {err}); "
            f"with no network, restore it offline (bash shared/data/install.sh DEST) and set data.root=DEST"
        ) from err
    return Source(
        cls_name.lower(), train.data.unsqueeze(1).clone(), train.targets.long().clone(),
        test.data.unsqueeze(1).clone(), test.targets.long().clone(), list(train.classes),
    )


def load_mnist(root: Path, download: bool = False) -> Source:
    return _cached(root, "mnist", lambda: _torchvision_mnist_like("MNIST", "MNIST", root, download))


def load_fashion_mnist(root: Path, download: bool = False) -> Source:
    return _cached(root, "fashion_mnist",
                   lambda: _torchvision_mnist_like("FashionMNIST", "FashionMNIST", root, download))


def _decode_folder(split_dir: Path, classes: list[str]) -> tuple[Tensor, Tensor]:
    from torchvision.io import ImageReadMode, decode_image, read_file

    files, labels = [], []
    for label, name in enumerate(classes):
        entries = sorted(p for p in (split_dir / name).iterdir() if p.is_file() and not p.name.startswith("."))
        files += entries
        labels += [label] * len(entries)
    if not files:
        raise DatasetNotFoundError(f"no images under {split_dir}/<class>/; expected one folder of images per class")

    def decode(path: Path) -> Tensor:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)

    with ThreadPoolExecutor(max_workers=8) as pool:
        images = list(pool.map(decode, files, chunksize=256))
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"images under {split_dir} have different sizes {sorted(shapes)[:3]}...; "
                         f"resize them to one size before using them as a stream")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def load_image_folder(path: Path, name: str = "imagefolder") -> Source:
    """Any ``{train,test}/<class>/<image>`` tree; class ids follow the sorted folder names."""
    path = Path(path).expanduser()
    train_dir, test_dir = path / "train", path / "test"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise DatasetNotFoundError(
            f"image folder {path} is missing train/ or test/; expected {path}/train/<class>/*.png and "
            f"{path}/test/<class>/*.png (one sub-folder per class, the same classes in both)"
        )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    test_classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes != test_classes:
        raise ValueError(f"{path}: train/ and test/ hold different class folders; they must match")
    x_train, y_train = _decode_folder(train_dir, classes)
    x_test, y_test = _decode_folder(test_dir, classes)
    return Source(name, x_train, y_train, x_test, y_test, classes)


def _load_cifar(which: str, root: Path, download: bool) -> Source:
    folder = root / which
    if (folder / "train").is_dir():
        return _cached(root, which, lambda: load_image_folder(folder, which))
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if which == "cifar10" else tvd.CIFAR100
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as err:
        pickled = "cifar-10-batches-py" if which == "cifar10" else "cifar-100-python"
        raise DatasetNotFoundError(
            f"{which} not found under {root}: expected either the image folder {folder}/{{train,test}}/<class>/*.png "
            f"or torchvision's {root / pickled}; set data.download=true where the network is reachable, "
            f"or restore it offline (bash shared/data/install.sh DEST) and set data.root=DEST"
        ) from err

    def to_source() -> Source:
        return Source(which, torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
                      torch.tensor(train.targets), torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
                      torch.tensor(test.targets), list(train.classes))

    return _cached(root, which + "-pickle", to_source)


SOURCES = {
    "digits": lambda root, download, path=None: load_digits(root, download),
    "mnist": lambda root, download, path=None: load_mnist(root, download),
    "fashion_mnist": lambda root, download, path=None: load_fashion_mnist(root, download),
    "cifar10": lambda root, download, path=None: _load_cifar("cifar10", root, download),
    "cifar100": lambda root, download, path=None: _load_cifar("cifar100", root, download),
    "imagefolder": lambda root, download, path=None: _load_user_folder(root, path),
}


def _load_user_folder(root: Path, path) -> Source:
    if path is None:
        raise ValueError("stream.dataset=imagefolder needs stream.path=/path/to/folder holding train/ and test/")
    path = Path(path).expanduser()
    if not path.is_absolute():
        path = root / path
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    return _cached(root, f"imagefolder-{key}", lambda: load_image_folder(path))


def load_source(name: str, root: str | Path | None = None, download: bool = False, path=None) -> Source:
    """Load dataset ``name`` (one of :data:`SOURCES`) from ``root`` as uint8 tensors."""
    if name not in SOURCES:
        raise ValueError(f"unknown dataset '{name}'; choose one of {', '.join(sorted(SOURCES))}")
    root = Path(root).expanduser() if root else default_root()
    return SOURCES[name](root, download, path)
