"""The memory ledger and the budget: byte arithmetic on hand-built modules, categories, the replay buffer's
per-sample cost, auto buffers sized from budget.mb, and what happens over budget."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from clzoo.config import compose
from clzoo.engine import run
from clzoo.memory import MB, Budget, BudgetError, ReplayBuffer, measure, tag_memory
from clzoo.memory.ledger import categorize
from clzoo.methods import RunContext, StreamInfo
from clzoo.methods.replay.er import ER
from clzoo.models import MLP, ContinualModel

DIGITS_INFO = StreamInfo(n_tasks=5, n_classes=10, input_shape=(1, 8, 8),
                         task_classes=[[2 * t, 2 * t + 1] for t in range(5)])
TINY = ["stream.train_per_task=30", "stream.test_per_task=20", "log.progress=false", "log.tensorboard=false",
        "log.plots=false", "trainer.num_threads=1"]


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("images", torch.zeros(10, 1, 8, 8, dtype=torch.uint8))  # 640 bytes
        self.register_buffer("scores", torch.zeros(10))                               # 10 x 4 = 40 bytes
        self.weight = nn.Parameter(torch.zeros(3, 4))                                 # 12 x 4 = 48 bytes
        self.register_buffer("scratch", torch.zeros(1000), persistent=False)          # not kept: not counted


def test_bytes_at_the_stored_dtype():
    ledger = measure(Holder())
    assert ledger.total_bytes == 640 + 40 + 48
    assert ledger.by_category["other"] == 728
    assert ledger.by_tensor == {"images": 640, "scores": 40, "weight": 48}
    for dtype, size in [(torch.uint8, 100), (torch.int16, 200), (torch.float32, 400), (torch.float64, 800)]:
        m = nn.Module()
        m.register_buffer("t", torch.zeros(100, dtype=dtype))
        assert measure(m).total_bytes == size, dtype


def test_shared_tensors_are_counted_once():
    lin = nn.Linear(4, 3)  # weight 12 x 4 + bias 3 x 4 = 60 bytes
    m = nn.Module()
    m.a, m.b = lin, lin  # one module under two names
    m.c = nn.Linear(4, 3)
    m.c.weight = m.a.weight  # a tied weight: only c.bias (12 bytes) is new
    assert len(m.state_dict()) == 6
    assert measure(m).total_bytes == 60 + 12


def test_categories_from_tag_memory_and_memory_categories():
    m = nn.Module()
    m.teacher = tag_memory(nn.Linear(4, 3), "teachers")                 # 60 bytes
    m.reg = Holder()
    m.reg.memory_categories = {"images": "exemplars", "scores": "importance"}  # weight stays "other"
    m.group = tag_memory(nn.Sequential(nn.Linear(2, 2), tag_memory(nn.Linear(2, 1), "prompts")), "per_task")
    # group.0: 4 x 4 + 2 x 4 = 24 bytes (inherits per_task); group.1: 2 x 4 + 4 = 12 bytes (its own tag)
    ledger = measure(m)
    assert ledger.by_category["teachers"] == 60
    assert ledger.by_category["exemplars"] == 640 and ledger.by_category["importance"] == 40
    assert ledger.by_category["other"] == 48
    assert ledger.by_category["per_task"] == 24 and ledger.by_category["prompts"] == 12
    assert categorize(m)["group.1.weight"] == "prompts"
    with pytest.raises(ValueError, match="unknown memory category 'cache'"):
        tag_memory(nn.Linear(1, 1), "cache")


def test_count_model_excludes_backbone_and_heads_from_the_budget():
    model = ContinualModel(MLP((1, 8, 8), hidden_sizes=[5]), 10)
    holder = nn.Module()
    holder.model = model
    holder.buffer = ReplayBuffer(3, (1, 8, 8), 10)
    # backbone 64 x 5 x 4 + 5 x 4 = 1300; head 5 x 10 x 4 + 10 x 4 = 240
    # buffer: x 3 x 64 = 192 (exemplars); y 3 x 2 + task 3 x 2 + two int64 counters 16 = 28 (exemplar_extras)
    free = measure(holder, count_model=False, budget_bytes=1000)
    assert free.by_category["backbone"] == 1300 and free.by_category["heads"] == 240
    assert free.by_category["exemplars"] == 192 and free.by_category["exemplar_extras"] == 28
    assert free.total_bytes == 1760 and free.budgeted_bytes == 220 and not free.over_budget
    counted = measure(holder, count_model=True, budget_bytes=1000)
    assert counted.budgeted_bytes == 1760 and counted.over_budget
    assert "counted total" in counted.table() and counted.to_dict()["budgeted_bytes"] == 1760


def test_replay_buffer_bytes_per_sample():
    # an MNIST image is 784 uint8 bytes, its label an int16 (2 bytes), its task id an int16 (2 bytes)
    assert ReplayBuffer.bytes_per_sample((1, 28, 28), 10) == 784 + 2 + 2
    # with float32 logits over 10 classes: + 40 bytes
    assert ReplayBuffer.bytes_per_sample((1, 28, 28), 10, store_logits=True) == 788 + 40
    assert ReplayBuffer.bytes_per_sample((3, 32, 32), 100) == 3072 + 4
    assert ReplayBuffer.bytes_per_sample((3,), 40_000) == 3 + 4 + 2  # labels need int32 beyond 2^15 classes
    for logits in (False, True):  # what a buffer really holds: capacity x per-sample + the two counters
        buf = ReplayBuffer(5, (1, 28, 28), 10, store_logits=logits)
        assert measure(buf).total_bytes == 5 * ReplayBuffer.bytes_per_sample((1, 28, 28), 10, logits) + 16
        assert measure(buf).by_category["exemplars"] == 5 * 784


def test_budget_arithmetic():
    assert Budget(mb=0.5).bytes == 524_288 and Budget().bytes is None and MB == 2**20
    ledger = measure(Holder(), budget_bytes=Budget(mb=0.0005).bytes)  # 524 bytes < 728
    with pytest.raises(BudgetError, match=r"over budget after task 3: keeps 728 counted bytes .*budget.mb=0.0005"):
        Budget(mb=0.0005).check(ledger, "after task 3")
    message = Budget(mb=0.0005, enforce=False).check(ledger, "after task 3")
    assert "over budget after task 3" in message
    assert Budget(mb=1).check(measure(Holder(), budget_bytes=Budget(mb=1).bytes), "now") is None


def er_with(budget: Budget, capacity="auto") -> ER:
    torch.manual_seed(0)
    model = ContinualModel(MLP((1, 8, 8)), 10)  # backbone 66,400 + head 4,040 = 70,440 bytes
    return ER(model, RunContext(DIGITS_INFO, budget=budget), buffer={"capacity": capacity})


def test_auto_buffer_takes_what_the_budget_leaves():
    # count_model=false: (0.5 x 2^20 - 16) // (64 + 2 + 2) = 524,272 // 68 = 7,709
    assert er_with(Budget(mb=0.5)).buffer.capacity == 7709
    # count_model=true: (524,288 - 70,440 - 16) // 68 = 6,674
    method = er_with(Budget(mb=0.5, count_model=True))
    assert method.buffer.capacity == 6674
    assert measure(method, count_model=True).budgeted_bytes == 524_288  # 70,440 + 6,674 x 68 + 16: exactly full
    with pytest.raises(BudgetError, match="capacity 'auto' needs a budget"):
        er_with(Budget())


def test_budget_too_small_for_an_auto_buffer_names_budget_held_and_minimum():
    with pytest.raises(BudgetError) as err:
        er_with(Budget(mb=0.00001))  # 10 bytes; the buffer's counters alone take 16, one digit 68 more
    text = str(err.value)
    assert "budget.mb=1e-05 (10 bytes)" in text and "16 counted bytes" in text and "84 bytes" in text
    assert "at least 0.0001" in text and "count_model=false" not in text
    with pytest.raises(BudgetError) as err:
        er_with(Budget(mb=0.05, count_model=True))  # the model alone (70,440 bytes) is over 52,429
    text = str(err.value)
    assert "budget.mb=0.05 (52,429 bytes)" in text and "70,456 counted bytes" in text
    assert "70,524 bytes" in text and "at least 0.0673" in text and "budget.count_model=false" in text
    # the suggested minimum is enough (it is rounded up, never down)
    assert er_with(Budget(mb=0.0673, count_model=True)).buffer.capacity >= 1


def test_enforced_budget_stops_before_training_and_unenforced_records_violations(tmp_path):
    over = ["method=er", "method.buffer.capacity=500", "budget.mb=0.01"]  # 500 x 68 + 16 = 34,016 > 10,486
    with pytest.raises(BudgetError, match=r"before training: keeps 34,016 counted bytes .*\(10,486 bytes\)"):
        run(compose(over + TINY), tmp_path / "enforced", show_progress=False)
    results = run(compose(over + TINY + ["budget.enforce=false"]), tmp_path / "recorded", show_progress=False)
    assert results["status"] == "complete" and len(results["acc_matrix"]) == 5
    violations = results["memory"]["violations"]
    assert len(violations) == 6  # the one before training is recorded too
    assert "over budget before training: keeps 34,016 counted bytes" in violations[0]
    assert all(f"over budget after task {i}: keeps 34,016 counted bytes" in v for i, v in enumerate(violations[1:]))
    assert results["memory"]["enforce"] is False and results["memory"]["budget_bytes"] == 10_486
    assert json.loads((tmp_path / "recorded" / "results.json").read_text())["memory"]["violations"] == violations


def test_cli_sizes_the_auto_buffer_from_the_budget(cli, run_dir, digits_root):
    proc = cli("method=er", "budget.mb=0.5", "method.buffer.capacity=auto", "stream.train_per_task=40",
               "log.tensorboard=false", "log.plots=false", f"data.root={digits_root}", f"hydra.run.dir={run_dir}",
               module=True)  # python -m clzoo
    assert proc.returncode == 0, proc.stderr
    memory = json.loads((run_dir / "results.json").read_text())["memory"]
    capacity = (int(0.5 * 2**20) - 16) // (64 + 2 + 2)  # = 7,709 digits of 8x8 uint8 + int16 label + int16 task
    assert capacity == 7709
    assert memory["by_category"]["exemplars"] == capacity * 64
    assert memory["by_category"]["exemplar_extras"] == capacity * 4 + 16
    assert memory["budgeted_bytes"] == 7709 * 68 + 16 == 524_228 and memory["budget_bytes"] == 524_288
    assert memory["violations"] == [] and memory["budget_mb"] == 0.5
