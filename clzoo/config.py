"""Compose run configurations from Python with the same config groups and overrides as ``clzoo-run``."""
from __future__ import annotations

from typing import Sequence

from omegaconf import OmegaConf, open_dict


def buffer_capacity(budget_mb, default):
    """``${clzoo.buffer_capacity:${budget.mb},500}``: ``auto`` when a budget is set, else the default capacity.

    So ``clzoo-run method=er budget.mb=0.5`` sizes ER's buffer from the budget, and ``clzoo-run method=er``
    keeps 500 samples; ``method.buffer.capacity=N`` always wins.
    """
    return "auto" if budget_mb is not None else default


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("clzoo.buffer_capacity"):
        OmegaConf.register_new_resolver("clzoo.buffer_capacity", buffer_capacity)


register_resolvers()


def compose(overrides: Sequence[str] = ()) -> dict:
    """The resolved configuration ``clzoo-run OVERRIDES...`` would use, as a plain dict (without ``hydra``)."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clzoo.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        container = OmegaConf.to_container(cfg, resolve=True)
    GlobalHydra.instance().clear()
    container["_choices"] = {k: v for k, v in choices.items() if not k.startswith("hydra")}
    return container
