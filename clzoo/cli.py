"""``clzoo-run``: the Hydra entry point. ``clzoo-run stream=split_mnist method=der budget.mb=2 seed=1``.

Around :func:`clzoo.engine.runner.run` it (1) checks the configuration before any work (:func:`clzoo.config.validate`:
one line naming the key), (2) copies everything the run prints into the run folder's ``cli.log``, and (3) leaves a
``status.json`` in the run folder: ``complete`` / ``partial``, or ``failed`` with the error.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, expand_user_overrides, name_run, register_resolvers, validate
from .data import DatasetNotFoundError, StreamError
from .memory import BudgetError
from .methods import NonFiniteLossError

USER_ERRORS = (ConfigError, DatasetNotFoundError, StreamError, BudgetError, NonFiniteLossError, ValueError, KeyError)


class _Tee:
    """Write to the console stream and to the run's log file."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def write_status(run_dir: Path, status: str, **extra) -> None:
    from .engine.checkpoint import atomic_write_text

    record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv), **extra}
    atomic_write_text(Path(run_dir) / "status.json", json.dumps(record, indent=1) + "\n")


def check_resume(container: dict, run_dir: Path) -> None:
    """``resume=true``: continue after the last checkpoint in the run folder; with none, say so and start from
    task 0 (so one command both starts and continues a run). ``resume=must``: no checkpoint is an error."""
    from .engine.checkpoint import latest_checkpoint

    mode = container.get("resume", False)
    if not mode or latest_checkpoint(run_dir) is not None:
        container["resume"] = bool(mode)
        return
    folder = Path(run_dir)
    what = ("holds no checkpoint (no task of a run there has completed)"
            if any(p.name not in (".hydra", ".clzoo.lock") and not p.name.endswith(".log") for p in folder.iterdir())
            else "is a new, empty run folder")
    hint = "" if "hydra.run.dir" in " ".join(sys.argv) else " (to continue a run, give its folder: hydra.run.dir=...)"
    if mode == "must":
        raise ConfigError(f"resume=must but {folder} {what}{hint}; use resume=true to start there from task 0")
    print(f"resume=true: {folder} {what}{hint}; starting from task 0", flush=True)
    container["resume"] = True


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from .engine.lock import RunDirError, run_dir_lock

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode.name == "MULTIRUN"
    # the folder's lock first: a second run in a busy folder must not write its log or status over the first's
    lock = run_dir_lock(run_dir)
    try:
        lock.__enter__()
    except RunDirError as err:
        print(f"clzoo-run: error: {err}", file=sys.stderr)
        if multirun:
            raise
        sys.exit(2)
    log_path = run_dir / f"{hc.job.name}.log"
    log = open(log_path, "a", buffering=1)
    out, err_stream = sys.stdout, sys.stderr
    sys.stdout = _Tee(out, log)
    try:
        try:
            container = OmegaConf.to_container(cfg, resolve=True)
            choices = OmegaConf.to_container(hc.runtime.choices)
            container["_choices"] = {k: v for k, v in choices.items() if not k.startswith("hydra")}
            name_run(container)
            validate(container)
            check_resume(container, run_dir)
            from .engine.runner import ResumeError, run

            save_hydra_files(cfg, run_dir)
            try:
                results = run(container, run_dir)
            except ResumeError as err:
                raise ConfigError(str(err)) from err
        except USER_ERRORS + (RunDirError,) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"clzoo-run: error: {message}", file=err_stream)
            log.write(f"clzoo-run: error: {message}\n")
            write_status(run_dir, "failed", error=str(message), error_type=type(err).__name__)
            if multirun:
                raise
            sys.exit(2)
        except BaseException as err:  # a bug or an interruption: the folder still says what happened
            log.write("".join(traceback.format_exception(err)))
            kind = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            write_status(run_dir, kind, error=f"{type(err).__name__}: {err}", error_type=type(err).__name__)
            raise
        write_status(run_dir, results["status"], completed_tasks=results["completed_tasks"],
                     n_tasks=results["stream"]["n_tasks"])
        print(f"results: {run_dir}/results.json")
    finally:
        sys.stdout = out
        log.close()
        lock.__exit__(None, None, None)
    suffix = "_task_il" if results.get("headline") == "task_il" else ""
    return results["metrics"]["final_acc" + suffix]


def save_hydra_files(cfg: DictConfig, run_dir: str) -> None:
    """``<run_dir>/.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them (conf/config.yaml sets
    ``hydra.output_subdir: null`` so that they are written here, under the run folder's lock)."""
    from hydra.core.hydra_config import HydraConfig

    from .engine.checkpoint import atomic_write_text

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is not None:  # the user asked Hydra to write them (already done)
        return
    folder = Path(run_dir) / ".hydra"
    files = {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
             "overrides.yaml": hydra_cfg.overrides.task}
    for name, node in files.items():
        atomic_write_text(folder / name, OmegaConf.to_yaml(node))


def main() -> None:
    register_resolvers()
    sys.argv[1:] = expand_user_overrides(sys.argv[1:])
    _hydra_main()


import warnings  # noqa: E402


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning):
    """Data warnings (skipped files, a rebuilt cache) read as one line, like the errors; others as Python shows them."""
    from .data import DataWarning

    if issubclass(category, DataWarning):
        return f"clzoo-run: warning: {message}\n"
    return _default(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning
