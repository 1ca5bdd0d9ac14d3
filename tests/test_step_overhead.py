"""The per-step fast paths (bench/overhead.py) compute what the plain versions compute: the vectorised reservoir
against algorithm R sample by sample, the batched non-finite check against a per-step check, the gradient reset
against ``zero_grad``."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from clzoo.memory.buffer import ReplayBuffer
from clzoo.methods import NonFiniteLossError
from clzoo.methods.base import check_losses_finite, clear_grads


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
    buf._decide_on_host = on_host  # the host pass (CPU default) and the device pass (accelerators) alike
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


def test_clear_grads_is_zero_grad_set_to_none():
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    clear_grads(opt)
    assert all(p.grad is None for p in net.parameters())
