"""Checkpoints after every task, written atomically, with every RNG state, so a killed run resumes exactly."""
from __future__ import annotations

import hashlib
import copy
import json
import os
import random
from pathlib import Path

import numpy as np
import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file, fsync it, then rename it over ``path`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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


def config_hash(config: dict) -> str:
    """A short stable hash of a run's configuration (what the results depend on)."""
    config = without_neutral_defaults(config)
    relevant = {k: v for k, v in config.items() if k not in ("resume", "log", "hydra")}
    if isinstance(relevant.get("trainer"), dict):
        # how far a run goes, where it runs and how it logs are not part of what it computes
        ignored = ("max_tasks", "device", "num_threads", "log_every", "eval_batch_size")
        relevant["trainer"] = {k: v for k, v in relevant["trainer"].items() if k not in ignored}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def checkpoint_path(run_dir: Path, task_id: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"task_{task_id:03d}.pt"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of the last completed task (only complete files exist: writes are atomic)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = sorted(folder.glob("task_*.pt"))
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, task_id: int, method_state: dict, progress: dict, keep_last: int = 2) -> Path:
    path = checkpoint_path(run_dir, task_id)
    atomic_torch_save({"task_id": task_id, "method": method_state, "rng": rng_state(), "progress": progress}, path)
    older = sorted(path.parent.glob("task_*.pt"))[:-keep_last] if keep_last else []
    for old in older:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
