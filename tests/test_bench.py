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


def load_gpu_module():
    return load_bench().gpu_module()


def test_gpu_bare_loop_crop_flip_is_a_per_image_crop_and_flip():
    import torch

    gpu = load_gpu_module()
    x = torch.rand(6, 3, 8, 8)
    torch.manual_seed(3)
    out = gpu.crop_flip(x, 2)
    torch.manual_seed(3)  # the same draws, made in the same order
    top, left = torch.randint(0, 5, (6, 1, 1, 1)), torch.randint(0, 5, (6, 1, 1, 1))
    flips = torch.rand(6) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for k in range(6):
        t, l = int(top[k]), int(left[k])
        expected = padded[k, :, t:t + 8, l:l + 8]
        assert torch.equal(out[k], expected.flip(-1) if flips[k] else expected)


@pytest.mark.parametrize("method", ["er", "der"])
def test_gpu_bare_loop_is_the_bare_loop_without_host_reads(method):
    """bench/gpu.py's bare loop (what ``--device cuda`` runs), run on the CPU: it makes the CPU bare loop's random
    draws in the same order, so it ends with the same accuracies, and it reads nothing back from the device per
    step (counted with the mode of test_acceleration.py: only the evaluations read)."""
    from clzoo.data import build_stream, load_source
    from test_acceleration import HostReads

    bench = load_bench()
    stream = build_stream(source=load_source("digits"), n_tasks=2, train_per_task=100, test_per_task=50)
    case = bench.Case(f"gpu/{method}", data="digits", method=method, model=bench.MLP, lr=0.05, buffer=30,
                      minibatch=8)
    with HostReads() as reads:
        on_device = bench.gpu_module().run_bare_device(case, stream, 0, "cpu")
    assert len(reads.calls) <= 3 * len(stream.tasks), reads.calls  # 20 steps; reads only at evaluations
    assert on_device["per_task"] == bench.run_bare(case, stream, 0)["per_task"]


def test_device_cuda_without_a_gpu_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert load_bench().main(["--suite", "gpu", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bench/run.py: error: --device cuda but ")
