"""Experiment presets (conf/experiment, on Hydra's search path through hydra_plugins/clzoo_searchpath), suites that
name presets (configuration hashes unchanged), the validation split and the Optuna sweep presets."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from clzoo.config import compose
from clzoo.leaderboard.suite import SuiteError, compose_cell, config_hash, load_suite, parse_suite
from clzoo.presets import PresetError, available, check, check_overrides, selections

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CLZOO_CONF_PATH", "")  # restored after the test


def test_repository_conf_is_on_the_search_path(in_repo):
    cfg = compose(["+experiment=der_seq_mnist"])
    assert cfg["method"]["_target_"].endswith("DER") and cfg["stream"]["name"] == "split_mnist"
    assert cfg["trainer"]["optimizer"]["lr"] == 0.03 and cfg["method"]["alpha"] == 1.0
    assert cfg["trainer"]["batch_size"] == 10 and cfg["_choices"]["model"] == "mlp"
    assert cfg["method"]["buffer"]["capacity"] == 500  # a preset never fixes the budget
    # command-line overrides win over the preset
    assert compose(["+experiment=der_seq_mnist", "method.alpha=0.3"])["method"]["alpha"] == 0.3


def test_every_preset_composes_and_chooses_installed_configs(in_repo):
    names = available("experiment")
    suites = [p.stem for p in (REPO / "experiments").glob("*.yaml")]
    assert set(suites) <= set(names)  # a protocol preset per suite
    for name in names:  # every preset: its configs are installed (reading the files, no composing)
        check(name)
    # composing: the suites' protocols and one method preset of each suite (composing all 50 takes ~10 s)
    for name in suites + [f"{m}_{s}" for m, s in (("si", "perm_mnist"), ("clr", "split_digits"),
                                                  ("memo", "memo_cifar100_full"), ("icarl", "seq_mnist"))]:
        cfg = compose([f"+experiment={name}"])
        assert cfg["_choices"]["method"] == selections(name).get("method", "er")
    assert len(names) >= 50


def test_env_var_and_hydra_searchpath(tmp_path, monkeypatch):
    extra = tmp_path / "mine"
    (extra / "experiment").mkdir(parents=True)
    (extra / "experiment" / "tiny.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /method: si\n  - _self_\nseed: 7\n")
    monkeypatch.chdir(tmp_path)  # no conf/ here
    monkeypatch.setenv("CLZOO_CONF_PATH", "")  # restored after the test
    with pytest.raises(PresetError, match="no experiment presets on the search path.*CLZOO_CONF_PATH"):
        check_overrides(["+experiment=tiny"])
    # hydra.searchpath keeps working (Hydra's own mechanism), and the pre-check reads it
    check_overrides([f"hydra.searchpath=[file://{extra}]", "+experiment=tiny"])
    monkeypatch.setenv("CLZOO_CONF_PATH", str(extra))
    cfg = compose(["+experiment=tiny"])
    assert cfg["seed"] == 7 and cfg["_choices"]["method"] == "si"


def test_unknown_preset_and_uninstalled_method_name_the_presets(in_repo, tmp_path, monkeypatch, capsys):
    with pytest.raises(PresetError, match=r"\+experiment=nope: no such preset; available experiment presets: .*der_seq_mnist"):
        check_overrides(["+experiment=nope"])
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "ghost.yaml").write_text(
        "# @package _global_\ndefaults:\n  - seq_mnist\n  - override /method: not_installed\n")
    monkeypatch.setenv("CLZOO_CONF_PATH", str(tmp_path))
    assert selections("ghost")["stream"] == "split_mnist"  # followed through the included protocol preset
    with pytest.raises(PresetError, match="chooses method=not_installed, which is not installed.*available experiment presets"):
        check("ghost")
    import sys

    from clzoo import cli

    monkeypatch.setattr(sys, "argv", ["clzoo-run", "+experiment=ghost"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("clzoo-run: error: +experiment=ghost") and "Traceback" not in err


def test_suites_with_presets_keep_the_committed_runs_hashes(in_repo):
    for suite_name, cell_id in (("seq_mnist", "der-b200"), ("seq_mnist", "der-b500"), ("seq_mnist", "lwf"),
                                ("split_digits", "clr"), ("perm_mnist", "si")):
        suite = load_suite(REPO / "experiments" / f"{suite_name}.yaml")
        cell = suite.cell(cell_id)
        assert cell.preset == f"{cell.name}_{suite_name}"
        results = REPO / "leaderboard" / "runs" / suite_name / cell_id / "seed0" / "results.json"
        if not results.is_file():
            pytest.skip(f"no committed run {results}")
        committed = json.loads(results.read_text())["leaderboard"]["config_hash"]
        assert config_hash(compose_cell(suite, cell, 0)) == committed


def test_suite_finds_its_repository_presets_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLZOO_CONF_PATH", "")  # restored after the test
    suite = load_suite(REPO / "experiments" / "split_digits.yaml")
    assert suite.cell("der-b50").preset == "der_split_digits"
    cfg = compose_cell(suite, suite.cell("clr"), 0)
    assert cfg["_choices"]["model"] == "resnet18" and cfg["model"]["nf"] == 8


def test_suite_preset_errors(in_repo):
    base = {"stream": "split_digits", "seeds": [0]}
    with pytest.raises(SuiteError, match="cells\\[0\\]: preset.*no such preset"):
        parse_suite({**base, "cells": [{"preset": "nope"}]}, "x.yaml")
    with pytest.raises(SuiteError, match="method 'er' but preset 'der_split_digits' chooses method der"):
        parse_suite({**base, "cells": [{"method": "er", "preset": "der_split_digits"}]}, "x.yaml")
    suite = parse_suite({**base, "preset": "split_digits", "cells": [{"method": "si"}]}, "x.yaml")
    assert suite.overrides(suite.cells[0], 0)[:3] == ["stream=split_digits", "method=si", "+experiment=split_digits"]


# ------------------------------------------------------------------------------------------- validation split
def test_holdout_is_stratified_disjoint_and_fixed():
    from clzoo.data import build_stream
    from clzoo.engine.validation import hold_out_validation

    def split(seed):
        stream = build_stream(name="d", dataset="digits", scenario="class_il", n_tasks=5)
        sizes = [t.n_train for t in stream.tasks]
        originals = [(t.x_train.clone(), t.y_train.clone()) for t in stream.tasks]
        return stream, sizes, originals, hold_out_validation(stream, 0.2, seed)

    stream, sizes, originals, val = split(0)
    for task, n, (x0, y0), (xv, yv) in zip(stream.tasks, sizes, originals, val):
        assert task.n_train + len(yv) == n
        for c in task.classes:  # 20% of every class, rounded
            assert (yv == c).sum().item() == round(0.2 * (y0 == c).sum().item())
        flat = lambda x: {tuple(r.tolist()) for r in x.flatten(1)}  # noqa: E731
        assert not flat(task.x_train) & flat(xv) or len(flat(x0)) < len(x0)  # disjoint (up to duplicate images)
    again = split(0)[3]
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(val, again))


def test_run_reports_validation_accuracy(tmp_path):
    from clzoo.engine.runner import run

    cfg = compose(["stream=split_digits", "method=er", "trainer.validation_fraction=0.25", "trainer.max_tasks=2",
                   "trainer.num_threads=1", "log.tensorboard=false", "log.plots=false", "log.progress=false"])
    results = run(cfg, tmp_path / "run", show_progress=False)
    val = results["val_acc_matrix"]
    assert len(val) == 2 and len(val[0]) == 5
    assert results["metrics"]["final_val_acc"] == pytest.approx((val[1][0] + val[1][1]) / 2)
    full = compose(["stream=split_digits"])
    assert results["stream"]["train_sizes"][0] < 0.8 * 290  # the held-out quarter is not trained on
    # the new options at their defaults leave configuration hashes (and committed runs) unchanged
    trimmed = json.loads(json.dumps(full))
    for key in ("validation_fraction", "validation_seed"):
        del trimmed["trainer"][key]
    assert config_hash(full) == config_hash(trimmed)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="needs hydra-optuna-sweeper (pip install 'clzoo[sweep]')")
def test_optuna_sweep_maximises_validation_accuracy(cli, tmp_path, digits_root):
    out = cli("+experiment=er_split_digits", "+hparams_search=er", "hydra.sweeper.n_trials=2", "trainer.max_tasks=1",
              "trainer.epochs=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"data.root={digits_root}",
              "log.tensorboard=false", "log.plots=false", env={"CLZOO_CONF_PATH": str(CONF)}, timeout=170)
    assert out.returncode == 0, out.stderr[-2000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    runs = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/results.json")]
    assert len(runs) == 2 and all(r["config"]["trainer"]["validation_fraction"] == 0.1 for r in runs)
    assert best["best_value"] == pytest.approx(max(r["metrics"]["final_val_acc"] for r in runs))
