"""The speed benchmark (bench/run.py) compares systems doing the same work: check that, never the timings.

On a tiny bundled-digits stream, from the same seed, clzoo's run and the benchmark's bare PyTorch loop end with
bit-identical weights and accuracies for fine-tuning, ER and DER, and Avalanche's Naive strategy, fed clzoo's
batch order, ends with the same weights and accuracies as clzoo's fine-tuning.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("clzoo_bench_run", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_three_systems_compute_the_same_thing():
    pytest.importorskip("avalanche")
    bench = load_bench()
    report = bench.check_same_computation(verbose=False)
    for method in ("finetune", "er", "der"):
        assert report[f"{method}: clzoo == bare weights"] is True, method
        assert report[f"{method}: clzoo == bare accuracies"] is True, method
    assert report["finetune: avalanche max |w - w_clzoo|"] < 1e-6
    assert report["finetune: avalanche == clzoo accuracies"] is True


def test_agreement_statistic():
    bench = load_bench()
    diff, se, ok = bench.agree([0.80, 0.82, 0.81], [0.80, 0.81, 0.82])
    assert diff == pytest.approx(0.0) and se > 0 and ok
    diff, se, ok = bench.agree([0.90, 0.91, 0.90], [0.80, 0.81, 0.80])
    assert diff == pytest.approx(0.1) and not ok


def test_avalanche_stock_pipeline_gives_the_tensor_pipelines_values():
    """Avalanche's stock (PIL) input path and its tensor path feed the network the same numbers, so only their
    cost differs: grey images -> x / 255; RGB evaluation -> normalised x / 255."""
    pytest.importorskip("PIL")
    import torch

    bench = load_bench()
    grey = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    assert torch.allclose(bench._StockPipeline(None, False, 28)(grey), grey.float() / 255)
    rgb = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    aug = bench.IMAGE_AUG
    mean, std = torch.tensor(aug["mean"]).view(3, 1, 1), torch.tensor(aug["std"]).view(3, 1, 1)
    assert torch.allclose(bench._StockPipeline(aug, False, 32)(rgb), (rgb.float() / 255 - mean) / std, atol=1e-6)
    train = bench._StockPipeline(aug, True, 32)(rgb)  # cropped (zero padding) and maybe flipped: same shape
    assert train.shape == (3, 32, 32)
