"""Methods never see test data; a method that asks for validation data gets a seeded, stratified split of the
task's training data, which the engine does not train on."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from clzoo import Method
from clzoo.data import build_stream
from clzoo.data.scenarios import StreamError
from clzoo.engine.runner import run
from clzoo.testing import tiny_config


@pytest.fixture(scope="module")
def stream():
    return build_stream("digits", n_tasks=5, train_per_task=100, test_per_task=20)


def test_training_view_is_a_stratified_seeded_split_without_test_data(stream):
    task = stream.tasks[1]
    view = task.training_view(0.2, seed=3)
    for c in task.classes:
        n_c = int((task.y_train == c).sum())
        assert int((view.y_val == c).sum()) == round(0.2 * n_c)
        assert int((view.y_train == c).sum()) + int((view.y_val == c).sum()) == n_c
    assert view.n_train + view.n_val == task.n_train
    # train and validation rows together are exactly the task's training rows
    rows = lambda x: sorted(map(tuple, x.flatten(1).tolist()))  # noqa: E731
    assert rows(torch.cat([view.x_train, view.x_val])) == rows(task.x_train)
    again, other = task.training_view(0.2, seed=3), task.training_view(0.2, seed=4)
    assert torch.equal(again.x_val, view.x_val) and not torch.equal(other.x_val, view.x_val)
    plain = task.training_view()
    assert plain.x_train is task.x_train and plain.n_val == 0
    with pytest.raises(AttributeError, match="do not see test data.*validation_fraction"):
        view.x_test
    with pytest.raises(StreamError, match="validation_fraction"):
        task.training_view(1.0)


class Recorder(Method):
    """Records what the engine hands it (plain Python lists: fine for a run, not for the conformance kit)."""

    validation_fraction = 0.25

    def __init__(self, model, ctx):
        super().__init__(model, ctx)
        self.observed, self.views = [], []

    def begin_task(self, task):
        assert not hasattr(task, "x_test") and not hasattr(task, "y_test")
        self.views.append((task.n_train, task.n_val))
        self.observed.append(0)

    def observe(self, x, y, task_id):
        self.observed[-1] += len(y)
        return self.step(F.cross_entropy(self.model(self.augment(x)), y))


def test_engine_trains_only_on_the_rest_and_hands_no_test_data(tmp_path, stream):
    seen = {}
    cfg = tiny_config(Recorder, epochs=1, stream={"train_per_task": 100, "test_per_task": 20})
    run(cfg, tmp_path / "run", show_progress=False, observer=lambda m, t: seen.setdefault("m", m))
    method = seen["m"]
    for (n_train, n_val), observed, task in zip(method.views, method.observed, stream.tasks):
        expected = sum(round(0.25 * int((task.y_train == c).sum())) for c in task.classes)
        assert n_val == expected > 0 and n_train + n_val == task.n_train
        assert observed == n_train                                                 # one epoch, validation left out


def test_first_task_epochs_trains_the_first_task_longer_and_is_left_out_of_the_hash(tmp_path, monkeypatch):
    """``trainer.first_task_epochs``: the base task gets its own number of epochs (non-exemplar protocols train it
    longer); later tasks keep ``trainer.epochs``, and a config without the option hashes as before it existed."""
    from collections import Counter

    from clzoo.engine.checkpoint import config_hash
    from clzoo.methods.base import RunContext, StreamInfo
    from clzoo.methods.baselines.finetune import Finetune

    steps = Counter()
    observe = Finetune.observe
    monkeypatch.setattr(Finetune, "observe", lambda self, x, y, t: (steps.update([t]), observe(self, x, y, t))[1])
    cfg = tiny_config("finetune", epochs=1)
    plain = run(cfg, tmp_path / "plain", show_progress=False)
    plain_steps = dict(steps)
    steps.clear()
    cfg_long = {**cfg, "trainer": {**cfg["trainer"], "first_task_epochs": 3}}
    long = run(cfg_long, tmp_path / "long", show_progress=False)
    assert steps[0] == 3 * plain_steps[0] and all(steps[t] == plain_steps[t] for t in plain_steps if t)
    assert long["acc_matrix"] != plain["acc_matrix"]
    assert config_hash({**cfg, "trainer": {**cfg["trainer"], "first_task_epochs": None}}) == config_hash(cfg)
    assert config_hash(cfg_long) != config_hash(cfg)

    info = StreamInfo(n_tasks=3, n_classes=6, input_shape=(1, 8, 8), task_classes=[[0, 1], [2, 3], [4, 5]])
    assert [RunContext(info, epochs=2, first_task_epochs=7).epochs_of(t) for t in range(3)] == [7, 2, 2]
    assert RunContext(info, epochs=2).epochs_of(0) == 2


def test_first_task_optimizer_sets_the_base_tasks_optimizer_and_schedule_only(tmp_path, monkeypatch):
    """``trainer.first_task_optimizer``: task 0 trains with its own weight decay, learning rate and milestones (the
    PyCIL / MEMO protocols' init_* settings); every later task with ``trainer.optimizer``. Resumed at a task
    boundary, the later tasks still get the run's own settings; the option is left out of the hash when unset."""
    from clzoo.config import ConfigError, validate
    from clzoo.engine.checkpoint import config_hash
    from clzoo.methods.baselines.finetune import Finetune

    seen = []  # (task, lr, weight_decay) of the optimizer at every epoch's last step
    observe = Finetune.observe

    def spy(self, x, y, t):
        group = self.opt.param_groups[0]
        seen.append((t, group["lr"], group["weight_decay"]))
        return observe(self, x, y, t)

    monkeypatch.setattr(Finetune, "observe", spy)
    cfg = tiny_config("finetune", epochs=2)
    cfg["trainer"]["optimizer"] = {**cfg["trainer"]["optimizer"], "lr": 0.1, "weight_decay": 0.0}
    first = {"lr": 0.4, "weight_decay": 0.001, "milestones": [1], "gamma": 0.5}
    cfg_first = {**cfg, "trainer": {**cfg["trainer"], "first_task_optimizer": first}}
    run(cfg_first, tmp_path / "first", show_progress=False)
    by_task = {}
    for t, lr, wd in seen:
        by_task.setdefault(t, set()).add((lr, wd))
    assert by_task[0] == {(0.4, 0.001), (0.2, 0.001)}          # milestone at epoch 1 of task 0: x 0.5
    assert all(by_task[t] == {(0.1, 0.0)} for t in by_task if t)   # later tasks: trainer.optimizer, no milestones
    assert config_hash({**cfg, "trainer": {**cfg["trainer"], "first_task_optimizer": None}}) == config_hash(cfg)
    assert config_hash(cfg_first) != config_hash(cfg)

    # resumed after task 1: the later tasks keep the run's settings
    seen.clear()
    stopped = {**cfg_first, "trainer": {**cfg_first["trainer"], "max_tasks": 2}}
    run(stopped, tmp_path / "resumed", show_progress=False)
    seen.clear()
    run({**cfg_first, "resume": True}, tmp_path / "resumed", show_progress=False)
    assert seen and {(lr, wd) for _, lr, wd in seen} == {(0.1, 0.0)}

    for bad, words in [({"weight_decai": 0.1}, "unknown key(s) ['weight_decai']"), ("0.1", "must be a mapping"),
                       ({"lr": -1}, "trainer.first_task_optimizer.lr=-1 must be >= 0")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            validate({**cfg, "trainer": {**cfg["trainer"], "first_task_optimizer": bad}})
    with pytest.raises(ConfigError, match="needs task boundaries"):
        validate({**cfg, "stream": {**cfg["stream"], "task_free": True},
                  "trainer": {**cfg["trainer"], "first_task_optimizer": first}})


def test_optimizer_settings_the_chosen_optimizer_would_drop_are_refused():
    """``trainer.optimizer``: an unknown key, an unknown name, SGD's momentum on Adam or Adam's betas on SGD would
    be silently ignored by the optimizer; each is one clear error. The known keys are ``build_optimizer``'s own."""
    import inspect

    from clzoo.config import OPTIMIZER_KEYS, ConfigError, validate
    from clzoo.methods.base import build_optimizer

    arguments = [p.name for p in inspect.signature(build_optimizer).parameters.values()
                 if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "params"]
    assert set(OPTIMIZER_KEYS) == {*arguments, "milestones", "gamma"}
    cfg = tiny_config("finetune")
    base = cfg["trainer"]["optimizer"]

    def with_optimizer(**opts):
        return {**cfg, "trainer": {**cfg["trainer"], "optimizer": {**base, **opts}}}

    validate(with_optimizer(name="adam", momentum=0.0, betas=[0.9, 0.99]))
    validate(with_optimizer(name="sgd", momentum=0.9, nesterov=True))
    for opts, words in [({"lr_decay": 0.1}, "trainer.optimizer has unknown key(s) ['lr_decay']"),
                        ({"name": "rmsprop"}, "trainer.optimizer.name=rmsprop is not an optimizer: use sgd, adam, adamw"),
                        ({"name": "adam", "momentum": 0.9}, "momentum / nesterov are SGD's settings and adam would"),
                        ({"betas": [0.9, 0.99]}, "trainer.optimizer.betas=[0.9, 0.99] is Adam's setting"),
                        ({"nesterov": True}, "trainer.optimizer.nesterov=true needs a momentum"),
                        ({"name": "adamw", "betas": [0.9]}, "must be two numbers in [0, 1)")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            validate(with_optimizer(**opts))
    # the first task's settings are checked merged over the run's: Adam's betas on a first task that stays SGD
    with pytest.raises(ConfigError, match=re.escape("trainer.first_task_optimizer.betas=[0.9, 0.99] is Adam's")):
        validate({**cfg, "trainer": {**cfg["trainer"], "first_task_optimizer": {"betas": [0.9, 0.99]}}})
