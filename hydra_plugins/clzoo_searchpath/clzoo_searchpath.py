"""Puts experiment presets on Hydra's search path for ``clzoo-run`` (and every composition of clzoo's config):

* ``conf/`` of the working directory, when there is one (runs from a clone of the repository find
  ``conf/experiment/*.yaml`` and ``conf/hparams_search/*.yaml``);
* every folder named in the environment variable ``CLZOO_CONF_PATH`` (separated by ``os.pathsep``).

Entries are appended, so clzoo's own ``clzoo/conf`` stays first for its groups and ``hydra.searchpath=[...]``
keeps working as usual. Hydra finds this plugin because it lives in the ``hydra_plugins`` namespace package.
"""
from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

#: the environment variable naming extra config folders (``os.pathsep``-separated)
ENV_VAR = "CLZOO_CONF_PATH"


def preset_folders() -> list[Path]:
    """The folders this plugin adds, in order (only those that exist)."""
    folders = [Path.cwd() / "conf"]
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if entry.strip():
            folders.append(Path(os.path.expanduser(entry.strip())))
    out: list[Path] = []
    for folder in folders:
        folder = folder.resolve()
        if folder.is_dir() and folder not in out:
            out.append(folder)
    return out


class ClzooSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # only for clzoo's own application (clzoo-run, clzoo.config.compose), not for every Hydra app in the env
        if not any(e.path in ("pkg://clzoo.conf", "clzoo.conf") or str(e.path).endswith("clzoo/conf")
                   for e in search_path.get_path()):
            return
        for folder in preset_folders():
            search_path.append(provider="clzoo-presets", path=f"file://{folder}")
