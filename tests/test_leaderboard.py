"""clzoo-leaderboard: suite validation, running a tiny suite (parallel, then skipping finished runs), building the
leaderboard (tables equal to hand-computed statistics, CSV, plots, page), the AUC, and the two-sided check."""
from __future__ import annotations

import copy
import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from clzoo.config import validate
from clzoo.leaderboard.build import auc_trapezoid
from clzoo.leaderboard.check import Comparison, compare
from clzoo.leaderboard.cli import main
from clzoo.leaderboard.suite import SuiteError, er_buffer_bytes, load_suite, parse_suite

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "title": "Tiny digits",
    "stream": "split_digits",
    "common": ["stream.train_per_task=60", "stream.test_per_task=30", "trainer.epochs=1",
               "trainer.optimizer.lr=0.05"],
    "seeds": [0, 1],
    "settings": ["class_il", "task_il"],
    "reference_source": "made up for the test",
    "cells": [
        {"method": "finetune", "reference": {"class_il": 20.0, "task_il": 90.0}},
        {"method": "er", "overrides": ["method.minibatch_size=10"], "buffers": [20], "equal_bytes": [20, 40],
         "reference": {20: {"class_il": 50.0}}},
    ],
}


def _suite(tmp_path: Path, data: dict, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ validation
def _bad(**changes) -> dict:
    data = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def _bad_cell(**changes) -> dict:
    cell = {"method": "er", "buffers": [20]}
    cell.update(changes)
    return _bad(cells=[cell])


@pytest.mark.parametrize("data, message", [
    ([1, 2], "a suite is a mapping"),
    (_bad(stream=None), "missing required key 'stream'"),
    (_bad(cells=None), "missing required key 'cells'"),
    (_bad(colour="red"), "unknown key(s) colour"),
    (_bad(seeds=[0, 0]), "seeds: has duplicates"),
    (_bad(seeds="0,1"), "seeds: must be a non-empty list"),
    (_bad(settings=["class_il", "online"]), "settings: must be a non-empty list"),
    (_bad(common="trainer.epochs=2"), "common: must be a list of overrides"),
    (_bad(common=["seed=3"]), "seeds come from the suite's 'seeds' list"),
    (_bad(common=["data.root=/x"]), "execution setting"),
    (_bad(common=["trainer.epochs"]), "is not an override of the form key=value"),
    (_bad(cells=[]), "cells: must be a non-empty list"),
    (_bad(cells=[{"buffers": [20]}]), "cells[0]: must be a mapping with at least 'method'"),
    (_bad_cell(buffer=[20]), "cells[0] (method er): unknown key(s) buffer"),
    (_bad_cell(buffers=[0, 20]), "buffers: must be a non-empty list of positive integers"),
    (_bad_cell(buffers=[20, 20]), "buffers: has duplicates"),
    (_bad_cell(overrides=["method=der"]), "the method is the cell's 'method'"),
    (_bad_cell(name="er-fast"), "no '-'"),
    (_bad_cell(per_buffer={50: ["method.minibatch_size=32"]}), "50 is neither in buffers"),
    (_bad_cell(reference={50: {"class_il": 80.0}}), "50 is not one of the cell's sample buffers"),
    (_bad_cell(reference={20: {"domain_il": 80.0}}), "unknown setting 'domain_il'"),
    (_bad_cell(reference={20: {"class_il": 180.0}}), "is not an accuracy in %"),
    (_bad_cell(reference={"class_il": 80.0}), "gives its references by buffer size"),
    (_bad(cells=[{"method": "er", "buffers": [20]}, {"method": "er", "buffers": [20, 40]}]),
     "two cells have the id 'er-b20'"),
])
def test_suite_validation_errors(data, message):
    with pytest.raises(SuiteError) as info:
        parse_suite(data, "experiments/bad.yaml")
    assert message in str(info.value), str(info.value)
    assert str(info.value).startswith("experiments/bad.yaml")


def test_suite_expands_cells_and_overrides(tmp_path):
    suite = load_suite(_suite(tmp_path, TINY))
    assert [c.id for c in suite.cells] == ["finetune", "er-b20", "er-bytes20", "er-bytes40"]
    assert suite.cell("finetune").reference == {"class_il": 20.0, "task_il": 90.0}
    assert suite.cell("er-b20").reference == {"class_il": 50.0}
    assert suite.cell("er-bytes20").reference is None
    # equal bytes: what ER's buffer of N digits takes (64 pixels + int16 label + int16 task id, + 16 bytes)
    assert er_buffer_bytes(20, (1, 8, 8), 10) == 20 * 68 + 16
    mb = (40 * 68 + 16) / 2**20
    assert suite.overrides(suite.cell("er-bytes40"), 1) == [
        "stream=split_digits", "method=er", *TINY["common"], "method.minibatch_size=10", f"budget.mb={mb!r}",
        "seed=1"]
    assert suite.overrides(suite.cell("er-b20"))[-1] == "method.buffer.capacity=20"
    with pytest.raises(SuiteError, match="no cell 'er-b500'"):
        suite.cell("er-b500")


def test_validate_reports_cells_that_do_not_compose(tmp_path, capsys):
    data = _bad(cells=[{"method": "er", "overrides": ["method.no_such_option=1"]}])
    assert main(["validate", str(_suite(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert "cell er does not compose" in err and "method.no_such_option=1" in err
    # a cell that composes but that a run would refuse is reported before any run is launched
    data = _bad(cells=[{"method": "er", "overrides": ["method.minibatch_size=0"]}, {"method": "finetune"}])
    assert main(["validate", str(_suite(tmp_path, data, "refused"))]) == 2
    out = capsys.readouterr()
    assert "cell er: method.minibatch_size=0 must be >= 1" in out.err and "1 cell(s) do not compose or fail" in out.out


@pytest.mark.parametrize("suite", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_suites_are_valid(suite):
    """Every shipped suite parses; in the paper suites (hand-written hyper-parameters) each entry composes, with
    the budget of its first cell, so a renamed hyper-parameter shows up here rather than in a long run.
    (``clzoo-leaderboard validate`` composes every cell.)"""
    from clzoo.leaderboard.suite import compose_cell

    s = load_suite(suite)
    assert s.cells and s.seeds
    if not s.reference_source:
        return
    firsts = {}
    for cell in s.cells:
        firsts.setdefault(cell.index, cell)
    for cell in firsts.values():
        cfg = compose_cell(s, cell, s.seeds[0])
        # the stream config chosen (an image-folder stream's run name is its folder's, e.g. imagenet-r)
        assert cfg["_choices"]["method"] == cell.method and cfg["_choices"]["stream"] == s.stream
        validate(cfg, here=False)  # the checks a run makes first (method arguments and ranges among them)
        if cell.budget.kind == "samples":
            assert cfg["method"]["buffer"]["capacity"] == cell.budget.n


# ------------------------------------------------------------------------------------------------ AUC
def test_auc_trapezoid_by_hand():
    # points (MB, %): (0.1, 80), (0.5, 90), (1.0, 95): 0.4 * (80 + 90) / 2 + 0.5 * (90 + 95) / 2 = 34 + 46.25
    assert auc_trapezoid([0.5, 0.1, 1.0], [90.0, 80.0, 95.0]) == pytest.approx(80.25)
    assert auc_trapezoid([0.2], [50.0]) is None
    assert auc_trapezoid([0.0, 2.0], [10.0, 10.0]) == pytest.approx(20.0)


def test_comparison_is_two_sided():
    base = {"metrics": {"final_acc": 0.80, "final_acc_task_il": 0.95}, "memory": {"total_bytes": 100}}
    up = {"metrics": {"final_acc": 0.815, "final_acc_task_il": 0.95}, "memory": {"total_bytes": 100}}
    down = {"metrics": {"final_acc": 0.785, "final_acc_task_il": 0.95}, "memory": {"total_bytes": 100}}
    for new, word in ((up, "above"), (down, "below")):
        rows = {c.metric: c for c in compare(base, new, 1.0, "x/seed0")}
        assert not rows["final_acc"].ok and word in rows["final_acc"].describe()
        assert rows["final_acc_task_il"].ok and rows["memory.total_bytes"].ok
    assert all(c.ok for c in compare(base, base, 0.0))
    assert Comparison("r", "m", 80.0, 80.9, 1.0).ok and not Comparison("r", "m", 80.0, 81.1, 1.0).ok


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Run the tiny suite: finetune and ER (2 methods x 2 seeds) in parallel with -j 2, then the equal-byte cells
    in this process; return the paths and the mtimes after the first pass."""
    from clzoo.data import load_source

    root = tmp_path_factory.mktemp("lb")
    data = root / "data"
    load_source("digits", data)  # decoded once: the job processes skip importing scikit-learn
    suite = _suite(root, TINY)
    runs = root / "runs"
    common = ["--runs", str(runs), "--data-root", str(data)]
    assert main(["run", str(suite), *common, "-j", "2", "--cells", "finetune", "er-b20"]) == 0
    first = {p: p.stat().st_mtime_ns for p in runs.glob("tiny/*/seed*/results.json")}
    assert main(["run", str(suite), *common, "--cells", "er-bytes20", "er-bytes40"]) == 0
    return {"root": root, "suite": suite, "runs": runs, "data": data, "common": common, "first": first}


def _results(runs: Path, cell: str) -> dict[int, dict]:
    return {int(p.parent.name[4:]): json.loads(p.read_text()) for p in sorted(runs.glob(f"tiny/{cell}/seed*/results.json"))}


def test_run_creates_one_folder_per_cell_and_seed(tiny_runs):
    runs = tiny_runs["runs"] / "tiny"
    assert len(tiny_runs["first"]) == 4  # the parallel pass: finetune and er-b20 x seeds 0, 1
    for cell in ("finetune", "er-b20", "er-bytes20", "er-bytes40"):
        for seed in (0, 1):
            d = runs / cell / f"seed{seed}"
            r = json.loads((d / "results.json").read_text())
            assert r["status"] == "complete" and r["seed"] == seed
            assert r["leaderboard"]["cell"] == cell and r["leaderboard"]["threads"] == 1
            assert (d / "metrics.csv").is_file()
            assert not (d / "checkpoints").exists() and not (d / "tensorboard").exists()
    # the same bytes as ER's buffer of 20 samples give ER exactly 20 samples: the same run as er-b20
    b20, bytes20 = _results(tiny_runs["runs"], "er-b20"), _results(tiny_runs["runs"], "er-bytes20")
    for seed in (0, 1):
        assert bytes20[seed]["memory"]["by_category"]["exemplars"] == 20 * 64
        assert bytes20[seed]["acc_matrix"] == b20[seed]["acc_matrix"]
    assert _results(tiny_runs["runs"], "er-bytes40")[0]["memory"]["by_category"]["exemplars"] == 40 * 64


def test_second_run_skips_finished_runs(tiny_runs, capsys):
    assert main(["run", str(tiny_runs["suite"]), *tiny_runs["common"], "-j", "2"]) == 0
    out = capsys.readouterr().out
    assert "8 runs selected: 8 done; 0 to run" in out
    for path, mtime in tiny_runs["first"].items():
        assert path.stat().st_mtime_ns == mtime


def test_changed_configuration_is_stale(tiny_runs, tmp_path, capsys):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(tiny_runs["runs"], runs)
    p = runs / "tiny" / "finetune" / "seed0" / "results.json"
    r = json.loads(p.read_text())
    r["config"]["trainer"]["optimizer"]["lr"] = 0.5
    p.write_text(json.dumps(r))
    assert main(["run", str(tiny_runs["suite"]), "--runs", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "7 done, 1 stale" in out and "stale    finetune/seed0" in out


def _row(readme: str, cell: str) -> list[str]:
    for line in readme.splitlines():
        if line.startswith(f"| {cell} |"):
            return [c.strip() for c in line.strip().strip("|").split("|")]
    raise AssertionError(f"no row for {cell}")


def _ms(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def test_build_tables_equal_hand_statistics(tiny_runs):
    out = tiny_runs["root"] / "board"
    assert main(["build", str(tiny_runs["suite"]), "--runs", str(tiny_runs["runs"]), "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    header = _row(readme.replace("| Cell |", "| HEADER |"), "HEADER")
    col = {h: i for i, h in enumerate(header)}
    for cell in ("finetune", "er-b20", "er-bytes20", "er-bytes40"):
        rs = list(_results(tiny_runs["runs"], cell).values())
        row = _row(readme, cell)
        assert row[col["Seeds"]] == "2"
        assert row[col["Class-IL final"]] == _ms([100 * r["metrics"]["final_acc"] for r in rs])
        assert row[col["Task-IL final"]] == _ms([100 * r["metrics"]["final_acc_task_il"] for r in rs])
        assert row[col["Avg. incr. (Class-IL)"]] == _ms([100 * r["metrics"]["avg_incremental_acc"] for r in rs])
        assert row[col["Forgetting (Class-IL)"]] == _ms([100 * r["metrics"]["forgetting"] for r in rs])
        extra = [sum(v for k, v in r["memory"]["by_category"].items() if k not in ("backbone", "heads")) for r in rs]
        assert row[col["Memory (MB)"]] == f"{statistics.fmean(extra) / 2**20:.4g}"
        assert row[-1] == rs[0]["leaderboard"]["config_hash"]  # seed 0's
    # the published reference and our difference beside it
    ft = _row(readme, "finetune")
    mean = statistics.fmean(100 * r["metrics"]["final_acc"] for r in _results(tiny_runs["runs"], "finetune").values())
    assert ft[col["Class-IL final"] + 1] == "20.00" and ft[col["Class-IL final"] + 2] == f"{mean - 20.0:+.2f}"
    assert "clzoo-leaderboard run" in readme and "Configuration hash of this table" in readme
    assert "made up for the test" in readme

    # AUC of ER over its byte-budget cells, by hand
    pts = []
    for cell in ("er-bytes20", "er-bytes40"):
        rs = list(_results(tiny_runs["runs"], cell).values())
        x = statistics.fmean(sum(v for k, v in r["memory"]["by_category"].items() if k not in ("backbone", "heads"))
                             for r in rs) / 2**20
        pts.append((x, statistics.fmean(100 * r["metrics"]["final_acc"] for r in rs)))
    auc = (pts[1][0] - pts[0][0]) * (pts[0][1] + pts[1][1]) / 2
    assert _row(readme, "er")[3] == f"{auc:.4g}"

    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    for row in rows:
        r = _results(tiny_runs["runs"], row["cell"])[int(row["seed"])]
        assert float(row["class_il_final_acc"]) == pytest.approx(100 * r["metrics"]["final_acc"], abs=1e-4)
        assert float(row["task_il_final_acc"]) == pytest.approx(100 * r["metrics"]["final_acc_task_il"], abs=1e-4)
    assert (out / "summary.csv").read_text().count("\n") == 1 + 4 * 2  # header + cells x settings
    for png in ("tiny_acc_per_task_class_il.png", "tiny_acc_per_task_task_il.png", "tiny_acc_vs_memory.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and 'src="plots/tiny_acc_vs_memory.png"' in page
    assert _ms([100 * r["metrics"]["final_acc"] for r in _results(tiny_runs["runs"], "er-b20").values()]) in page


def test_no_auc_until_every_planned_memory_point_has_a_run(tiny_runs, tmp_path):
    """An area over fewer points spans a shorter range and cannot be ranked against complete ones: with a third
    byte budget planned and not run, ER's row names the points run and gives no AUC."""
    data = copy.deepcopy(TINY)
    data["cells"][1]["equal_bytes"] = [20, 40, 60]
    suite, out = _suite(tmp_path, data), tmp_path / "board"
    assert main(["build", str(suite), "--runs", str(tiny_runs["runs"]), "--out", str(out)]) == 0
    row = _row((out / "README.md").read_text(), "er")
    assert row[2] == "2 of 3 run: er-bytes20, er-bytes40"
    assert row[3:] == ["–"] * len(row[3:])


def test_a_suite_not_run_builds_without_its_data(tmp_path):
    """The image-folder protocols (ImageNet-R at 224 px) are listed on the board before anyone has their data:
    the stream is read only when a run is found."""
    suite = _suite(tmp_path, {"title": "Folder suite", "stream": "imagenet_r", "seeds": [0], "settings": ["class_il"],
                              "cells": [{"method": "finetune"}]}, name="folder")
    out = tmp_path / "board"
    assert main(["build", str(suite), "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert "Not run yet: `clzoo-leaderboard run" in (out / "README.md").read_text()


def test_check_passes_and_fails_both_ways(tiny_runs, tmp_path, capsys):
    import shutil

    suite, common = str(tiny_runs["suite"]), ["--data-root", str(tiny_runs["data"])]
    assert main(["check", suite, "--runs", str(tiny_runs["runs"]), *common, "--cells", "er-b20", "--seeds", "0",
                 "--tolerance", "0.5"]) == 0
    assert "check passed" in capsys.readouterr().out

    runs = tmp_path / "runs"  # perturb copies of the committed results: seed 0 up, seed 1 down, by 1.5 pp
    shutil.copytree(tiny_runs["runs"], runs)
    for seed, delta in ((0, 0.015), (1, -0.015)):
        p = runs / "tiny" / "er-b20" / f"seed{seed}" / "results.json"
        r = json.loads(p.read_text())
        r["metrics"]["final_acc"] += delta
        p.write_text(json.dumps(r))
    assert main(["check", suite, "--runs", str(runs), *common, "--cells", "er-b20", "--tolerance", "1.0"]) == 1
    out = capsys.readouterr().out
    fails = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
    assert len(fails) == 2, out
    assert any("er-b20/seed0 final_acc" in ln and "-1.50 pp, below" in ln for ln in fails), fails
    assert any("er-b20/seed1 final_acc" in ln and "+1.50 pp, above" in ln for ln in fails), fails
    assert "check FAILED" in out


def test_check_needs_committed_results(tiny_runs, capsys):
    assert main(["check", str(tiny_runs["suite"]), "--runs", str(tiny_runs["root"] / "nothing"), "--cells", "er-b20",
                 "--tolerance", "1"]) == 2
    assert "no committed result" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ run integrity
def _copy_runs(tiny_runs, tmp_path) -> Path:
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(tiny_runs["runs"], runs)
    return runs


def _build(tiny_runs, runs: Path, out: Path, *flags: str) -> int:
    return main(["build", str(tiny_runs["suite"]), "--runs", str(runs), "--out", str(out), *flags])


def _collect_md(tiny_runs, runs: Path) -> str:
    """The suite's README section as build writes it (without plots: they are what makes a build slow)."""
    from clzoo.leaderboard.build import collect, suite_markdown

    return suite_markdown(collect(load_suite(tiny_runs["suite"]), runs), [], runs)


def test_every_run_carries_a_digest_of_its_numbers(tiny_runs):
    from clzoo.leaderboard.runs import digest_problem, numbers_digest

    for p in tiny_runs["runs"].glob("tiny/*/seed*/results.json"):
        r = json.loads(p.read_text())
        assert r["numbers_digest"] == numbers_digest(r) and digest_problem(r) is None


def test_truncated_results_are_listed_as_left_out_and_strict_build_fails(tiny_runs, tmp_path, capsys):
    runs = _copy_runs(tiny_runs, tmp_path)
    p = runs / "tiny" / "er-b20" / "seed1" / "results.json"
    p.write_text(p.read_text()[:500])  # a truncated copy
    readme = _collect_md(tiny_runs, runs)
    assert _row(readme, "er-b20")[2] == "1"  # one seed left, and said so
    left_out = readme.split("<summary>Runs left out</summary>")[1].split("</details>")[0]
    assert "er-b20/seed1: left out, its results.json is not valid JSON" in left_out and "truncated" in left_out
    strict_out = tmp_path / "strict"
    assert _build(tiny_runs, runs, strict_out, "--strict") == 1
    err = capsys.readouterr().err
    assert "clzoo-leaderboard: error: 1 run(s) left out (--strict)" in err and "er-b20/seed1" in err
    assert not strict_out.exists()  # nothing written
    assert main(["run", str(tiny_runs["suite"]), "--runs", str(runs), "--dry-run"]) == 0
    assert "damaged  er-b20/seed1" in capsys.readouterr().out  # `run` would compute it again


def test_edited_numbers_fail_the_digest_check(tiny_runs, tmp_path, capsys):
    runs = _copy_runs(tiny_runs, tmp_path)
    p = runs / "tiny" / "finetune" / "seed0" / "results.json"
    r = json.loads(p.read_text())
    r["metrics"]["final_acc"] += 0.01
    p.write_text(json.dumps(r, indent=1))
    readme = _collect_md(tiny_runs, runs)
    assert _row(readme, "finetune")[2] == "1"
    assert "finetune/seed0: left out, its numbers do not match their digest" in readme
    assert _build(tiny_runs, runs, tmp_path / "strict", "--strict") == 1
    assert "finetune/seed0" in capsys.readouterr().err


def test_digest_migration_adds_the_same_digest_without_changing_numbers(tiny_runs, tmp_path, capsys):
    runs = _copy_runs(tiny_runs, tmp_path)
    files = sorted(runs.glob("tiny/*/seed*/results.json"))
    originals = {}
    for p in files:  # runs written before digests existed
        r = json.loads(p.read_text())
        originals[p] = r.pop("numbers_digest")
        p.write_text(json.dumps(r, indent=1))
    before = {p: p.read_text() for p in files}
    assert _build(tiny_runs, runs, tmp_path / "strict", "--strict") == 1
    assert "has no digest of its numbers" in capsys.readouterr().err
    assert main(["digest", str(runs)]) == 0
    assert f"digest added to {len(files)} results.json, 0 had one" in capsys.readouterr().out
    for p in files:
        text = p.read_text()
        assert json.loads(text)["numbers_digest"] == originals[p]
        assert text.replace(f',\n "numbers_digest": "{originals[p]}"', "") == before[p]  # only the digest added
    assert "Runs left out" not in _collect_md(tiny_runs, runs)  # build --strict passes
    assert main(["digest", str(runs)]) == 0  # a second pass changes nothing
    assert f"digest added to 0 results.json, {len(files)} had one" in capsys.readouterr().out


def test_committed_leaderboard_runs_all_verify():
    from clzoo.leaderboard.runs import digest_problem, load_results

    found = sorted((REPO / "leaderboard" / "runs").glob("*/*/seed*/results.json"))
    if not found:
        pytest.skip("no committed leaderboard runs")
    problems = []
    for p in found:
        r, problem = load_results(p.parent)
        problem = problem or digest_problem(r)
        if problem:
            problems.append(f"{p}: {problem}")
    assert not problems, "\n".join(problems[:5])


def test_runs_from_other_pretrained_weights_are_left_out():
    """A checkpoint enters a run's configuration by its path: a suite whose runs started from different weights at
    that path keeps the runs of the weights most runs used and says which it left out."""
    from clzoo.leaderboard.build import CellResult, SuiteResult, backbone_line
    from clzoo.leaderboard.build import _leave_out_other_backbones as leave_out
    from clzoo.leaderboard.suite import Budget, Cell, Suite

    def run(sha):
        card = {"sha256": sha, "source": {"dataset": "cifar10", "classes": list(range(10))}, "accuracy": 0.6169}
        return {"backbone": {"checkpoint": "pretrained/b/backbone.pt", "card": card}}

    cells = [CellResult(Cell(name, "l2p", Budget(), []), "h") for name in ("l2p", "coda")]
    for cr, shas in zip(cells, (["a" * 64, "a" * 64, "b" * 64], ["a" * 64])):
        cr.runs = {seed: run(sha) for seed, sha in enumerate(shas)}
        cr.values = {seed: {} for seed in cr.runs}
    sr = SuiteResult(Suite("prompt", Path("prompt.yaml"), "split_cifar100", [0, 1, 2], []), cells)
    leave_out(sr)
    assert sr.backbones == {"a" * 64: 3, "b" * 64: 1}
    assert sorted(cells[0].runs) == [0, 1] and sorted(cells[0].values) == [0, 1] and sorted(cells[1].runs) == [0]
    assert len(sr.warnings) == 1 and sr.warnings[0].startswith("l2p/seed2: left out, it started from other pretrained "
                                                                "weights (sha256 bbbbbbbbbbbb; 3 run(s)")
    assert backbone_line(sr) == ("Pretrained backbone: `pretrained/b/backbone.pt` (sha256 aaaaaaaaaaaa), trained on 10 "
                                 "classes of cifar10, 61.69% on their test images; every run of this table started from it.")
    # runs without a checkpoint: nothing to compare, no line
    plain = SuiteResult(sr.suite, [CellResult(Cell("er", "er", Budget(), []), "h", {0: {"backbone": None}}, {0: {}})])
    leave_out(plain)
    assert plain.backbones == {} and plain.warnings == [] and backbone_line(plain) is None
