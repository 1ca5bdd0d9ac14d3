"""Expansion under one memory axis: MEMO and DER (dynamic expansion), and the accounting of "A Model or 603
Exemplars" (Zhou et al., ICLR 2023) as pure functions and as a budget the ledger enforces on live methods."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clzoo.data import build_stream
from clzoo.engine.runner import run
from clzoo.memory import Budget, BudgetError
from clzoo.memory.aligned import (aligned_budget_mb, aligned_memory, auc_points, exemplars_worth, kept_params,
                                  model_bytes)
from clzoo.memory.selection import herding
from clzoo.methods import RunContext, StreamInfo, make_method
from clzoo.models import MLP, ContinualModel, ConvNet2, cifar_resnet, resnet32
from clzoo.models.expandable import ExpandableNet
from clzoo.testing import TINY_STREAM, check_method, tiny_config

SMALL_MLP = {"_target_": "clzoo.models.MLP", "hidden_sizes": [24, 24]}
CIFAR = (3, 32, 32)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- the accounting (published constants)
def test_resnet32_is_worth_603_cifar_exemplars_and_splits_as_memo():
    net = resnet32(CIFAR)
    generalized, specialized = net.expansion_split()
    assert n_params(net) == 463_504
    assert (n_params(generalized), n_params(specialized)) == (112_016, 351_488)
    assert int(exemplars_worth(463_504, CIFAR)) == 603


def test_aligned_memory_matches_the_papers_cifar100_and_imagenet100_numbers():
    memo = aligned_memory("memo", 10, 463_504, CIFAR, 112_016, 351_488)
    single = aligned_memory("single", 10, 463_504, CIFAR)
    der = aligned_memory("der", 10, 463_504, CIFAR)
    assert (memo.exemplars, single.exemplars, der.exemplars) == (3_312, 7_431, 2_000)
    assert memo.model_params == 3_626_896 and der.model_params == 4_635_040
    assert round(der.total_mb, 2) == 23.54 == round(aligned_budget_mb(10, 463_504, CIFAR), 2)
    imagenet = (3, 224, 224)
    assert round(aligned_memory("der", 11, 11_176_512, imagenet).total_mb, 1) == 756.1
    assert aligned_memory("memo", 11, 11_176_512, imagenet, 2_782_784, 8_393_728).exemplars == 2_739
    assert aligned_memory("single", 11, 11_176_512, imagenet).exemplars == 4_969


def test_auc_points_are_ders_totals_with_growing_backbones():
    backbones = [ConvNet2(CIFAR)] + [cifar_resnet(CIFAR, d) for d in (14, 20, 26, 32)]
    assert [n_params(b) for b in backbones[1:]] == [171_856, 269_072, 366_288, 463_504]
    spec = [(n_params(b), *(n_params(m) for m in b.expansion_split())) for b in backbones]
    points = auc_points(10, 463_504, spec, CIFAR)
    # the paper's axis: 7.6 / 12.4 / 16.0 (16.1 with these ResNet-20 counts) / 19.8 / 23.5 MB
    assert [round(p["der"].total_mb, 1) for p in points] == [7.6, 12.4, 16.1, 19.8, 23.5]
    for p in points:  # every kind fills the same total, to within one exemplar
        totals = [pt.total_bytes for pt in p.values()]
        assert max(totals) - min(totals) < 3072
    assert points[0]["single"].exemplars == 2000 and points[-1]["memo"].exemplars == 3312
    from clzoo.leaderboard.build import auc_trapezoid

    assert auc_trapezoid([1.0, 2.0, 4.0], [0.5, 0.5, 1.0]) == pytest.approx(0.5 + 1.5)


def _cifar100_ctx(budget: Budget) -> RunContext:
    info = StreamInfo(10, 100, CIFAR, [list(range(10 * t, 10 * t + 10)) for t in range(10)])
    return RunContext(info, budget=budget)


@pytest.mark.parametrize("method,expected", [("icarl", 7_431), ("memo", 3_312), ("dynamic_der", 2_000)])
def test_the_aligned_budget_gives_each_method_the_papers_exemplar_count(method, expected):
    """Aligned memory is a budget: DER's total in MB, counted as MEMO counts (exemplar pixels + backbone
    parameters), with an auto buffer, gives iCaRL 7,431 and MEMO 3,312 exemplars on CIFAR-100 B0 Inc10."""
    budget = Budget(mb=aligned_budget_mb(10, 463_504, CIFAR), count_model=True, convention="memo")
    model = ContinualModel(resnet32(CIFAR), 100)
    m = make_method(method, model, _cifar100_ctx(budget), buffer={"capacity": "auto"})
    assert m.buffer.capacity == expected


def test_an_aligned_budget_smaller_than_the_model_is_a_clear_error():
    budget = Budget(mb=1.0, count_model=True, convention="memo")
    with pytest.raises(BudgetError, match=r"too small for memo: it already keeps [\d,]+ counted bytes"):
        make_method("memo", ContinualModel(resnet32(CIFAR), 100), _cifar100_ctx(budget), buffer={"capacity": "auto"})


def test_memo_needs_a_backbone_with_a_declared_split():
    class Plain(torch.nn.Module):
        out_features = 4

        def forward(self, x):
            return x.flatten(1)[:, :4]

    info = StreamInfo(2, 4, (1, 2, 2), [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="declares no split into generalized and specialized blocks"):
        make_method("memo", ContinualModel(Plain(), 4), RunContext(info), buffer=10)
    make_method("dynamic_der", ContinualModel(Plain(), 4), RunContext(info), buffer=10)  # DER needs no split


# ---------------------------------------------------------------- live runs: ledger == formulas
@pytest.fixture(scope="module")
def digits_stream():
    return build_stream(**TINY_STREAM)


@pytest.mark.parametrize("kind,method", [("single", "icarl"), ("memo", "memo"), ("der", "dynamic_der")])
def test_ledger_equals_the_formulas_at_the_end_of_a_run(kind, method, tmp_path):
    """On a real run (digits, 5 tasks, MLP 24-24), the budget DER's aligned total gives each method the formula's
    exemplar count, and the ledger's MEMO-convention total at the end equals the formula's, to the byte."""
    mlp = MLP((1, 8, 8), [24, 24])
    g, s = (n_params(m) for m in mlp.expansion_split())
    p = n_params(mlp)
    point = aligned_memory(kind, 5, p, (1, 8, 8), g, s, base_exemplars=100)
    cfg = tiny_config(method, model=SMALL_MLP, epochs=1, buffer={"capacity": "auto", "selection": "herding"},
                      budget={"mb": aligned_budget_mb(5, p, (1, 8, 8), 100), "count_model": True,
                              "convention": "memo"},
                      stream={"train_per_task": 60, "test_per_task": 20})
    res = run(cfg, tmp_path / method, show_progress=False)
    last = res["memory"]["per_task"][-1]
    assert last["by_category"]["exemplars"] == point.exemplars * 64
    assert last["memo_bytes"] == last["budgeted_bytes"] == point.total_bytes
    assert res["memory"]["per_task"][0]["parameter_bytes"]["per_task"] == 0  # MEMO/DER grow: one block after task 0
    if kind != "single":
        assert last["parameter_bytes"]["per_task"] == 4 * 4 * (s if kind == "memo" else p)


# ---------------------------------------------------------------- the methods' mechanics
def make(name, stream, **hparams):
    torch.manual_seed(0)
    ctx = RunContext(StreamInfo.from_stream(stream), optimizer={"name": "sgd", "lr": 0.05})
    return make_method(name, ContinualModel(MLP(stream.input_shape, [24, 24]), stream.n_classes), ctx, **hparams)


def _train(method, task, steps=5):
    method.start_task(task)
    for _ in range(steps):
        method.observe(task.x_train[:10], task.y_train[:10], task.id)
    method.end_task(task)


@pytest.mark.parametrize("name", ["memo", "dynamic_der"])
def test_old_blocks_stay_bit_identical_and_the_aux_head_covers_new_classes_plus_one(name, digits_stream):
    m = make(name, digits_stream, buffer=20)
    _train(m, digits_stream.tasks[0])
    first = {k: v.clone() for k, v in m.model.blocks[0].state_dict().items()}
    generalized = {k: v.clone() for k, v in m.model.generalized.state_dict().items()}
    _train(m, digits_stream.tasks[1])
    _train(m, digits_stream.tasks[2])
    assert m.model.n_blocks == 3
    for k, v in m.model.blocks[0].state_dict().items():
        assert torch.equal(v, first[k]), k
    assert m.model.aux_head.out_features == 2 + 1
    # MEMO keeps training the shared blocks (train_base), DER has none
    if name == "memo":
        assert any(not torch.equal(v, generalized[k]) for k, v in m.model.generalized.state_dict().items())
        frozen = make(name, digits_stream, buffer=20, train_base=False)
        _train(frozen, digits_stream.tasks[0])
        kept = {k: v.clone() for k, v in frozen.model.generalized.state_dict().items()}
        _train(frozen, digits_stream.tasks[1])
        assert all(torch.equal(v, kept[k]) for k, v in frozen.model.generalized.state_dict().items())


def test_the_loss_is_ce_over_seen_classes_plus_the_auxiliary_ce(digits_stream):
    m = make("memo", digits_stream, buffer=20, aux_weight=0.5)
    _train(m, digits_stream.tasks[0])
    task = digits_stream.tasks[1]
    m.start_task(task)
    x, y = m.training_data(task)
    x, y = x[-12:], y[-12:]          # exemplars of classes 0-1 and samples of 2-3
    assert set(y.tolist()) >= {0, 1} or set(y.tolist()) >= {2, 3}
    with torch.no_grad():
        logits, feats = m.model(m.augment(x), return_features=True)
        aux = m.model.aux_head(feats[:, -24:])[:, :3]
        y_aux = torch.where(y >= 2, y - 1, torch.zeros_like(y))
        expected = F.cross_entropy(logits[:, :4], y) + 0.5 * F.cross_entropy(aux, y_aux)
    assert float(m.observe(x, y, task.id)) == pytest.approx(float(expected), rel=1e-6)


def test_weight_aligning_equalises_the_mean_norms_of_old_and_new_rows(digits_stream):
    m = make("dynamic_der", digits_stream, buffer=20)
    _train(m, digits_stream.tasks[0])
    m.start_task(digits_stream.tasks[1])
    with torch.no_grad():
        m.model.head.weight[2:4] *= 3.0  # new classes' rows much larger, as after training on new data only
    gamma = m.align_weights(2, 4)
    w = m.model.head.weight.detach()[:, :m.model.n_features]
    assert gamma < 1
    assert float(w[:2].norm(dim=1).mean()) == pytest.approx(float(w[2:4].norm(dim=1).mean()), rel=1e-5)


def test_the_heads_first_block_columns_start_as_a_plain_linear_head_whatever_the_number_of_tasks():
    """Block 0's head columns and the bias are initialised as nn.Linear(feature_dim, n_classes) (the head every
    other method starts from, and what add_block gives later blocks); they used to take the fan-in of the whole
    allocated head (feature_dim x n_tasks), 1/sqrt(n_tasks) of that scale."""
    torch.manual_seed(0)
    generalized, block = resnet32(CIFAR).expansion_split()
    net = ExpandableNet(generalized, block, 64, n_classes=100, max_blocks=10, aux_classes=11)
    bound = 1 / 64 ** 0.5
    first, rest = net.head.weight.detach()[:, :64], net.head.weight.detach()[:, 64:]
    assert first.abs().max() <= bound and first.abs().max() > 0.9 * bound
    assert net.head.bias.abs().max() <= bound and net.head.bias.abs().max() > 0.9 * bound
    assert torch.count_nonzero(rest) == 0
    net.add_block()
    second = net.head.weight.detach()[:, 64:128]
    assert second.abs().max() <= bound and second.abs().max() > 0.9 * bound and torch.equal(net.head.weight[:, :64], first)


def test_herding_picks_the_published_order_on_a_toy_set():
    # mean 3: pick 3 (exact), then 2 (running mean 2.5), then 1 (2.0 beats 0's 1.67 and 9's 4.67), then 9, then 0
    feats = torch.tensor([[0.0], [1.0], [2.0], [3.0], [9.0]])
    assert herding(feats, 5).tolist() == [3, 2, 1, 4, 0]


# ---------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", ["memo", "dynamic_der"])
def test_conformance_kit_and_exact_resume(name, tmp_path):
    report = check_method(name, workdir=tmp_path, model=SMALL_MLP, check_auto_budget=False,
                          stream={"train_per_task": 60, "test_per_task": 20}, buffer={"capacity": 30})
    assert "resume gives identical results" in report.checks
    assert report.results["memory"]["by_category"]["per_task"] > 0


# ---------------------------------------------------------------- the leaderboard on one memory axis
def test_a_counted_memory_axis_suite_reports_auc_a_and_auc_l_and_stacks_model_and_exemplars(tmp_path):
    import yaml

    from clzoo.data import load_source
    from clzoo.leaderboard.cli import main

    data = tmp_path / "data"
    load_source("digits", data)
    common = ["model=mlp", "model.hidden_sizes=[24,24]", "stream.train_per_task=60", "stream.test_per_task=20",
              "trainer.epochs=1", "budget.count_model=true", "budget.convention=memo",
              "method.buffer.capacity=auto"]
    suite = {"stream": "split_digits", "seeds": [0], "settings": ["class_il"], "memory_axis": "counted",
             "common": common,
             "cells": [{"method": "memo", "budgets_mb": [0.02, 0.025]}, {"method": "icarl", "budgets_mb": [0.02, 0.025]}]}
    path = tmp_path / "axis.yaml"
    path.write_text(yaml.safe_dump(suite))
    runs, out = tmp_path / "runs", tmp_path / "out"
    assert main(["run", str(path), "--runs", str(runs), "--data-root", str(data), "-j", "1"]) == 0
    assert main(["build", str(path), "--runs", str(runs), "--out", str(out)]) == 0
    page = (out / "README.md").read_text()
    assert "AUC-L Class-IL" in page and "AUC-A Class-IL" in page
    assert (out / "plots" / "axis_memory_stack.png").stat().st_size > 0
    import json

    r = json.loads((runs / "axis" / "memo-mb0.025" / "seed0" / "results.json").read_text())
    assert r["memory"]["budgeted_bytes"] <= round(0.025 * 2**20)


def test_the_papers_cifar100_class_order_is_numpys_seed_1993_permutation():
    from clzoo.config import compose
    from clzoo.data.scenarios import shuffled_class_order

    cfg = compose(["stream=cifar100_b0_inc10"])["stream"]
    order = shuffled_class_order(100, cfg["class_order_seed"], cfg["class_order_rng"])
    assert order[:10] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]   # PyCIL's first task with seed 1993
    assert sorted(order) == list(range(100))


def test_options_added_at_their_neutral_default_keep_older_runs_hashes():
    from clzoo.config import compose
    from clzoo.engine.checkpoint import config_hash
    from clzoo.leaderboard.suite import config_hash as suite_hash_of

    cfg = compose(["stream=split_mnist", "method=er"])
    older = {k: v for k, v in cfg.items()}
    older["trainer"] = {**cfg["trainer"], "optimizer": {k: v for k, v in cfg["trainer"]["optimizer"].items()
                                                        if k not in ("milestones", "gamma")}}
    older["budget"] = {k: v for k, v in cfg["budget"].items() if k != "convention"}
    older["stream"] = {k: v for k, v in cfg["stream"].items() if k != "class_order_rng"}
    assert config_hash(older) == config_hash(cfg) and suite_hash_of(older) == suite_hash_of(cfg)
    changed = compose(["stream=split_mnist", "method=er", "budget.convention=memo"])
    assert config_hash(changed) != config_hash(cfg)


def test_the_learning_rate_schedule_decays_at_the_milestones_of_every_task(digits_stream):
    torch.manual_seed(0)
    ctx = RunContext(StreamInfo.from_stream(digits_stream),
                     optimizer={"name": "sgd", "lr": 0.1, "milestones": [1, 2], "gamma": 0.5})
    m = make_method("finetune", ContinualModel(MLP(digits_stream.input_shape, [8]), 10), ctx)
    for task in digits_stream.tasks[:2]:
        m.start_task(task)
        lrs = []
        for _ in range(3):
            lrs.append(m.opt.param_groups[0]["lr"])
            m.observe(task.x_train[:10], task.y_train[:10], task.id)
            m.end_epoch()
        assert lrs == [0.1, 0.05, 0.025]
