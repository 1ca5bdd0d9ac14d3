"""Regularization family (EWC, online EWC, SI, MAS, LwF): the conformance kit, and the shared parts with numbers."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clzoo.memory.ledger import measure
from clzoo.methods.base import RunContext, StreamInfo
from clzoo.methods.parts.distillation import distillation_kl, soft_targets
from clzoo.methods.parts.importance import (fisher_diagonal, grad_vector, mas_importance, param_vector,
                                            per_sample_grads, quadratic_penalty, regularized_parameters)
from clzoo.methods.registry import get_method_class
from clzoo.models import MLP, ContinualModel
from clzoo.testing import check_method


# ---------------------------------------------------------------- the conformance kit on the tiny digits stream
# The tiny stream trains 3 epochs at lr 0.05 on 120 8x8 digits per task: its Fisher / MAS importances are larger
# than on Seq-MNIST, so the penalty weights are scaled down to stay inside SGD's stability limit (an error here
# is warn_if_stiff's RuntimeWarning). The Seq-MNIST settings are in the methods' docstrings and configs.
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("name, hparams", [
    ("ewc", {"lambda_": 10.0}),
    ("oewc", {"lambda_": 10.0}),
    ("si", {}),
    ("mas", {"lambda_": 0.01}),
    ("lwf", {}),
])
def test_method_keeps_the_contract(name, hparams):
    report = check_method(name, **hparams)
    assert report.checks == ["trains and evaluates", "ledger equals state_dict bytes", "no tensors outside state_dict",
                             "resume gives identical results"]
    by_category = report.results["memory"]["by_category"]
    model_bytes = by_category["backbone"] + by_category["heads"]
    n_params = model_bytes // 4
    if name == "lwf":  # one frozen model copy, counted as a teacher
        assert by_category["teachers"] == model_bytes and by_category["importance"] == 0
    elif name == "ewc":  # a Fisher and an anchor per finished task: the ledger grows task by task
        per_task = [led["by_category"]["importance"] for led in report.results["memory"]["per_task"]]
        assert per_task == [(t + 1) * 2 * n_params * 4 for t in range(5)]
    else:  # one importance vector and one anchor
        assert by_category["importance"] == 2 * n_params * 4


# ---------------------------------------------------------------- parts: the quadratic penalty
def test_quadratic_penalty_zero_at_anchor_and_hand_value_off_it():
    importance = torch.tensor([1.0, 2.0, 3.0, 0.5])
    anchor = torch.tensor([0.5, -1.0, 2.0, 0.0])
    assert quadratic_penalty(anchor.clone(), importance, anchor).item() == 0.0
    theta = torch.tensor([1.5, 0.0, 0.0, 4.0], requires_grad=True)
    # 1*1^2 + 2*1^2 + 3*2^2 + 0.5*4^2 = 1 + 2 + 12 + 8
    value = quadratic_penalty(theta, importance, anchor)
    assert value.item() == pytest.approx(23.0)
    value.backward()
    assert torch.allclose(theta.grad, 2 * importance * (theta.detach() - anchor))


def test_param_vector_backpropagates_into_the_parameters():
    model = nn.Linear(3, 2)
    params = regularized_parameters(model)
    theta = param_vector(params)
    assert theta.numel() == 8
    (theta * torch.arange(8.0)).sum().backward()
    assert torch.equal(grad_vector(params), torch.arange(8.0))


# ---------------------------------------------------------------- parts: Fisher and MAS against loops
def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    return model, x, y


def _loop_grad(model, scalar):
    model.zero_grad()
    scalar.backward()
    return grad_vector(list(model.parameters()))


@pytest.mark.parametrize("mode", ["empirical", "weighted", "expected"])
def test_fisher_matches_a_loop_over_samples(mode):
    model, x, y = _tiny()
    expected = torch.zeros(sum(p.numel() for p in model.parameters()))
    for i in range(len(x)):
        classes = range(3) if mode == "expected" else [int(y[i])]
        for c in classes:
            log_p = F.log_softmax(model(x[i:i + 1]), dim=1)[0, c]
            weight = 1.0 if mode == "empirical" else math.exp(log_p.item())
            expected += weight * _loop_grad(model, log_p) ** 2
    expected /= len(x)
    got = fisher_diagonal(model, x, y, mode, chunk_size=4)  # chunks of 4, 4, 1 samples
    assert torch.allclose(got, expected, atol=1e-7, rtol=1e-5)


def test_weighted_fisher_is_below_empirical():
    model, x, y = _tiny()
    assert (fisher_diagonal(model, x, y, "weighted") <= fisher_diagonal(model, x, y, "empirical") + 1e-9).all()


def test_fisher_transform_is_applied_per_chunk():
    model, x, y = _tiny()
    got = fisher_diagonal(model, x / 2, y, transform=lambda v: v * 2, chunk_size=2)
    assert torch.allclose(got, fisher_diagonal(model, x, y), atol=1e-7)


def test_mas_importance_matches_brute_force():
    model, x, _ = _tiny()
    expected = sum(_loop_grad(model, model(x[i:i + 1]).pow(2).sum()).abs() for i in range(len(x))) / len(x)
    assert torch.allclose(mas_importance(model, x, chunk_size=2), expected, atol=1e-6, rtol=1e-5)


def test_per_sample_grads_handles_frozen_parameters():
    model, x, y = _tiny()
    model[0].weight.requires_grad_(False)
    grads, logits = per_sample_grads(model, lambda out, t: out.gather(0, t.view(1)).sum(), x, y)
    assert "0.weight" not in grads and grads["2.weight"].shape == (9, 3, 4)
    assert logits.shape == (9, 3)
    assert fisher_diagonal(model, x, y).numel() == sum(p.numel() for p in regularized_parameters(model))


# ---------------------------------------------------------------- parts: distillation
def test_kd_is_zero_when_student_equals_teacher_and_matches_hand_value():
    logits = torch.randn(6, 4)
    assert distillation_kl(logits, logits.clone(), 2.0).abs().item() < 1e-6
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0 * math.log(3.0), 0.0]])
    p = torch.tensor([0.75, 0.25])  # softmax(teacher / 2)
    assert torch.allclose(soft_targets(teacher, 2.0)[0], p)
    hand = (p * (p / 0.5).log()).sum()
    assert distillation_kl(student, teacher, 2.0).item() == pytest.approx(hand.item(), rel=1e-5)
    assert distillation_kl(student, teacher, 2.0, t2_scaling=True).item() == pytest.approx(4 * hand.item(), rel=1e-5)


def test_kd_gradient_equals_soft_target_cross_entropy_gradient():
    student = torch.randn(5, 3, requires_grad=True)
    teacher = torch.randn(5, 3)
    distillation_kl(student, teacher, 2.0).backward()
    g_kl = student.grad.clone()
    student.grad = None
    (-(soft_targets(teacher, 2.0) * F.log_softmax(student / 2.0, dim=1)).sum(1).mean()).backward()
    assert torch.allclose(g_kl, student.grad, atol=1e-6)


# ---------------------------------------------------------------- methods on synthetic tasks
def _method(name, lr=0.05, **hparams):
    torch.manual_seed(0)
    info = StreamInfo(n_tasks=2, n_classes=4, input_shape=(1, 4, 4), task_classes=[[0, 1], [2, 3]])
    ctx = RunContext(info, optimizer={"name": "sgd", "lr": lr})
    return get_method_class(name)(ContinualModel(MLP((1, 4, 4), (8,)), 4), ctx, **hparams)


def _task(task_id, n=24):
    g = torch.Generator().manual_seed(task_id)
    x = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 2, (n,), generator=g) + 2 * task_id
    return SimpleNamespace(id=task_id, classes=[2 * task_id, 2 * task_id + 1], x_train=x, y_train=y)


def _train(method, task, steps=20):
    method.start_task(task)
    for i in range(steps):
        idx = torch.arange(i % 3 * 8, i % 3 * 8 + 8)
        method.observe(task.x_train[idx], task.y_train[idx], task.id)
    method.end_task(task)


def test_oewc_fisher_is_a_decayed_running_sum_and_anchor_is_the_last_model():
    method = _method("oewc", gamma=0.5)
    task = _task(0)
    _train(method, task)
    fisher = fisher_diagonal(method.model, method.preprocess(task.x_train), task.y_train, "weighted")
    assert torch.allclose(method.importance, fisher, atol=1e-8)
    assert torch.equal(method.anchor, param_vector(regularized_parameters(method.model)).detach())
    method.end_task(task)  # same model, same data: F <- 0.5 F + F
    assert torch.allclose(method.importance, 1.5 * fisher, atol=1e-8)


def test_oewc_and_ewc_penalise_leaving_the_anchor():
    for name in ("oewc", "ewc"):
        method = _method(name, lambda_=1.0)
        _train(method, _task(0))
        x, y = _task(1).x_train[:8], _task(1).y_train[:8]
        with torch.no_grad():
            ce = F.cross_entropy(method.model(method.augment(x)), y).item()
        loss = method.observe(x, y, 1)  # at the anchor: no penalty yet
        assert loss.item() == pytest.approx(ce, rel=1e-5)


def test_ewc_keeps_one_penalty_per_task_and_sums_them():
    method = _method("ewc", lambda_=2.0)
    _train(method, _task(0))
    _train(method, _task(1))
    (f0, a0), (f1, a1) = method.penalties()
    assert not torch.equal(a0, a1)
    theta = param_vector(regularized_parameters(method.model)).detach()
    x, y = _task(1).x_train[:8], _task(1).y_train[:8]
    method.start_task(SimpleNamespace(id=2))
    with torch.no_grad():
        ce = F.cross_entropy(method.model(method.augment(x)), y).item()
    expected = ce + 2.0 * ((f0 * (theta - a0) ** 2).sum() + (f1 * (theta - a1) ** 2).sum()).item()
    assert method.observe(x, y, 2).item() == pytest.approx(expected, rel=1e-5)


def test_si_path_integral_equals_the_loss_decrease():
    """Zenke et al.: sum_k omega_k = -integral of g . dtheta = L(start) - L(end) along the trajectory (gradient
    descent on one fixed batch; small steps make the Riemann sum exact to first order)."""
    method = _method("si", lr=0.01)
    task = _task(0)
    x, y = task.x_train, task.y_train

    def loss():
        with torch.no_grad():
            return F.cross_entropy(method.model(method.augment(x)), y).item()

    method.start_task(task)
    start = loss()
    for _ in range(200):
        method.observe(x, y, 0)
    drop = start - loss()
    assert drop > 0.05
    assert method.path_integral.sum().item() == pytest.approx(drop, rel=0.02)


def test_si_importance_is_path_integral_over_squared_displacement_plus_xi_clipped_at_zero():
    method = _method("si", xi=0.1)
    task = _task(0)
    method.start_task(task)
    for i in range(10):
        method.observe(task.x_train[:8], task.y_train[:8], 0)
    omega, start = method.path_integral.clone(), method.anchor.clone()
    method.end_task(task)
    theta = param_vector(regularized_parameters(method.model)).detach()
    assert torch.allclose(method.importance, (omega / ((theta - start) ** 2 + 0.1)).clamp(min=0))
    assert torch.equal(method.anchor, theta) and method.path_integral.abs().sum() == 0
    assert "path_integral" not in method.state_dict()  # zero at every boundary: working memory, not state


def test_si_path_integral_uses_the_task_gradient_only():
    """With a penalty active, omega_k = -g_task,k * delta_k for one SGD step, delta including the penalty's pull."""
    method = _method("si", c=1.0, lr=0.1)
    _train(method, _task(0))
    task = _task(1)
    method.start_task(task)
    params = regularized_parameters(method.model)
    before = param_vector(params).detach().clone()
    x, y = task.x_train[:8], task.y_train[:8]
    method.model.zero_grad()
    F.cross_entropy(method.model(method.augment(x)), y).backward()
    g_task = grad_vector(params).clone()
    pull = 2 * method.importance * (before - method.anchor)
    method.observe(x, y, 1)
    delta = param_vector(params).detach() - before
    assert torch.allclose(delta, -0.1 * (g_task + pull), atol=1e-6)
    assert torch.allclose(method.path_integral, -g_task * delta, atol=1e-8)


def test_mas_importance_adds_up_over_tasks():
    method = _method("mas")
    t0, t1 = _task(0), _task(1)
    _train(method, t0)
    first = mas_importance(method.model, method.preprocess(t0.x_train))
    assert torch.allclose(method.importance, first, atol=1e-6)
    _train(method, t1)
    second = mas_importance(method.model, method.preprocess(t1.x_train))
    assert torch.allclose(method.importance, first + second, atol=1e-5)


def test_lwf_teacher_is_the_previous_model_and_kd_starts_at_zero():
    method = _method("lwf", warmup_epochs=0)
    assert measure(method).by_category["teachers"] == sum(p.numel() * 4 for p in method.model.parameters())
    _train(method, _task(0))
    for p, q in zip(method.teacher.parameters(), method.model.parameters()):
        assert torch.equal(p, q) and not p.requires_grad
    task = _task(1)
    method.start_task(task)
    x, y = task.x_train[:8], task.y_train[:8]
    with torch.no_grad():
        ce = F.cross_entropy(method.model(method.augment(x))[:, :4], y).item()
    assert method.observe(x, y, 1).item() == pytest.approx(ce, rel=1e-5)  # student == teacher: KD = 0


def test_lwf_warm_up_trains_only_the_new_classes_head():
    method = _method("lwf", warmup_epochs=2)
    _train(method, _task(0))
    backbone = [p.clone() for p in method.model.backbone.parameters()]
    head_w = method.model.head.weight.detach().clone()
    method.start_task(_task(1))
    assert all(torch.equal(a, b) for a, b in zip(backbone, method.model.backbone.parameters()))
    assert torch.equal(method.model.head.weight[:2], head_w[:2])  # old classes untouched
    assert not torch.equal(method.model.head.weight[2:], head_w[2:])  # new classes warmed up
    assert method.teacher.training is False
    method.train()
    assert method.teacher.training is False


def test_a_penalty_too_stiff_for_sgd_is_reported_while_tasks_remain():
    method = _method("mas", lambda_=1e4, lr=0.1)
    with pytest.warns(RuntimeWarning, match="lr \\* weight \\* max\\(importance\\)"):
        _train(method, _task(0))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(method, _task(1))  # the last task: nothing left to diverge on
