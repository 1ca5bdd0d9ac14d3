"""CLR (Ge et al., ICCV 2023): Dirac identity, zero forgetting, parameter overhead on ResNet-18, the contract."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clzoo.memory.ledger import measure
from clzoo.methods.base import RunContext, StreamInfo
from clzoo.models import ContinualModel, MLP, reduced_resnet18
from clzoo.models.reprogramming import (ChannelReprogram, ReprogrammedConv, TaskBatchNorm, add_task, reprogram_,
                                        set_task, task_parameters)
from clzoo.testing import check_method

SMALL_CNN = {"_target_": "clzoo.models.reduced_resnet18", "nf": 4}


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _torchvision_resnet18() -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None)


@pytest.mark.parametrize("build, shape", [
    (lambda: reduced_resnet18((3, 16, 16), nf=8), (4, 3, 16, 16)),
    (_torchvision_resnet18, (2, 3, 32, 32)),
])
def test_dirac_reprogramming_is_the_identity(build, shape):
    torch.manual_seed(0)
    base = build()
    _randomise_batchnorm(base)
    base.eval()
    wrapped = reprogram_(copy.deepcopy(base))
    add_task(wrapped, 1)  # Dirac CLR layers, BatchNorm (affine + running stats) copied from the base's
    wrapped.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = base(x)
        set_task(wrapped, 0)
        anchor = wrapped(x)
        set_task(wrapped, 1)
        branch = wrapped(x)
    assert torch.equal(anchor, expected)  # task 0 is the network as given
    assert torch.allclose(branch, expected, atol=1e-6, rtol=0), (branch - expected).abs().max()
    # the CLR layers are really in the path: moving one kernel off the identity changes the output
    layer = next(m for m in wrapped.modules() if isinstance(m, ChannelReprogram))
    with torch.no_grad():
        layer.weight[:, 0, 0, 0] += 0.5
        assert not torch.allclose(wrapped(x), expected, atol=1e-3)


def test_clr_layer_sits_on_the_conv_output_before_batchnorm():
    torch.manual_seed(0)
    net = reprogram_(reduced_resnet18((1, 8, 8), nf=4))
    assert isinstance(net.conv1, ReprogrammedConv) and isinstance(net.bn1, TaskBatchNorm)
    add_task(net, 1)
    set_task(net, 1)
    seen = {}
    net.conv1.register_forward_hook(lambda m, i, o: seen.setdefault("conv_out", o))
    net.bn1.register_forward_hook(lambda m, i, o: seen.setdefault("bn_in", i[0]))
    with torch.no_grad():
        net.conv1.reprogram["1"].weight.mul_(2.0)
        x = torch.randn(3, 1, 8, 8)
        net(x)
        raw = net.conv1.conv(x)
    assert torch.allclose(seen["conv_out"], 2 * raw, atol=1e-6) and seen["bn_in"] is seen["conv_out"]
    # 1x1 convolutions (the shortcut projections) are not reprogrammed
    shortcut = net.stages[1][0].shortcut[0]
    assert isinstance(shortcut, nn.Conv2d) and shortcut.kernel_size == (1, 1)


def _resnet18_backbone() -> nn.Module:
    net = _torchvision_resnet18()
    net.fc = nn.Identity()
    net.out_features = 512
    return net


def test_resnet18_overhead_per_task():
    """35,136 CLR + 9,600 BatchNorm affine parameters per task, < 0.6% of ResNet-18's 11,176,512 (the paper)."""
    backbone = _resnet18_backbone()
    n_backbone = sum(p.numel() for p in backbone.parameters())
    assert n_backbone == 11_176_512
    reprogram_(backbone)
    add_task(backbone, 1)
    clr = sum(p.numel() for m in backbone.modules() if isinstance(m, ReprogrammedConv)
              for p in m.task_parameters(1))
    bn = sum(p.numel() for m in backbone.modules() if isinstance(m, TaskBatchNorm) for p in m.task_parameters(1))
    assert (clr, bn) == (35_136, 9_600)
    assert sum(p.numel() for p in task_parameters(backbone, 1)) == 44_736
    assert 100 * (clr + bn) / n_backbone < 0.6  # 0.40%


def test_ledger_counts_one_branch_per_task_on_resnet18():
    """The ledger holds the frozen convs as backbone and grows by exactly one branch per task (per_task)."""
    from clzoo.methods.reprogramming.clr import CLR

    n_tasks, per = 10, 10
    info = StreamInfo(n_tasks, n_tasks * per, (3, 32, 32), [list(range(t * per, (t + 1) * per)) for t in range(n_tasks)])
    method = CLR(ContinualModel(_resnet18_backbone(), info.n_classes), RunContext(info))
    before = measure(method).by_category
    conv_params = 11_176_512 - 9_600  # every BatchNorm belongs to a task (task 0's is the anchor's)
    assert before["backbone"] == conv_params * 4 and before["heads"] == 0 and before["other"] == 0
    assert before["per_task"] == (9_600 + 9_600 + 512 * per + per) * 4 + 20 * 8  # BN affine+stats, head, counters
    for task in range(1, 3):
        add_task(method.model, task)
    after = measure(method).by_category
    branch = (35_136 + 9_600 + 9_600 + 512 * per + per) * 4 + 20 * 8
    assert after["per_task"] - before["per_task"] == 2 * branch
    assert after["backbone"] == before["backbone"]


def _tiny_method(optimizer: dict):
    from clzoo.engine.runner import build_model, build_stream_from_config, instantiate, transforms_from_config
    from clzoo.memory.ledger import Budget
    from clzoo.testing import tiny_config

    cfg = tiny_config("clr", model=SMALL_CNN, stream={"n_tasks": 5, "train_per_task": 40})
    stream = build_stream_from_config(cfg)
    train_tf, eval_tf = transforms_from_config(cfg["stream"].get("augment"), torch.device("cpu"))
    ctx = RunContext(StreamInfo.from_stream(stream), torch.device("cpu"), train_tf, eval_tf, Budget(), optimizer)
    torch.manual_seed(0)
    return instantiate(cfg["method"], model=build_model(cfg["model"], stream), ctx=ctx), stream


def _train(method, task, epochs: int = 2):
    method.start_task(task)
    method.train()
    for _ in range(epochs):
        for i in range(0, len(task.y_train), 10):
            method.observe(task.x_train[i:i + 10], task.y_train[i:i + 10], task.id)
    method.end_task(task)
    method.eval()


def test_zero_forgetting_old_tasks_bit_identical():
    # momentum and weight decay would move any old parameter that slipped into the optimizer
    method, stream = _tiny_method({"name": "adam", "lr": 0.01, "weight_decay": 1e-3})
    preds, states = {}, {}
    for task in stream.tasks[:3]:
        _train(method, task)
        opt_params = {id(p) for group in method.opt.param_groups for p in group["params"]}
        own = {id(p) for p in task_parameters(method.model, task.id)}
        if task.id > 0:
            assert opt_params == own  # the frozen backbone and old branches are not optimised
        with torch.no_grad():
            x = method.preprocess(task.x_test)
            preds[task.id] = method(x, task_id=task.id).clone()
        states[task.id] = {k: v.clone() for k, v in method.state_dict().items()}
    with torch.no_grad():
        for t in (0, 1):
            assert torch.equal(method(method.preprocess(stream.tasks[t].x_test), task_id=t), preds[t]), t
    # every tensor that existed after task 1 (backbone, branches 0 and 1) is untouched by task 2
    final = method.state_dict()
    for key, value in states[1].items():
        assert torch.equal(final[key], value), key
    # the backbone did change during task 0 (it is the anchor, trained on the first task)
    fresh, _ = _tiny_method({"name": "sgd", "lr": 0.05})
    assert not torch.equal(fresh.state_dict()["model.backbone.conv1.conv.weight"],
                           final["model.backbone.conv1.conv.weight"])


def test_class_il_output_puts_each_task_on_its_classes():
    method, stream = _tiny_method({"name": "sgd", "lr": 0.05})
    for task in stream.tasks[:2]:
        _train(method, task, epochs=1)
    x = method.preprocess(stream.tasks[0].x_test[:8])
    with torch.no_grad():
        joint = method(x, task_id=None)
        for task in stream.tasks[:2]:
            own = method(x, task_id=task.id)
            assert torch.equal(joint[:, task.classes], own[:, task.classes])
            others = [c for c in range(stream.n_classes) if c not in task.classes]
            assert torch.isinf(own[:, others]).all()
        untrained = [c for t in stream.tasks[2:] for c in t.classes]
        assert torch.isinf(joint[:, untrained]).all() and torch.isfinite(joint[:, :4]).all()
        assert torch.equal(method(x, task_id=3), torch.zeros_like(joint))  # no branch yet: no opinion


def test_mlp_backbone_is_refused():
    from clzoo.methods.reprogramming.clr import CLR

    info = StreamInfo(5, 10, (1, 8, 8), [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    with pytest.raises(ValueError, match=r"clr needs a convolutional backbone, e.g. model=resnet18"):
        CLR(ContinualModel(MLP((1, 8, 8)), 10), RunContext(info))


def test_conformance_kit():
    report = check_method("clr", model=SMALL_CNN, stream={"train_per_task": 60})
    assert report.checks == ["trains and evaluates", "ledger equals state_dict bytes", "no tensors outside state_dict",
                             "resume gives identical results"]
    assert report.transient_bytes == {"local_label": 10 * 8}  # the declared label map, verified after resume
    results = report.results
    til = results["acc_matrix_task_il"]
    assert all(til[-1][j] == til[j][j] for j in range(len(til)))  # task-IL: no forgetting at all
    per_task = [led["by_category"]["per_task"] for led in results["memory"]["per_task"]]
    steps = {b - a for a, b in zip(per_task, per_task[1:])}
    assert len(steps) == 1 and steps.pop() > 0  # one equal-sized branch per task
