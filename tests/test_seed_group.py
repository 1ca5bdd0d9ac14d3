"""Seeds trained together (clzoo.engine.seed_group) give, bit for bit, what separate runs give."""
from __future__ import annotations

import json

import pytest
import torch

from clzoo.config import compose
from clzoo.engine.runner import run
from clzoo.engine.seed_group import run_seed_group, why_not_batched
from clzoo.methods.parts.seed_stack import grouped_step_is_exact

NUMBERS = ("acc_matrix", "acc_matrix_task_il", "acc_init", "acc_init_task_il", "metrics", "memory")


def _cfg(method: str, seed: int, *extra: str) -> dict:
    return compose([f"method={method}", "stream=split_digits", "trainer.batch_size=10", "trainer.num_threads=1",
                    "stream.train_per_task=120", f"seed={seed}", "log.progress=false", "log.plots=false",
                    "log.tensorboard=false", *extra])


@pytest.mark.parametrize("method,extra", [
    ("finetune", ()),
    ("er", ("method.buffer=50", "method.minibatch_size=10")),
    # momentum: each member's own optimizer steps with the gradients of the grouped step
    ("finetune", ("trainer.optimizer.momentum=0.9", "trainer.validation_fraction=0.1")),
])
def test_grouped_seeds_equal_separate_runs(tmp_path, method, extra):
    threads = torch.get_num_threads()
    try:
        seeds = [0, 1, 2]
        cfgs = [_cfg(method, s, *extra) for s in seeds]
        assert why_not_batched(cfgs[0]) is None
        grouped = run_seed_group(cfgs, [tmp_path / f"g{s}" for s in seeds])
        for s, cfg, got in zip(seeds, cfgs, grouped):
            assert isinstance(got, dict), got
            alone = run(cfg, tmp_path / f"s{s}", show_progress=False)
            for key in NUMBERS:
                assert json.dumps(got[key], sort_keys=True) == json.dumps(alone[key], sort_keys=True), (method, s, key)
        assert grouped[0]["acc_matrix"] != grouped[1]["acc_matrix"]  # the seeds did differ
        lr = None if extra and "momentum" in extra[0] else 0.1  # plain SGD updates the stacked weights directly
        assert grouped_step_is_exact(3, 10, ((100, 64), (100, 100), (10, 100)), lr)  # computed together
    finally:
        torch.set_num_threads(threads)


def test_methods_that_cannot_be_batched_say_why():
    assert "observe_group" in why_not_batched(_cfg("der", 0))
    assert "not an MLP" in why_not_batched(_cfg("er", 0, "model=convnet2"))
    for setting in ("trainer.amp=bf16", "trainer.compile=true", "trainer.channels_last=true"):
        assert "trainer.amp, trainer.compile" in why_not_batched(_cfg("finetune", 0, setting)), setting
