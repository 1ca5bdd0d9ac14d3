"""Checkpoints after every task, written atomically, with every RNG state, so a killed run resumes exactly."""
from __future__ import annotations

import hashlib
import copy
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import torch


#: temporary files of atomic writes: ``.<name>.tmp-<pid>`` beside the target (see :func:`remove_temporary_files`)
TMP_GLOB = ".*.tmp-*"


def _atomic_write(path: Path, write) -> None:
    """``write(fh)`` into a temporary file, fsync it, then rename it over ``path`` (never half-written). A
    failed write (full disk, kill signal turned into an exception) removes its temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file, fsync it, then rename it over ``path`` (never half-written)."""
    _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: Path) -> None:
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: Options added after runs were committed, with the default that leaves results unchanged. A key at this value is
#: left out of configuration hashes, so runs made before the option existed keep their hash (and are not re-run or
#: reported stale); any other value is hashed as usual. Add a new option here when its default changes nothing.
NEUTRAL_DEFAULTS: dict[tuple[str, ...], object] = {
    ("trainer", "optimizer", "milestones"): [],
    ("trainer", "optimizer", "gamma"): 0.1,
    ("budget", "convention"): "full",
    ("stream", "class_order_rng"): "torch",
    ("trainer", "validation_fraction"): 0.0,
    ("method", "per_sample"): "vmap",  # GSS scores: runs before the factored path used torch.func
    ("trainer", "validation_seed"): 0,
    # online and task-free runs (clzoo/engine/online.py)
    ("stream", "task_free"): False,
    ("trainer", "anytime_every"): None,
    ("trainer", "anytime_test_per_task"): None,
    # pretrained backbones (clzoo/models/pretrained.py)
    ("model", "checkpoint"): None,
    ("model", "allow_overlap"): False,
    # device settings (clzoo/engine/acceleration.py)
    ("trainer", "amp"): "none",
    ("trainer", "compile"): False,
    ("trainer", "channels_last"): False,
    ("trainer", "cudnn_benchmark"): False,
    # data larger than memory (clzoo/data/disk_store.py)
    ("data", "store"): "memory",
    ("stream", "image_size"): None,
    ("stream", "layout_help"): None,   # also unhashed (UNHASHED_KEYS); here for the leaderboard's own hash
    # the protocol of PyCIL / MEMO's CIFAR runs (clzoo/models/backbones.py, clzoo/data/augment.py)
    ("model", "conv_init"): "default",
    ("trainer", "first_task_epochs"): None,
    ("trainer", "first_task_optimizer"): None,
    ("method", "head"): "linear",   # er_ace's classifier choice
    ("method", "loss"): "bce",      # icarl's loss (ce_kd: PyCIL's)
    ("method", "kd_temperature"): 2.0,
    ("stream", "augment", "brightness"): 0.0,
    ("stream", "augment", "resized_crop"): None,  # the ViT-B/16 protocols' RandomResizedCrop (clzoo/data/augment.py)
}


def without_neutral_defaults(config: dict) -> dict:
    """A copy of ``config`` without the options of :data:`NEUTRAL_DEFAULTS` that are at their neutral default."""
    out = copy.deepcopy(config)
    for path, neutral in NEUTRAL_DEFAULTS.items():
        node = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] == neutral:
            del node[path[-1]]
    return out


#: dotted keys that do not change what a run computes (how far it goes, where it runs, how it logs): left out of
#: :func:`config_hash`, and so free to change on a resume. The CPU thread count is not among them (matrix products
#: round differently with 1 and 2 threads): the hash gets the count in effect, see runner.run_config_hash.
UNHASHED_KEYS = ("resume", "log", "hydra", "trainer.max_tasks", "trainer.device", "trainer.log_every",
                 "trainer.eval_batch_size", "data.store_dir", "data.store_verify", "stream.layout_help")


def config_hash(config: dict) -> str:
    """A short stable hash of a run's configuration (what the results depend on)."""
    relevant = without_neutral_defaults(config)
    for key in UNHASHED_KEYS:
        *parents, leaf = key.split(".")
        node = relevant
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class CheckpointError(RuntimeError):
    """A checkpoint file is damaged (truncated, altered) or not a clzoo checkpoint."""


CHECKPOINT_KEYS = ("task_id", "method", "rng", "progress")


def checkpoint_path(run_dir: Path, task_id: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"task_{task_id:03d}.pt"


def digest_path(path: Path) -> Path:
    """Where the SHA-256 of checkpoint ``path`` is kept (written after the checkpoint itself)."""
    return Path(path).with_name(Path(path).name + ".sha256")


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("task_*.pt")) if folder.is_dir() else []


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of the last completed task (see :func:`load_latest_intact` for one that is verified)."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, task_id: int, method_state: dict, progress: dict, keep_last: int = 2,
                    rng: dict | None = None) -> Path:
    """Write the checkpoint of ``task_id`` atomically, then its SHA-256 beside it; keep the last ``keep_last``.
    ``rng``: the random states to record (default: the current ones)."""
    path = checkpoint_path(run_dir, task_id)
    buf = io.BytesIO()
    state = {"task_id": task_id, "method": method_state, "rng": rng_state() if rng is None else rng,
             "progress": progress}
    torch.save(state, buf)
    data = buf.getbuffer()
    digest_path(path).unlink(missing_ok=True)  # never a digest of another file's bytes beside the new one
    atomic_write_bytes(path, data)
    atomic_write_text(digest_path(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    older = checkpoints(run_dir)[:-keep_last] if keep_last else []
    for old in older:
        old.unlink(missing_ok=True)
        digest_path(old).unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    """Load and verify one checkpoint: its SHA-256 (when written with one) and its contents, else
    :class:`CheckpointError` saying what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot be read ({err.strerror})") from None
    side = digest_path(path)
    if side.is_file():
        expected = (side.read_text().split() or [""])[0]
        if hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointError(f"its SHA-256 does not match {side.name} ({len(data):,} bytes: truncated or "
                                  f"altered)")
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises several types for damaged files
        raise CheckpointError(f"cannot be loaded ({len(data):,} bytes; {type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else 'damaged'})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise CheckpointError("is not a clzoo checkpoint (keys task_id, method, rng, progress missing)")
    return ckpt


def load_latest_intact(run_dir: Path) -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies: ``(path, checkpoint, damaged)``, where ``damaged`` lists the newer
    ones that did not, with the reason, newest first. ``(None, None, damaged)`` when none verifies."""
    damaged = []
    for path in reversed(checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path), damaged
        except CheckpointError as err:
            damaged.append((path, str(err)))
    return None, None, damaged


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``<name>.damaged`` (kept for inspection, never loaded again)."""
    path = Path(path)
    target = path.with_name(path.name + ".damaged")
    os.replace(path, target)
    digest_path(path).unlink(missing_ok=True)
    return target


def remove_temporary_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed run or a full disk left in ``run_dir`` and its
    ``checkpoints/`` (call it while holding the folder's lock: no other writer is active then)."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if folder.is_dir():
            for tmp in folder.glob(TMP_GLOB):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
    return removed


def ensure_writable(folder: Path) -> None:
    """Fail now, with the reason, if files cannot be created in ``folder`` (created if missing): a run must not
    train a whole task and only then find it cannot save it."""
    from .lock import RunDirError

    folder = Path(folder)
    probe = folder / f".write-test.tmp-{os.getpid()}"
    existed = folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"0")
        probe.unlink()
        if not existed:  # created when the first file goes there, as before
            folder.rmdir()
    except OSError as err:
        raise RunDirError(f"cannot write to {folder} ({err.strerror or err}); make it writable or choose another "
                          f"run folder (hydra.run.dir=...)") from None


def host_snapshot(obj):
    """A deep copy of ``obj`` whose tensors are copies on the host: the state as it is now, which training may go
    on changing (dict subclasses and their attributes, such as a state dict's ``_metadata``, are kept)."""
    memo = {}

    def collect(item):
        if isinstance(item, torch.Tensor):
            memo.setdefault(id(item), item.detach().to("cpu", copy=True))
        elif isinstance(item, dict):
            for value in item.values():
                collect(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                collect(value)

    collect(obj)
    return copy.deepcopy(obj, memo)


class BackgroundCheckpoints:
    """Per-task checkpoints written on a worker thread while the next task trains.

    Serialising, hashing and fsyncing a checkpoint costs 0.1 to 0.25 s for a ResNet-18 on a small CPU, each task:
    on a GPU, where a task of a short run trains in a second, that was most of a run's overhead over a bare loop
    (bench/README.md, "On a GPU"). :meth:`submit` takes a host snapshot of the state (tensors copied, the random
    states read) at the moment the task ends, so the file holds what a synchronous write would have; the files
    appear in task order, each atomically. :meth:`wait` returns once every submitted checkpoint is written and
    raises the error of one that failed; the runner waits before it writes results.json and whenever a run
    stops, so a run that ends has all of its checkpoints (a killed one may lack the newest: it resumes from the
    one before, to the same results).
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clzoo-checkpoint")
        self._pending = []

    def submit(self, run_dir: Path, task_id: int, method_state: dict, progress: dict, keep_last: int = 2) -> None:
        self._raise_failed()
        snapshot = (host_snapshot(method_state), host_snapshot(progress), rng_state())
        self._pending.append(self._pool.submit(
            lambda: save_checkpoint(run_dir, task_id, snapshot[0], snapshot[1], keep_last, rng=snapshot[2])))

    def _raise_failed(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
