"""``clzoo-run``: the Hydra entry point. ``clzoo-run stream=split_mnist method=der budget.mb=2 seed=1``."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import register_resolvers
from .data import DatasetNotFoundError, StreamError
from .memory import BudgetError
from .methods import NonFiniteLossError

USER_ERRORS = (DatasetNotFoundError, StreamError, BudgetError, NonFiniteLossError, ValueError, KeyError)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from .engine.lock import RunDirError, run_dir_lock
    from .engine.runner import ResumeError, run

    container = OmegaConf.to_container(cfg, resolve=True)
    choices = OmegaConf.to_container(HydraConfig.get().runtime.choices)
    container["_choices"] = {k: v for k, v in choices.items() if not k.startswith("hydra")}
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        with run_dir_lock(run_dir):
            save_hydra_files(cfg, run_dir)
            results = run(container, run_dir)
    except USER_ERRORS + (ResumeError, RunDirError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"clzoo-run: error: {message}", file=sys.stderr)
        if HydraConfig.get().mode.name == "MULTIRUN":
            raise
        sys.exit(2)
    print(f"results: {run_dir}/results.json")
    return results["metrics"]["final_acc"]


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
    _hydra_main()


import warnings  # noqa: E402


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning):
    """Data warnings (skipped files, a rebuilt cache) read as one line, like the errors; others as Python shows them."""
    from .data import DataWarning

    if issubclass(category, DataWarning):
        return f"clzoo-run: warning: {message}\n"
    return _default(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning
