"""Experiment presets: ``conf/experiment/*.yaml`` (``# @package _global_``), chosen with ``+experiment=NAME``.

Hydra finds them through the search-path plugin ``hydra_plugins/clzoo_searchpath`` (``conf/`` of the working
directory and the folders of ``CLZOO_CONF_PATH``; ``hydra.searchpath=[...]`` adds more as usual). This module
lists them, checks a preset before a run (an unknown name, or a preset naming a method that is not installed,
is one line with the list of presets), and reads the method a preset selects (leaderboard suites name presets).
No torch import here: ``clzoo-run`` checks presets before loading anything heavy.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Sequence

import yaml

from hydra_plugins.clzoo_searchpath.clzoo_searchpath import ENV_VAR, preset_folders

PACKAGE_CONF = Path(__file__).resolve().parent / "conf"
_CHOICE = re.compile(r"^\+{0,2}(experiment|hparams_search)=(.*)$")


class PresetError(ValueError):
    """An unknown preset, or one that cannot run here (it names a config that is not installed)."""


def folders(extra: Sequence[str | Path] = ()) -> list[Path]:
    return [*preset_folders(), *(Path(p) for p in extra)]


def available(group: str = "experiment", extra: Sequence[str | Path] = ()) -> list[str]:
    """Names of the presets of ``group`` on the search path (sorted)."""
    names = {p.stem for folder in folders(extra) for p in (folder / group).glob("*.yaml")}
    names |= {p.stem for p in (PACKAGE_CONF / group).glob("*.yaml")}
    return sorted(names)


def find(name: str, group: str = "experiment", extra: Sequence[str | Path] = ()) -> Path | None:
    for folder in [PACKAGE_CONF, *folders(extra)]:
        path = folder / group / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def _listing(group: str, extra=()) -> str:
    names = available(group, extra)
    where = ", ".join(str(f) for f in folders(extra)) or "none found"
    if not names:
        return (f"no {group} presets on the search path (folders: {where}); run from the repository root, which "
                f"holds conf/{group}/, or name the folder holding {group}/ in {ENV_VAR}")
    return f"available {group} presets: {', '.join(names)} (in {where})"


def defaults_of(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text()) or {}
    out = []
    for item in data.get("defaults") or []:
        if isinstance(item, dict):
            out += [f"{k}: {v}" for k, v in item.items()]
        else:
            out.append(str(item))
    return out


def selections(name: str, group: str = "experiment", extra=(), _seen=None) -> dict[str, str]:
    """The config groups a preset chooses (``override /method: der`` -> ``{'method': 'der'}``), following the
    presets it includes (``- seq_mnist`` in its defaults list)."""
    path = find(name, group, extra)
    if path is None:
        raise PresetError(f"+{group}={name}: no such preset; {_listing(group, extra)}")
    seen = _seen if _seen is not None else set()
    if name in seen:
        return {}
    seen.add(name)
    chosen: dict[str, str] = {}
    for entry in defaults_of(path):
        m = re.match(r"^override\s+/?([\w/]+)\s*:\s*(\S+)$", entry)
        if m:
            chosen[m.group(1)] = m.group(2)
        elif entry != "_self_" and ":" not in entry and not entry.startswith("/"):
            chosen = {**selections(entry, group, extra, seen), **chosen}
    return chosen


def group_options(group: str, extra=()) -> list[str]:
    names = {p.stem for p in (PACKAGE_CONF / group).glob("*.yaml")}
    names |= {p.stem for folder in folders(extra) for p in (folder / group).glob("*.yaml")}
    return sorted(names)


def check(name: str, group: str = "experiment", extra=()) -> dict[str, str]:
    """Raise :class:`PresetError` unless preset ``name`` exists and every config it chooses is installed."""
    chosen = selections(name, group, extra)
    for grp, option in chosen.items():
        if grp.startswith("hydra/"):  # Hydra's own groups: options come from installed plugins
            if grp == "hydra/sweeper" and option == "optuna" and importlib.util.find_spec(
                    "hydra_plugins.hydra_optuna_sweeper") is None:
                raise PresetError(f"+{group}={name} uses the Optuna sweeper, which is not installed: "
                                  "pip install 'clzoo[sweep]' (hydra-optuna-sweeper)")
            continue
        options = group_options(grp, extra)
        if option not in options:
            raise PresetError(f"+{group}={name} ({find(name, group, extra)}) chooses {grp}={option}, which is not "
                              f"installed ({grp} options: {', '.join(options)}); {_listing(group, extra)}")
    return chosen


def check_overrides(argv: Sequence[str]) -> None:
    """``clzoo-run +experiment=NAME ...``: check the preset before Hydra composes (see :func:`check`)."""
    extra = []
    for arg in argv:
        m = re.match(r"^hydra\.searchpath=\[(.*)\]$", arg)
        if m:
            extra += [p.strip().strip("'\"").removeprefix("file://") for p in m.group(1).split(",") if p.strip()]
    for arg in argv:
        m = _CHOICE.match(arg)
        if m and m.group(2) and "," not in m.group(2) and not m.group(2).startswith(("choice(", "range(")):
            check(m.group(2).strip("'\""), m.group(1), [e for e in extra if not e.startswith("pkg://")])
