"""experiments/crosscheck/dump_stream.py: what a cross-check feeds a reference implementation is clzoo's stream."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_dump():
    spec = importlib.util.spec_from_file_location("crosscheck_dump", ROOT / "experiments/crosscheck/dump_stream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the suite's presets are read relative to the checkout


def test_dump_holds_the_streams_tasks_and_smoke_keeps_n_per_class(tmp_path, at_root):
    from clzoo.engine.runner import build_stream_from_config
    from clzoo.leaderboard.suite import compose_cell, load_suite

    dump_stream = load_dump()
    suite_file = "experiments/split_digits.yaml"
    dest = tmp_path / "seed1.pt"
    dump_stream.main([suite_file, "er-b50", str(tmp_path), "1", str(dest), "--same-stream", "er-b100", "finetune"])
    dump = torch.load(dest)
    suite = load_suite(suite_file)
    cell = next(c for c in suite.cells if c.id == "er-b50")
    stream = build_stream_from_config(compose_cell(suite, cell, 1, data_root=str(tmp_path)))
    assert dump["seed"] == 1 and len(dump["tasks"]) == stream.n_tasks == 5
    for got, task in zip(dump["tasks"], stream.tasks):
        assert got["classes"] == list(task.classes)
        assert torch.equal(got["x_train"], task.x_train) and torch.equal(got["y_train"], task.y_train.long())
        assert torch.equal(got["x_test"], task.x_test) and torch.equal(got["y_test"], task.y_test.long())

    small = tmp_path / "smoke.pt"
    dump_stream.main([suite_file, "er-b50", str(tmp_path), "1", str(small), "--smoke", "3"])
    for got, full in zip(torch.load(small)["tasks"], dump["tasks"]):
        assert got["y_train"].bincount(minlength=10).tolist() == [3 if c in got["classes"] else 0 for c in range(10)]
        first = torch.cat([(full["y_train"] == c).nonzero().squeeze(1)[:3] for c in got["classes"]]).sort().values
        assert torch.equal(got["x_train"], full["x_train"][first])


def test_cells_of_another_stream_or_unknown_cells_are_refused(tmp_path, at_root):
    dump_stream = load_dump()
    with pytest.raises(SystemExit, match="no cell 'nope'"):
        dump_stream.main(["experiments/split_digits.yaml", "nope", str(tmp_path), "0", str(tmp_path / "x.pt")])
    suite = tmp_path / "two_streams.yaml"
    suite.write_text("stream: split_digits\nseeds: [0]\ncells:\n  - method: finetune\n"
                     "  - {method: finetune, name: fewer, overrides: [+stream.train_per_class=20]}\n")
    with pytest.raises(SystemExit, match="the streams of cells finetune and fewer differ"):
        dump_stream.main([str(suite), "finetune", str(tmp_path), "0", str(tmp_path / "x.pt"), "--same-stream", "fewer"])
    assert not os.path.exists(tmp_path / "x.pt")
