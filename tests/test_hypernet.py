"""Hypernetwork methods (HNET, HyperInterval): IBP soundness of every interval layer, epsilon = 0, frozen
embeddings, the regulariser at a task boundary, the universal embedding, resume, memory report, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clzoo.methods.base import RunContext, StreamInfo
from clzoo.methods.parts.hypernet import (Hypernetwork, TargetNet, UnsupportedTargetError, interval_conv2d,
                                          interval_linear, interval_relu)
from clzoo.models import ContinualModel, LeNet, MLP, reduced_resnet18
from clzoo.testing import check_method

DRAWS = 200
TOL = 1e-5
SMALL = {"emb_dim": 8, "hidden": [16]}
SMALL_MLP = {"_target_": "clzoo.models.MLP", "hidden_sizes": [32]}


def _box(shape, gen, nonneg=False):
    mid = torch.randn(shape, generator=gen)
    rad = torch.rand(shape, generator=gen) * 0.5
    if nonneg:
        mid = mid.abs() + rad
    return mid - rad, mid, mid + rad


def _inside(lo, hi, gen):
    return lo + (hi - lo) * torch.rand(lo.shape, generator=gen)


def _within(v, lo, hi):
    scale = 1 + v.abs()
    return bool(((v >= lo - TOL * scale) & (v <= hi + TOL * scale)).all())


@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_interval_affine_layers_are_sound(layer, nonneg):
    gen = torch.Generator().manual_seed(1)
    if layer == "linear":
        xs, ws, bs = (4, 7), (5, 7), (5,)
        op, iop = F.linear, interval_linear
    else:
        xs, ws, bs = (2, 3, 6, 6), (4, 3, 3, 3), (4,)
        op, iop = (lambda x, w, b: F.conv2d(x, w, b, padding=1)), (lambda *a: interval_conv2d(*a, padding=1))
    x, w, b = _box(xs, gen, nonneg), _box(ws, gen), _box(bs, gen)
    lo, mid, hi = iop(*x, *w, *b)
    assert torch.allclose(mid, op(x[1], w[1], b[1]), atol=1e-5)
    assert (lo <= mid + TOL).all() and (mid <= hi + TOL).all()
    for _ in range(DRAWS):
        out = op(_inside(x[0], x[2], gen), _inside(w[0], w[2], gen), _inside(b[0], b[2], gen))
        assert _within(out, lo, hi)
    # a point input with non-negative entries and point weights: the bounds collapse (exact)
    p_lo, p_mid, p_hi = iop(x[1].abs(), x[1].abs(), x[1].abs(), w[1], w[1], w[1], b[1], b[1], b[1])
    assert torch.allclose(p_lo, p_hi, atol=1e-5) and torch.allclose(p_lo, p_mid, atol=1e-5)


def test_interval_relu_is_sound():
    gen = torch.Generator().manual_seed(2)
    x_lo, x_mid, x_hi = _box((50,), gen)
    lo, mid, hi = interval_relu(x_lo, x_mid, x_hi)
    assert torch.equal(mid, F.relu(x_mid))
    for _ in range(DRAWS):
        assert _within(F.relu(_inside(x_lo, x_hi, gen)), lo, hi)


@pytest.mark.parametrize("chunk_size", [None, 100])
def test_hypernetwork_ibp_is_sound(chunk_size):
    torch.manual_seed(0)
    H = Hypernetwork(6, 250, (20, 20), chunk_size=chunk_size)
    centre, radius = torch.randn(3, 6), torch.rand(3, 6) * 0.3
    lo, mid, hi = H.interval(centre, radius)
    assert lo.shape == (3, 250) and (lo <= mid).all() and (mid <= hi).all()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(DRAWS):
            assert _within(H(_inside(centre - radius, centre + radius, gen)), lo, hi)
        # radius 0: the interval pass is the point pass, and the bounds are equal
        z_lo, z_mid, z_hi = H.interval(centre, torch.zeros_like(radius))
        assert torch.equal(z_lo, z_hi) and torch.equal(z_mid, z_lo)
        assert torch.allclose(z_mid, H(centre), atol=1e-6)


@pytest.mark.parametrize("backbone", ["mlp", "lenet"])
def test_target_network_ibp_is_sound_and_eps0_collapses(backbone):
    torch.manual_seed(0)
    body = MLP((1, 8, 8), (16, 16)) if backbone == "mlp" else LeNet((1, 8, 8), (3, 4), 12)
    target = TargetNet(ContinualModel(body, 10), 2, (1, 8, 8))
    H = Hypernetwork(5, target.n_params, (12,), init_output=target.init_vector())
    x = torch.rand(6, 1, 8, 8)
    centre, radius = torch.randn(1, 5), torch.rand(1, 5) * 0.2
    with torch.no_grad():
        w = [t[0] for t in H.interval(centre, radius)]
        lo, mid, hi = target.interval(x, *w)
        assert torch.allclose(mid, target(x, w[1]), atol=1e-5)  # middle = the point network with middle weights
        gen = torch.Generator().manual_seed(4)
        for _ in range(DRAWS // 4):  # embeddings inside the box -> weights and logits inside the bounds
            theta = H(_inside(centre - radius, centre + radius, gen))[0]
            assert _within(theta, w[0], w[2])
            assert _within(target(x, theta), lo, hi)
        w0 = [t[0] for t in H.interval(centre, torch.zeros_like(radius))]
        z = target.interval(x, *w0)
        assert torch.allclose(z[0], z[1], atol=1e-5) and torch.allclose(z[2], z[1], atol=1e-5)


# ---------------------------------------------------------------------------------------------- the methods
def _method(name, optimizer=None, stream=None, **hparams):
    from clzoo.engine.runner import build_model, build_stream_from_config, instantiate, transforms_from_config
    from clzoo.memory.ledger import Budget
    from clzoo.testing import tiny_config

    cfg = tiny_config(name, model=SMALL_MLP, stream={"train_per_task": 40, **(stream or {})}, **{**SMALL, **hparams})
    s = build_stream_from_config(cfg)
    train_tf, eval_tf = transforms_from_config(None, torch.device("cpu"))
    ctx = RunContext(StreamInfo.from_stream(s), torch.device("cpu"), train_tf, eval_tf,
                     optimizer=optimizer or {"name": "adam", "lr": 0.01}, batch_size=10, epochs=1)
    torch.manual_seed(0)
    return instantiate(cfg["method"], model=build_model(cfg["model"], s), ctx=ctx), s


def _train(method, task, before_end=None):
    method.start_task(task)
    method.train()
    for i in range(0, len(task.y_train), 10):
        method.observe(task.x_train[i:i + 10], task.y_train[i:i + 10], task.id)
    if before_end is not None:
        before_end()
    method.end_task(task)
    method.current_task = task.id


def test_embeddings_frozen_and_regulariser_zero_at_task_start():
    method, stream = _method("hyperinterval", epsilon=0.5)
    kept = {}
    for task in stream.tasks[:3]:
        method.start_task(task)
        if task.id > 0:  # the hypernetwork is where the previous task left it: the regulariser is exactly 0
            assert method.regulariser(task.id).item() == 0.0
            assert method.reg_targets.shape == (task.id, 3, method.target.n_params)
        moved = []  # training moved H off the old targets
        _train(method, task, lambda: moved.append(task.id == 0 or method.regulariser(task.id).item() > 0))
        assert moved == [True]
        assert method.regulariser(task.id + 1).item() == 0.0  # fresh targets, taken at the end of the task
        kept[task.id] = (method.embeddings[task.id].detach().clone(), method.rho[task.id].detach().clone())
    for t in (0, 1):
        assert torch.equal(method.embeddings[t], kept[t][0]) and torch.equal(method.rho[t], kept[t][1])
    assert not torch.equal(kept[0][0], method.embeddings[0].new_zeros(8))


def test_nested_universal_embedding_lies_in_every_box():
    method, stream = _method("hyperinterval", stream={"scenario": "task_il"}, nested=True, epsilon=0.5)
    for task in stream.tasks[:3]:
        _train(method, task)
    with torch.no_grad():
        lo, u, hi = method.universal_embedding()
        assert (lo <= hi).all()
        centres, radii = method.box([0, 1, 2])
        assert ((centres - radii <= u) & (u <= centres + radii)).all()
        theta = method.hnet(u[None])[0]
        w_lo, _, w_hi = method.hnet.interval(centres, radii)
        for t in range(3):  # by IBP its generated weights lie inside every task's weight interval
            assert _within(theta, w_lo[t], w_hi[t])
        x = method.preprocess(stream.tasks[1].x_test[:5])
        out = method(x, task_id=1)
        assert torch.isfinite(out[:, stream.tasks[1].classes]).all() and torch.isinf(out[:, stream.tasks[0].classes]).all()


def test_class_il_by_minimum_entropy_places_each_task_on_its_classes():
    method, stream = _method("hnet")
    for task in stream.tasks[:2]:
        _train(method, task)
    x = method.preprocess(stream.tasks[0].x_test[:10])
    with torch.no_grad():
        joint = method(x, task_id=None)
        own = [method(x, task_id=t) for t in (0, 1)]
    ent = torch.stack([-(F.softmax(o[:, c], 1) * F.log_softmax(o[:, c], 1)).sum(1)
                       for o, c in zip(own, (stream.tasks[0].classes, stream.tasks[1].classes))])
    pick = ent.argmin(0)
    for i in range(10):
        t = int(pick[i])
        assert torch.allclose(joint[i], own[t][i], atol=1e-5)  # H run on a batch of embeddings or on one
    assert torch.isinf(joint[:, [c for task in stream.tasks[2:] for c in task.classes]]).all()


def test_conformance_and_memory_report(tmp_path):
    report = check_method("hyperinterval", model=SMALL_MLP, stream={"train_per_task": 60}, **SMALL, epsilon=0.1)
    mem = report.results["memory"]
    cats, extra = mem["by_category"], mem["method_report"]
    P = 64 * 32 + 32 + 32 * 2 + 2
    assert extra["target_params"] == P
    assert cats["teachers"] == 5 * 3 * P * 4  # lower / middle / upper targets of every finished task
    assert cats["per_task"] == 5 * 2 * 8 * 4  # embedding and rho of every task of the stream
    assert cats["generator"] == extra["generator_params"] * 4 and cats["backbone"] == cats["heads"] == 0
    assert extra["total_without_generator_bytes"] == mem["total_bytes"] - cats["generator"]
    assert mem["budgeted_bytes"] == extra["total_without_generator_bytes"]  # the generator is the model
    assert extra["deploy_bytes"] == 5 * P * 4


def test_nested_mode_resumes_identically_and_deploys_one_network():
    report = check_method("hyperinterval", model=SMALL_MLP, stream={"train_per_task": 60, "scenario": "task_il"},
                          **SMALL, nested=True, epsilon=0.1)
    P = 64 * 32 + 32 + 32 * 2 + 2
    assert report.results["memory"]["method_report"]["deploy_bytes"] == P * 4


# ---------------------------------------------------------------------------------------------- bad input
def _info(scenario="class_il"):
    return StreamInfo(5, 10, (1, 8, 8), [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]], scenario)


@pytest.mark.parametrize("name", ["hnet", "hyperinterval"])
def test_unsupported_target_layers_are_refused(name):
    from clzoo.methods.registry import get_method_class

    model = ContinualModel(reduced_resnet18((1, 8, 8), nf=2), 10)
    with pytest.raises(UnsupportedTargetError, match=rf"{name}: the target network \(ResNet\) has BatchNorm2d layers.*"
                                                      r"use model=mlp or model=lenet"):
        get_method_class(name)(model, RunContext(_info()))


def test_nested_class_il_and_zero_epsilon_are_refused():
    from clzoo.methods.hypernet.hyperinterval import HyperInterval

    model = ContinualModel(MLP((1, 8, 8), (8,)), 10)
    with pytest.raises(ValueError, match="nested mode .* cannot do class-IL; use a task-IL or domain-IL stream"):
        HyperInterval(model, RunContext(_info("class_il")), nested=True)
    with pytest.raises(ValueError, match=r"nested mode needs epsilon > 0 \(got method.epsilon=0"):
        HyperInterval(model, RunContext(_info("domain_il")), nested=True, epsilon=0.0)
    HyperInterval(model, RunContext(_info("domain_il")), nested=True)  # fine


def test_bad_input_is_one_line_from_clzoo_run(cli, run_dir, digits_root):
    proc = cli("method=hyperinterval", "method.nested=true", f"data.root={digits_root}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("clzoo-run: error: hyperinterval: nested mode")
    proc = cli("method=hnet", "model=resnet18", f"data.root={digits_root}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "which the hypernetwork cannot" in proc.stderr
