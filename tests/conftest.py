"""Shared test setup: one torch thread (stable timings, bit-reproducible runs), run directories, and a helper
that calls ``clzoo-run`` (or ``python -m clzoo``) in a subprocess the way a user would."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

#: the console script installed next to the interpreter running the tests (else the one on PATH)
_NEXT_TO_PYTHON = Path(sys.executable).with_name("clzoo-run")
CLZOO_RUN = str(_NEXT_TO_PYTHON) if _NEXT_TO_PYTHON.exists() else (shutil.which("clzoo-run") or "clzoo-run")
TESTS_DIR = Path(__file__).resolve().parent
#: overrides every test run uses: quiet, single-threaded (so runs in different processes agree to the bit)
QUIET = ["log.progress=false", "trainer.num_threads=1"]


def real_data_root(folder: str) -> Path | None:
    """``$CLZOO_DATA`` when it holds ``folder`` (e.g. ``MNIST/raw``), else None (the caller skips)."""
    root = os.environ.get("CLZOO_DATA")
    if root and (Path(root).expanduser() / folder).is_dir():
        return Path(root).expanduser()
    return None


def skip_reason(folder: str) -> str:
    return (f"needs real data: set CLZOO_DATA to a folder holding {folder} "
            f"(README.md, section 'Real datasets'; data.download=true fetches it)")


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A fresh, not yet existing run directory (as hydra.run.dir would be)."""
    return tmp_path / "run"


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """A data root holding the decoded digits cache, so subprocess runs skip importing scikit-learn."""
    from clzoo.data import load_source

    root = tmp_path_factory.mktemp("data")
    load_source("digits", root)
    assert (root / ".clzoo-cache").is_dir()
    return root


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra or {})
    return env


@pytest.fixture
def cli(tmp_path):
    """``cli(*overrides, module=False, env=None, timeout=180)`` runs ``clzoo-run`` (``python -m clzoo`` with
    module=True) in ``tmp_path`` and returns the CompletedProcess (text stdout/stderr)."""

    def call(*overrides: str, module: bool = False, env: dict | None = None, timeout: float = 180,
             quiet: bool = True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "clzoo"] if module else [CLZOO_RUN]
        flags = [a for a in overrides if a.startswith("-")]  # Hydra's flags (-m, --cfg) go before overrides
        cmd += [*flags, *(QUIET if quiet else []), *(a for a in overrides if not a.startswith("-"))]
        return subprocess.run(cmd, cwd=tmp_path, env=_env(env), capture_output=True, text=True, timeout=timeout)

    return call


@pytest.fixture
def popen_cli(tmp_path):
    """Like ``cli`` but returns the running Popen (for tests that interrupt a run)."""
    procs = []

    def start(*overrides: str) -> subprocess.Popen:
        proc = subprocess.Popen([CLZOO_RUN, *QUIET, *overrides], cwd=tmp_path, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # never leave a run behind, whatever the test did
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def error_line(stderr: str) -> str:
    """The ``clzoo-run: error: ...`` line of a failed run (asserting there is exactly one, and no traceback)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("clzoo-run: error:")]
    assert len(lines) == 1, f"expected one 'clzoo-run: error:' line, got stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    return lines[0]
