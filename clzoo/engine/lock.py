"""One run per folder: an exclusive lock on ``<run_dir>/.clzoo.lock`` held while a run writes there.

The lock is an ``flock`` on an open file, so the kernel releases it when the process ends, however it ends
(kill -9 included): a folder is never left locked by a dead run. A second run in the same folder fails at once
with :class:`RunDirBusyError` instead of mixing its checkpoints, results and Hydra files with the first one's.
The lock is re-entrant within a process (``clzoo-run`` takes it before Hydra's files are written, then
:func:`clzoo.engine.runner.run` takes it again).
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against sharing a folder
    fcntl = None

LOCK_NAME = ".clzoo.lock"

#: folders this process holds: resolved path -> [file descriptor, depth]
_HELD: dict[str, list] = {}


class RunDirError(RuntimeError):
    """The run folder cannot be used (another run holds it, or it is not writable)."""


class RunDirBusyError(RunDirError):
    """Another process is running in this run directory."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    return text or "another process"


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path):
    """Hold the exclusive lock of ``run_dir`` (created if missing) for the ``with`` block."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str(run_dir.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunDirError(f"cannot create the lock file {path} ({err.strerror}); the run folder must be "
                              f"writable (choose another hydra.run.dir)") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirBusyError(f"{run_dir} is in use by another run ({_holder(path)}); wait for it to end or "
                                  f"choose another folder (hydra.run.dir=...)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
             .encode())
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        _HELD.pop(key, None)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
