"""A method shipped by a separate package is found by name: entry point (Python API) and Hydra search path (CLI)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

METHOD = '''
import torch.nn.functional as F
from clzoo import Method


class SmoothER(Method):
    """ER with label smoothing on the replayed samples."""

    def __init__(self, model, ctx, buffer=200, minibatch_size=10, smoothing=0.1):
        super().__init__(model, ctx)
        self.minibatch_size, self.smoothing = minibatch_size, smoothing
        self.buffer = self.make_buffer(buffer)

    def observe(self, x, y, task_id):
        loss = F.cross_entropy(self.model(self.augment(x)), y)
        if not self.buffer.is_empty:
            replay = self.buffer.sample(self.minibatch_size)
            loss = loss + F.cross_entropy(self.model(self.augment(replay.x)), replay.y,
                                          label_smoothing=self.smoothing)
        self.buffer.add(x, y, task_id)
        return self.step(loss)


class MemoryER(SmoothER):
    """A second method of the package, whose buffer argument is not called `buffer`."""

    def __init__(self, model, ctx, memory=100, minibatch_size=10):
        super().__init__(model, ctx, buffer=memory, minibatch_size=minibatch_size, smoothing=0.0)
'''

SEARCH_PATH = '''
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class SmoothERSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="smooth-er", path="pkg://smooth_er.conf")
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """An installed-looking plugin package: its modules plus a dist-info with the entry point metadata."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "smooth_er" / "conf" / "method").mkdir(parents=True)
    (root / "smooth_er" / "__init__.py").write_text("")
    (root / "smooth_er" / "method.py").write_text(METHOD)
    (root / "smooth_er" / "conf" / "__init__.py").write_text("")
    (root / "smooth_er" / "conf" / "method" / "smooth_er.yaml").write_text(textwrap.dedent("""\
        _target_: smooth_er.method.SmoothER
        buffer:
          capacity: ${clzoo.buffer_capacity:${budget.mb},200}
          selection: reservoir
        minibatch_size: 10
        smoothing: 0.1
        """))
    # minibatch_size differs from the signature on purpose: the kit must build the method from this file
    (root / "smooth_er" / "conf" / "method" / "memory_er.yaml").write_text(textwrap.dedent("""\
        _target_: smooth_er.method.MemoryER
        memory: {capacity: "${clzoo.buffer_capacity:${budget.mb},100}"}
        minibatch_size: 6
        """))
    (root / "hydra_plugins" / "smooth_er_searchpath").mkdir(parents=True)
    (root / "hydra_plugins" / "smooth_er_searchpath" / "__init__.py").write_text(SEARCH_PATH)
    dist = root / "clzoo_smooth_er-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clzoo-smooth-er\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[clzoo.methods]\nsmooth_er = smooth_er.method:SmoothER\n"
                                           "memory_er = smooth_er.method:MemoryER\n")
    return root


def _forget_hydra_plugins():
    """Hydra scans the hydra_plugins namespace once per process: forget the scan, as a fresh process would."""
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton

    Singleton._instances.pop(Plugins, None)


@pytest.fixture
def on_path(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    import importlib

    importlib.invalidate_caches()
    _forget_hydra_plugins()
    yield plugin_dir
    for name in [m for m in sys.modules if m.startswith(("smooth_er", "hydra_plugins.smooth_er"))]:
        del sys.modules[name]
    _forget_hydra_plugins()


def test_plugin_found_by_name_and_keeps_the_contract(on_path):
    import clzoo
    from clzoo.methods.registry import get_method_class
    from clzoo.testing import check_method

    assert "smooth_er" in clzoo.available_methods()
    cls = get_method_class("smooth_er")
    assert cls.__module__ == "smooth_er.method" and cls.method_name == "smooth_er"
    report = check_method("smooth_er", buffer={"capacity": 40})
    assert report.checks == ["trains and evaluates", "ledger equals state_dict bytes", "no tensors outside state_dict",
                             "resume gives identical results", "auto buffer fills the budget"]
    assert report.results["memory"]["by_category"]["exemplars"] == 40 * 64
    assert report.config_source == "conf/method/smooth_er.yaml"


def test_kit_builds_a_plugin_from_its_config_and_finds_a_buffer_not_named_buffer(on_path, capsys):
    from clzoo.testing import check_method

    report = check_method("memory_er", stream={"train_per_task": 60})
    assert report.config_source == "conf/method/memory_er.yaml"
    assert report.results["config"]["method"]["minibatch_size"] == 6  # the yaml's, not the signature's 10
    assert report.results["memory"]["by_category"]["exemplars"] == 100 * 64
    assert "auto buffer fills the budget" in report.checks and report.auto_capacity > 100
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("check_method(memory_er): 5 checks passed"), out


def test_plugin_config_found_by_the_cli(plugin_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "clzoo", "method=smooth_er", "method.smoothing=0.2", "stream.train_per_task=60",
         "log.progress=false", "log.tensorboard=false", "log.plots=false", f"hydra.run.dir={out}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "smooth_er"
    assert results["config"]["method"]["smoothing"] == 0.2
    assert results["memory"]["by_category"]["exemplars"] == 200 * 64
