"""Leaderboard throughput: the data cache read once per process, and ``clzoo-leaderboard run --batch-seeds``."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from clzoo.data import cache, load_source
from clzoo.leaderboard.cli import main
from clzoo.leaderboard.runs import digest_problem


def test_cache_file_is_read_once_per_process_until_it_changes(tmp_path, monkeypatch):
    reads = []
    real_read = cache.read
    monkeypatch.setattr(cache, "read", lambda path, sources: reads.append(path) or real_read(path, sources))
    first = load_source("digits", tmp_path)  # decoded and written: no read of a cache file that is not there yet
    again = load_source("digits", tmp_path)
    third = load_source("digits", tmp_path)
    assert len(reads) == 2  # the first load found no file; the second read and verified it; the third did not
    assert third.x_train.data_ptr() == again.x_train.data_ptr() and third.fingerprint == first.fingerprint
    (path,) = (tmp_path / ".clzoo-cache").glob("*.cache")
    path.write_bytes(path.read_bytes())  # rewritten (new mtime / ctime): read and verified again
    assert load_source("digits", tmp_path).fingerprint == first.fingerprint and len(reads) == 3


TINY = {
    "title": "Tiny digits", "stream": "split_digits", "seeds": [0, 1, 2], "settings": ["class_il"],
    "common": ["stream.train_per_task=60", "stream.test_per_task=30", "trainer.optimizer.lr=0.05"],
    "reference_source": "made up for the test",
    "cells": [{"method": "finetune"}, {"method": "der", "buffers": [20]}],
}


def test_batch_seeds_runs_a_cell_as_one_group_with_the_numbers_of_separate_runs(tmp_path, capfd):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump(TINY, sort_keys=False))
    data = tmp_path / "data"
    load_source("digits", data)
    common = ["--data-root", str(data)]
    assert main(["run", str(suite), "--runs", str(tmp_path / "batched"), "--batch-seeds", *common]) == 0
    assert "der-b20: seeds run separately: DER has no observe_group" in capfd.readouterr().err
    assert main(["run", str(suite), "--runs", str(tmp_path / "separate"), "--cells", "finetune", *common]) == 0
    for seed in (0, 1, 2):
        batched, separate = (json.loads((tmp_path / kind / "tiny" / "finetune" / f"seed{seed}" / "results.json")
                                        .read_text()) for kind in ("batched", "separate"))
        assert batched["leaderboard"]["batched_seeds"] == [0, 1, 2] and "batched_seeds" not in separate["leaderboard"]
        assert digest_problem(batched) is None
        for key in ("acc_matrix", "acc_matrix_task_il", "acc_init", "metrics", "memory", "config"):
            assert batched[key] == separate[key], (seed, key)
        log = (tmp_path / "batched" / "tiny" / "finetune" / f"seed{seed}" / "run.log").read_text()
        assert log.startswith("== ") and " pid " in log and "task 4: avg acc" in log  # its own lines, not another's
    assert "batched_seeds" not in json.loads(Path(tmp_path / "batched" / "tiny" / "der-b20" / "seed0" / "results.json")
                                             .read_text())["leaderboard"]
