"""The per-step fast paths (bench/overhead.py) compute what the plain versions compute: the vectorised reservoir
against algorithm R sample by sample (and its host draws against the tensor draws), the batched non-finite check
against a per-step check, the gradient reset against ``zero_grad``, the optimizer step against ``opt.step()``, ER's
joined conversion against converting each batch."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from clzoo.data import build_stream
from clzoo.data.augment import BatchTransform
from clzoo.memory.buffer import ReplayBuffer, reservoir_draws
from clzoo.methods import NonFiniteLossError, RunContext, StreamInfo, make_method
from clzoo.methods.base import build_optimizer, check_losses_finite, clear_grads, optimizer_step
from clzoo.models import MLP, ContinualModel
from clzoo.testing import TINY_STREAM


def sequential_reservoir(capacity, seen, draws):
    """Algorithm R one sample at a time: sample i of the batch (stream position seen + i) goes to slot seen + i
    while the buffer fills, else to its drawn slot when that slot exists. Returns {slot: row}, later rows win."""
    placed = {}
    for i, d in enumerate(draws):
        pos = seen + i
        slot = pos if pos < capacity else (d if d < capacity else -1)
        if slot >= 0:
            placed[slot] = i
    return placed


@pytest.mark.parametrize("on_host", [True, False])
@pytest.mark.parametrize("capacity,batch", [(7, 10), (5, 64), (50, 10)])
def test_vectorised_reservoir_is_algorithm_r(capacity, batch, on_host):
    buf = ReplayBuffer(capacity, (3,), 10, store_logits=True)
    buf._decide_on_host = on_host  # the host pass (the default) and the device pass alike
    torch.manual_seed(0)
    for step in range(40):
        x = torch.randint(0, 255, (batch, 3), dtype=torch.uint8)
        y = torch.randint(0, 10, (batch,))
        logits = torch.randn(batch, 10)
        seen = int(buf.n_seen)
        before = {k: v.clone() for k, v in buf.state_dict().items()}
        rng = torch.get_rng_state()
        slots = buf.add(x, y, step, logits=logits)
        torch.set_rng_state(rng)  # the same draws the buffer made
        draws = (torch.rand(batch) * torch.arange(seen + 1, seen + batch + 1)).long().tolist()
        placed = sequential_reservoir(capacity, seen, draws)
        expected_x, expected_logits = before["x"].clone(), before["logits"].clone()
        for slot, row in placed.items():
            expected_x[slot], expected_logits[slot] = x[row], logits[row]
        assert torch.equal(buf.x, expected_x) and torch.equal(buf.logits, expected_logits)
        assert all(int(buf.task[s]) == step for s in placed)
        assert int(buf.n_seen) == seen + batch and len(buf) == min(capacity, seen + batch)
        # each sample's slot (-1: not kept); a slot taken twice in the batch is reported for both samples
        assert all((s >= 0) == (seen + i < capacity or draws[i] < capacity) for i, s in enumerate(slots.tolist()))


def test_batched_loss_check_names_the_first_bad_step():
    losses = [torch.tensor(0.5)] * 7 + [torch.tensor(float("nan")), torch.tensor(float("inf"))]
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at task 2, step 107;"):
        check_losses_finite(list(losses), 2, 100)
    ok = [torch.tensor(0.5), torch.tensor(1.0, dtype=torch.float64)]
    check_losses_finite(ok, 0, 0)
    assert ok == []  # checked losses are dropped
    mixed = [torch.tensor(0.5), torch.tensor([float("inf")])]  # a 0-d and a 1-element loss
    with pytest.raises(NonFiniteLossError, match=r"loss became inf at task 0, step 4;"):
        check_losses_finite(mixed, 0, 3)


def test_clear_grads_is_zero_grad_set_to_none():
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    clear_grads(opt)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("seen", [0, 490, 12_345, 2**24 - 5, 2**24 + 3, 3 * 2**25 + 1])
def test_host_reservoir_draws_are_the_tensor_draws(seen):
    torch.manual_seed(seen)
    for batch in (1, 10, 128):
        for _ in range(50):
            uniform = torch.rand(batch)
            expected = (uniform * torch.arange(seen + 1, seen + batch + 1)).long().tolist()
            assert reservoir_draws(uniform.tolist(), seen) == expected
    # a long batch of every kind of value torch.rand makes (multiples of 2**-24)
    uniform = torch.randint(0, 2**24, (4096,)).float() / 2**24
    assert reservoir_draws(uniform.tolist(), seen) == (uniform * torch.arange(seen + 1, seen + 4097)).long().tolist()


def _train_steps(opt_step, optimizer, **kwargs):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    opt = optimizer(net.parameters(), lr=0.1, **kwargs)
    for i in range(5):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        clear_grads(opt)
        nn.functional.cross_entropy(net(x), y).backward()
        opt_step(opt)
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("optimizer,kwargs", [(torch.optim.SGD, {}), (torch.optim.SGD, {"momentum": 0.9}),
                                              (torch.optim.Adam, {})])
def test_optimizer_step_is_opt_step(optimizer, kwargs):
    fast = _train_steps(optimizer_step, optimizer, **kwargs)
    plain = _train_steps(lambda opt: opt.step(), optimizer, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(fast, plain))


@pytest.mark.parametrize("name,optimizer", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                            ("adamw", torch.optim.AdamW)])
def test_build_optimizer_decides_foreach_once_as_torch_would(name, optimizer):
    built = _train_steps(optimizer_step, lambda params, lr: build_optimizer(params, name=name, lr=lr))
    # build_optimizer's settings (weight decay 0) with torch deciding foreach in every step
    plain = _train_steps(lambda opt: opt.step(), optimizer, weight_decay=0.0)
    assert all(torch.equal(a, b) for a, b in zip(built, plain))
    assert build_optimizer(nn.Linear(2, 2).parameters(), name=name).defaults["foreach"] is False  # CPU


def test_optimizer_step_keeps_hooks_schedules_and_the_profiler():
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    calls = []
    opt.register_step_post_hook(lambda *args: calls.append("post"))
    net(torch.ones(1, 3)).sum().backward()
    optimizer_step(opt)
    assert calls == ["post"]  # with a hook, the plain opt.step() runs it
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, [1])
    optimizer_step(opt)  # the scheduler's step counter on the optimizer sees the step: no order warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schedule.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        optimizer_step(torch.optim.SGD(net.parameters(), lr=0.1))
    assert any(e.name.startswith("Optimizer.step#SGD") for e in prof.events())  # profiled runs keep the record


class _SeparateBatches(BatchTransform):
    """The same conversion, declared random: ER then converts the incoming and the replayed batch one by one."""

    augments = True


@pytest.mark.parametrize("normalise", [False, True])
def test_er_joined_conversion_is_the_separate_one(normalise):
    stream = build_stream(**TINY_STREAM)
    mean_std = ([0.5], [0.25]) if normalise else (None, None)
    weights = []
    for transform in (BatchTransform(*mean_std), _SeparateBatches(*mean_std)):
        torch.manual_seed(0)
        ctx = RunContext(StreamInfo.from_stream(stream), train_transform=transform, optimizer={"name": "sgd", "lr": 0.05})
        method = make_method("er", ContinualModel(MLP(stream.input_shape, [16]), stream.n_classes), ctx,
                             buffer={"capacity": 20}, minibatch_size=5)
        task = stream.tasks[0].training_view()
        method.start_task(task)
        for i in range(0, 200, 10):
            method.observe(task.x_train[i:i + 10], task.y_train[i:i + 10], task.id)
        weights.append([p.detach().clone() for p in method.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


class CountOps(TorchDispatchMode):
    """Counts the ATen operations run inside it (each a dispatch, most a kernel launch on an accelerator)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_host_reservoir_places_a_batch_in_few_tensor_operations():
    """The host pass (the default on every device) against the device pass, once the buffer is full: on a GPU each
    operation costs the host a launch, and the device pass's ~45 a batch were most of clzoo's per-step overhead
    there (bench/README.md, "On a GPU"; bench/step_ops.py counts whole steps)."""
    per_batch = {}
    for on_host in (True, False):
        buf = ReplayBuffer(50, (1, 28, 28), 10)
        buf._decide_on_host = on_host
        torch.manual_seed(0)
        x, y = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (10,))
        for _ in range(10):  # past the capacity: the reservoir decides from here on
            buf.add(x, y, 0)
        with CountOps() as ops:
            for _ in range(20):
                buf.add(x, y, 0)
        per_batch[on_host] = ops.count / 20
    assert per_batch[True] <= 16 and per_batch[False] >= 2.5 * per_batch[True], per_batch
