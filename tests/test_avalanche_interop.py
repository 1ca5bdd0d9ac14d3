"""Avalanche both ways: an Avalanche benchmark as a clzoo stream (stream=avalanche), a clzoo method as an
Avalanche strategy (ClzooStrategy), the same method both ways on the same stream and seed; and clzoo-run not
importing Avalanche when unused. Offline: the benchmark is built from the bundled digits' tensors."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("avalanche") is None,
                                reason="needs avalanche-lib (pip install 'clzoo[avalanche]')")

CALLS = {"n": 0}


def digits_benchmark(n_experiences: int = 5, seed: int = 0, task_labels: bool = False):
    """An Avalanche benchmark from tensors: the bundled digits (uint8, 1x8x8), classes 0-9 in a seeded order,
    ``n_experiences`` experiences of disjoint classes (a dotted-path factory for stream.benchmark)."""
    from avalanche.benchmarks import tensors_benchmark

    from clzoo.data import load_source

    CALLS["n"] += 1
    src = load_source("digits", None)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(seed)).tolist()
    per = 10 // n_experiences
    train, test = [], []
    for e in range(n_experiences):
        cls = torch.tensor(order[e * per:(e + 1) * per])
        tr, te = torch.isin(src.y_train, cls), torch.isin(src.y_test, cls)
        train.append((src.x_train[tr], src.y_train[tr]))
        test.append((src.x_test[te], src.y_test[te]))
    labels = list(range(n_experiences)) if task_labels else [0] * n_experiences
    return tensors_benchmark(train, test, task_labels=labels)


def test_benchmark_becomes_a_stream_with_its_structure():
    from clzoo.interop.avalanche import build_avalanche_stream

    bench = digits_benchmark()
    stream = build_avalanche_stream(bench=bench, name="avl")
    assert stream.scenario == "class_il" and stream.n_tasks == 5 and stream.n_classes == 10
    order = [c for e in bench.train_stream for c in sorted(e.classes_in_this_experience)]
    assert stream.class_order == order
    for t, (task, exp) in enumerate(zip(stream.tasks, bench.train_stream)):
        assert task.classes == [2 * t, 2 * t + 1] and task.x_train.dtype == torch.uint8
        assert task.n_train == len(exp.dataset) and task.x_train.shape[1:] == (1, 8, 8)
        x0, y0 = exp.dataset[0][0], exp.dataset[0][1]
        assert torch.equal(task.x_train[0], x0) and order[int(task.y_train[0])] == int(y0)
    assert build_avalanche_stream(bench=digits_benchmark(task_labels=True)).scenario == "task_il"


def test_config_stream_is_converted_once_and_cached(tmp_path):
    from clzoo.config import compose
    from clzoo.engine.runner import build_stream_from_config

    cfg = compose(["stream=avalanche", f"stream.benchmark={__name__}.digits_benchmark", "stream.name=avl",
                   f"data.root={tmp_path}"])
    before = CALLS["n"]
    a = build_stream_from_config(cfg)
    b = build_stream_from_config(cfg)  # from the verified cache: the factory is not called again
    assert CALLS["n"] == before + 1 and list((tmp_path / ".clzoo-cache").glob("avalanche-*.pt"))
    assert a.info["data_fingerprint"] == b.info["data_fingerprint"]
    assert all(torch.equal(s.x_train, t.x_train) for s, t in zip(a.tasks, b.tasks))


def test_benchmark_decoded_once_into_the_disk_store_trains_like_memory(tmp_path):
    """data.store=disk: the benchmark is written once into the memory-mapped store (one split per experience),
    the tasks stay on disk, the data digest is the in-memory path's, and ER trains to the same numbers."""
    from clzoo.config import compose
    from clzoo.data.disk_store import is_stored
    from clzoo.engine.runner import build_stream_from_config, run

    common = ["stream=avalanche", f"stream.benchmark={__name__}.digits_benchmark", "stream.name=avl",
              "method=er", "method.buffer.capacity=40", "trainer.epochs=1", "trainer.max_tasks=2",
              "log.progress=false", "log.tensorboard=false"]
    memory = compose(common + [f"data.root={tmp_path / 'mem'}"])
    disk = compose(common + [f"data.root={tmp_path / 'disk'}", "data.store=disk"])
    before = CALLS["n"]
    a, b = build_stream_from_config(memory), build_stream_from_config(disk)
    again = build_stream_from_config(disk)  # the complete store is reused: the factory is not called again
    assert CALLS["n"] == before + 2 and len(list((tmp_path / "disk" / ".clzoo-store").glob("avalanche-*"))) == 1
    assert all(is_stored(t.x_train) and is_stored(t.x_test) for t in b.tasks)
    assert a.info["data_fingerprint"] == b.info["data_fingerprint"] == again.info["data_fingerprint"]
    for s, t in zip(a.tasks, b.tasks):
        assert s.classes == t.classes and torch.equal(s.x_train, t.x_train[:]) and torch.equal(s.y_test, t.y_test)
    ra, rb = run(memory, tmp_path / "run_mem"), run(disk, tmp_path / "run_disk")
    assert ra["acc_matrix"] == rb["acc_matrix"]
    assert rb["memory"]["total_bytes"] == ra["memory"]["total_bytes"]


def test_unknown_benchmark_is_one_line():
    from clzoo.data import StreamError
    from clzoo.interop.avalanche import resolve_factory

    with pytest.raises(StreamError, match="SplitMNST: not an Avalanche classic benchmark; choose one of .*SplitMNIST"):
        resolve_factory("SplitMNST")


@pytest.mark.slow
def test_same_method_both_ways_same_accuracy(tmp_path):
    """ER on the same benchmark and seed: under clzoo-run's engine (stream=avalanche) and as an Avalanche
    strategy in Avalanche's own train / eval loop with its accuracy metric."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    from clzoo.config import compose
    from clzoo.engine.runner import run
    from clzoo.interop.avalanche_strategy import ClzooStrategy

    args = ["method=er", "method.buffer.capacity=100", "trainer.optimizer.lr=0.05", "trainer.batch_size=10",
            "trainer.epochs=1", "seed=3"]
    cfg = compose(["stream=avalanche", f"stream.benchmark={__name__}.digits_benchmark", "stream.name=avl",
                   f"data.root={tmp_path}", "trainer.num_threads=1", "log.tensorboard=false", "log.plots=false",
                   *args])
    ours = run(cfg, tmp_path / "run", show_progress=False)

    bench = digits_benchmark()
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    strategy = ClzooStrategy.from_benchmark(bench, "er", method_args={"buffer": {"capacity": 100}}, lr=0.05,
                                            train_mb_size=10, train_epochs=1, seed=3, evaluator=evaluator)
    for exp in bench.train_stream:
        strategy.train(exp)
    metrics = strategy.eval(bench.test_stream)
    accs = [metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{t:03d}"] for t in range(5)]
    assert ours["acc_matrix"][-1] == pytest.approx(accs, abs=1e-9)
    assert ours["metrics"]["final_acc"] == pytest.approx(sum(accs) / 5, abs=1e-9)
    assert 0.3 < sum(accs) / 5 < 1.0


def test_avalanche_strategy_under_clzoo_counts_its_state(tmp_path):
    """method=avalanche (Avalanche's SI): the plugins' state is in state_dict and the ledger, under 'other'."""
    import io

    from clzoo.config import compose
    from clzoo.engine.runner import run

    cfg = compose(["method=avalanche", "stream.train_per_task=100", "stream.test_per_task=40", "trainer.max_tasks=2",
                   "trainer.num_threads=1", "log.tensorboard=false", "log.plots=false"])
    results = run(cfg, tmp_path / "run", show_progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "task_001.pt", weights_only=False)
    state = ckpt["method"]["strategy_state"]
    assert results["memory"]["by_category"]["other"] == state.numel() > 0
    plugins = torch.load(io.BytesIO(state.numpy().tobytes()), weights_only=False)
    si = next(p for p in plugins if "ewc_data" in p)  # SI's importances and reference weights, per parameter
    n_params = sum(p.numel() for p in ckpt["method"].values() if p.is_floating_point())
    assert state.numel() > 2 * 4 * n_params  # at least the importance and the reference weight of every weight
    assert results["acc_matrix"][0][0] > 0.8 and si  # the strategy trained the task


def test_clzoo_run_does_not_import_avalanche():
    code = ("import sys, clzoo.cli, clzoo.engine.runner, clzoo.data, clzoo.config\n"
            "from clzoo.config import compose\ncompose(['stream=split_digits'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'avalanche'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
