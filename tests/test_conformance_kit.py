"""The conformance kit catches hidden memory: one test per deliberate breach, each failing with a message naming it.

Each breach is an otherwise correct ER method that keeps something off the books: a list of tensors, a large
plain tensor attribute, a non-persistent buffer, tensors in a dict, and a store tagged as model memory (``heads``,
which budget.mb does not count by default). The kit stops at the first inspection that sees it (when the method
is built or after task 0), so each test is short.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clzoo import Method
from clzoo.memory import Budget, measure, misfiled
from clzoo.methods.base import RunContext, StreamInfo
from clzoo.models import MLP, ContinualModel
from clzoo.testing import ConformanceError, check_method, hidden_state

SHORT = {"n_tasks": 2, "train_per_task": 40, "test_per_task": 10}
LONGER = {"n_tasks": 5, "train_per_task": 30, "test_per_task": 10}  # the resume check stops after task 2


class PlainER(Method):
    """ER, correct: the base every breach below is made from."""

    def __init__(self, model, ctx, buffer=40, minibatch_size=10):
        super().__init__(model, ctx)
        self.minibatch_size = minibatch_size
        self.setup()
        self.buffer = self.make_buffer(buffer)

    def setup(self):
        pass

    def observe(self, x, y, task_id):
        inputs, labels = self.augment(x), y
        if not self.buffer.is_empty:
            replay = self.buffer.sample(self.minibatch_size)
            inputs, labels = torch.cat([inputs, self.augment(replay.x)]), torch.cat([labels, replay.y])
        loss = self.step(F.cross_entropy(self.model(inputs), labels))
        self.buffer.add(x, y, task_id)
        return loss


class ListBreach(PlainER):
    """Keeps a list of every incoming batch and never uses it."""

    def setup(self):
        self.history = []

    def observe(self, x, y, task_id):
        self.history.append(x.clone())
        return super().observe(x, y, task_id)


class PlainTensorBreach(PlainER):
    """A 4 MB plain tensor attribute."""

    def setup(self):
        self.table = torch.zeros(1024, 1024)


class NonPersistentBreach(PlainER):
    """A non-persistent buffer, learnt from the data and used only in forward."""

    def setup(self):
        self.register_buffer("class_prior", torch.zeros(self.ctx.stream.n_classes), persistent=False)

    def end_task(self, task):
        self.class_prior += torch.bincount(task.y_train, minlength=len(self.class_prior)).float()

    def forward(self, x, task_id=None):
        return self.model(x) + 0.0 * self.class_prior


class DictBreach(PlainER):
    """Tensors held in a dict (per-task feature means), used in forward."""

    def setup(self):
        self.means = {}

    def end_task(self, task):
        with torch.no_grad():
            self.means[task.id] = self.model.features(self.preprocess(task.x_train.to(self.device))).mean(0)


class HeadsTaggedBreach(PlainER):
    """A 200-sample store filed under ``heads`` (a model category, not counted by budget.mb by default)."""

    def setup(self):
        self.register_buffer("store", torch.zeros(200, 1, 8, 8, dtype=torch.uint8))
        self.memory_categories = {"store": "heads"}


@pytest.mark.parametrize("breach, words", [
    (ListBreach, ["[hidden state]", "'history[0]'"]),
    (PlainTensorBreach, ["[hidden state]", "'table'", "4,194,304 bytes"]),
    (NonPersistentBreach, ["[hidden state]", "'class_prior'"]),
    (DictBreach, ["[hidden state]", "'means[0]'"]),
    (HeadsTaggedBreach, ["[ledger]", "'store'", "heads"]),
])
def test_kit_fails_every_breach_naming_it(breach, words, tmp_path, capsys):
    with pytest.raises(ConformanceError) as err:
        check_method(breach, workdir=tmp_path, stream=SHORT)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert capsys.readouterr().out == ""  # the runs' logs are kept on the error, not printed


def _tiny_method(cls, **kwargs):
    info = StreamInfo(2, 4, (1, 8, 8), [[0, 1], [2, 3]])
    return cls(ContinualModel(MLP((1, 8, 8), hidden_sizes=[8]), 4), RunContext(info, budget=Budget(mb=1.0)), **kwargs)


def test_heads_tagged_store_outside_the_model_is_counted_against_the_budget():
    method = _tiny_method(HeadsTaggedBreach)
    ledger = measure(method, count_model=False)
    assert misfiled(method) == ["store"]
    assert ledger.by_category["other"] == 200 * 64  # filed where budget.mb counts it
    assert ledger.budgeted_bytes == 200 * 64 + ledger.by_category["exemplars"] + ledger.by_category["exemplar_extras"]
    assert misfiled(_tiny_method(PlainER)) == []


def test_hidden_state_sees_only_what_is_off_the_books():
    method = _tiny_method(PlainER)
    assert hidden_state(method) == {}  # parameters, buffers, the engine's ctx and optimizer are not hidden
    method.view = method.model.head.weight[:2]  # a view of a state tensor is not extra memory
    method.nested = {"a": [(1, torch.ones(3))]}
    method.register_buffer("scratch", torch.zeros(5), persistent=False)
    method.table = np.zeros(4)
    assert set(hidden_state(method)) == {"nested['a'][0][1]", "scratch", "table"}
    method.transient_state = ("scratch",)
    assert set(hidden_state(method)) == {"nested['a'][0][1]", "table"}


class TransientCarry(PlainER):
    """Declares a tensor transient but carries it across tasks: the resume comparison exposes it."""

    transient_state = ("count",)

    def setup(self):
        self.register_buffer("count", torch.zeros(()), persistent=False)

    def end_task(self, task):
        self.count += 1


def test_a_transient_tensor_that_carries_state_fails_the_resume_check(tmp_path):
    with pytest.raises(ConformanceError, match=r"\[resume\].*'count'"):
        check_method(TransientCarry, workdir=tmp_path, stream=LONGER, check_auto_budget=False,
                     min_task_il_acc=0.0)


class MemoryER(PlainER):
    """A correct method whose buffer argument is not called ``buffer``."""

    def __init__(self, model, ctx, memory=40, minibatch_size=10):
        super().__init__(model, ctx, buffer=memory, minibatch_size=minibatch_size)


def test_auto_budget_check_runs_for_a_buffer_not_named_buffer(tmp_path):
    # no config: built from signature defaults, its ReplayBuffer is found on the method, and since nothing sizes it
    # from the budget the kit says how to fix it
    with pytest.raises(ConformanceError, match=r"\[budget\].*clzoo\.buffer_capacity"):
        check_method(MemoryER, workdir=tmp_path, stream=LONGER, min_task_il_acc=0.0)
