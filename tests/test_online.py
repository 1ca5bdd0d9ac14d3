"""Online and task-free continual learning: the engine's task-free mode and anytime evaluation, resume in the middle
of an online task, and behaviour checks of GSS, MIR, task-free MAS and OnPro. Offline, on the bundled digits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clzoo.data import build_stream
from clzoo.engine.online import TaskFreeError
from clzoo.engine.runner import run
from clzoo.methods import RunContext, StreamInfo, make_method
from clzoo.methods.online.gss import GSS, flat_grads, max_cosine
from clzoo.methods.online.mir import MIR
from clzoo.methods.online.onpro import (OnPro, apf_pair_probabilities, ope_loss, pair_counts, prototype_contrast)
from clzoo.methods.online.tf_mas import PlateauDetector
from clzoo.methods.parts.views import rotation_views, view_labels
from clzoo.methods.replay.er import ER
from clzoo.models import MLP, ContinualModel
from clzoo.testing import TINY_STREAM, tiny_config

from conftest import error_line


@pytest.fixture(scope="module")
def stream():
    return build_stream(**TINY_STREAM)


def make(name, stream, seed=0, hidden=(16,), task_free=False, **hparams):
    torch.manual_seed(seed)
    ctx = RunContext(StreamInfo.from_stream(stream, task_free), optimizer={"name": "sgd", "lr": 0.05})
    model = ContinualModel(MLP(stream.input_shape, list(hidden)), stream.n_classes)
    method = make_method(name, model, ctx, **hparams)
    method.reset_optimizer()
    return method


def online_config(method, **kw):
    cfg = tiny_config(method, **kw)
    cfg["stream"]["online"] = True
    return cfg


# ---------------------------------------------------------------- engine: task-free mode
class SpyER(ER):
    """ER that records what the engine tells it."""

    supports_task_free = True
    calls: list = []

    def begin_task(self, task):
        SpyER.calls.append(("begin", task.id))

    def end_task(self, task):
        SpyER.calls.append(("end", task.id))

    def observe(self, x, y, task_id):
        SpyER.calls.append(("observe", task_id))
        return super().observe(x, y, task_id)


def test_task_free_run_hides_boundaries_and_still_fills_the_matrix(tmp_path):
    SpyER.calls = []
    cfg = online_config(SpyER, buffer={"capacity": 50})
    cfg["stream"]["task_free"] = True
    res = run(cfg, tmp_path / "tf", show_progress=False)
    kinds = {c[0] for c in SpyER.calls}
    assert kinds == {"observe"}, "task-free: no begin_task / end_task"
    assert {c[1] for c in SpyER.calls} == {None}, "task-free: observe gets task_id=None"
    assert len(res["acc_matrix"]) == 5 and all(len(r) == 5 for r in res["acc_matrix"])
    assert res["task_free"] is True
    # the buffer stores task id -1 for every sample
    ckpt = torch.load(sorted((tmp_path / "tf" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert set(ckpt["method"]["buffer.task"][: 50].tolist()) == {-1}
    # with boundaries, the same class is told them
    SpyER.calls = []
    cfg["stream"]["task_free"] = False
    run(cfg, tmp_path / "ta", show_progress=False)
    assert ("begin", 0) in SpyER.calls and ("end", 4) in SpyER.calls and ("observe", 3) in SpyER.calls


def test_task_free_refuses_a_boundary_method_before_training(tmp_path):
    cfg = tiny_config("mas")
    cfg["stream"]["task_free"] = True
    with pytest.raises(TaskFreeError, match="needs task boundaries"):
        run(cfg, tmp_path / "r", show_progress=False)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_cli_task_free_error_is_one_line(cli, digits_root):
    proc = cli("method=onpro", "stream.task_free=true", f"data.root={digits_root}")
    assert proc.returncode == 2
    assert "onpro' needs task boundaries" in error_line(proc.stderr)


def test_anytime_evaluation_every_n_samples(tmp_path):
    cfg = online_config("er", buffer={"capacity": 50})
    cfg["trainer"]["anytime_every"] = 100
    cfg["log"] = {**cfg["log"], "plots": True, "tensorboard": True}
    res = run(cfg, tmp_path / "a", show_progress=False)
    any_ = res["anytime"]
    total = sum(res["stream"]["train_sizes"])
    assert any_["samples"] == [s for s in range(100, total + 1, 100)] or len(any_["samples"]) == total // 100
    assert all(s2 > s1 for s1, s2 in zip(any_["samples"], any_["samples"][1:]))
    assert all(0.0 <= a <= 1.0 for a in any_["acc"]) and any_["task"][0] == 0 and any_["task"][-1] == 4
    assert any_["acc"][0] > 0.5  # learnt on the seen classes
    lines = (tmp_path / "a" / "anytime.csv").read_text().splitlines()
    assert lines[0] == "samples,task,acc_seen" and len(lines) == len(any_["samples"]) + 1
    assert (tmp_path / "a" / "anytime.png").stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "a" / "tensorboard")).Reload()
    assert len(events.Scalars("anytime/acc_seen")) == len(any_["samples"])


# ---------------------------------------------------------------- resume after a kill in the middle of a task
@pytest.mark.parametrize("name,task_free", [("mir", True), ("gss", False), ("onpro", False)])
def test_resume_after_a_kill_in_the_middle_of_an_online_task(tmp_path, monkeypatch, name, task_free):
    extra = {"mir": {"subsample": 20}, "onpro": {"rotations": 4, "buffer_batch_size": 16}}.get(name, {})
    cfg = online_config(name, buffer={"capacity": 40}, **extra)
    cfg["stream"]["task_free"] = task_free
    if name == "onpro":  # one Adam for the whole run (keeps_optimizer): its moments must survive the kill
        cfg["trainer"]["optimizer"] = {**cfg["trainer"]["optimizer"], "name": "adam", "lr": 0.001}
    cfg["trainer"]["anytime_every"] = 150
    full = run(cfg, tmp_path / "full", show_progress=False)

    cls = {"mir": MIR, "gss": GSS, "onpro": OnPro}[name]
    original, count = cls.observe, {"n": 0}

    def killed(self, x, y, task_id):  # dies at the 45th batch: the middle of the third task
        count["n"] += 1
        if count["n"] == 45:
            raise KeyboardInterrupt("killed")
        return original(self, x, y, task_id)

    monkeypatch.setattr(cls, "observe", killed)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "part", show_progress=False)
    monkeypatch.setattr(cls, "observe", original)
    resumed = run(dict(cfg, resume=True), tmp_path / "part", show_progress=False)
    assert resumed["acc_matrix"] == full["acc_matrix"]
    assert resumed["anytime"] == full["anytime"]  # the interrupted task's points are recomputed, not duplicated


# ---------------------------------------------------------------- GSS
@pytest.mark.parametrize("per_sample", ["factored", "vmap"])
def test_gss_scores_match_a_per_sample_loop(stream, per_sample):
    method = make("gss", stream, buffer=40, per_sample=per_sample)
    method.model.eval()  # as GSS.admit scores
    x = method.preprocess(stream.tasks[0].x_train[:6])
    y = stream.tasks[0].y_train[:6]
    reference = torch.randn(4, sum(p.numel() for p in method.model.parameters()))
    fast = method.sample_scores(x, y, reference)
    slow = []
    for i in range(len(y)):
        loss = F.cross_entropy(method.model(x[i:i + 1]), y[i:i + 1])
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(method.model.parameters()))])
        slow.append(max(F.cosine_similarity(g, r, dim=0) for r in reference))
    torch.testing.assert_close(fast, torch.stack(slow), atol=1e-5, rtol=1e-4)


def test_factored_gradients_apply_only_to_linear_networks_in_eval_mode():
    from clzoo.methods.parts.factored_grads import linear_grad_similarity
    torch.manual_seed(0)
    loss = lambda logits, t: F.cross_entropy(logits, t, reduction="sum")  # noqa: E731
    x, y = torch.randn(5, 3, 4, 4), torch.randint(0, 3, (5,))
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
    assert linear_grad_similarity(conv, loss, x, y, torch.randn(2, 83)) is None  # the conv's gradient is no outer product
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
    assert linear_grad_similarity(mlp, loss, x, y, torch.randn(2, 147)) is None  # training mode
    mlp.eval()
    dots, squares = linear_grad_similarity(mlp, loss, x, y, torch.randn(2, 147))
    assert dots.shape == (5, 2) and squares.shape == (5,) and bool((squares > 0).all())
    with pytest.raises(ValueError, match="147 trainable parameters"):
        linear_grad_similarity(mlp, loss, x, y, torch.randn(2, 10))


def test_gss_fills_then_replaces_by_score(stream):
    method = make("gss", stream, buffer=30)
    task = stream.tasks[0]
    for i in range(0, 100, 10):
        method.observe(task.x_train[i:i + 10], task.y_train[i:i + 10], 0)
    assert len(method.buffer) == 30
    assert torch.all(method.scores[:10] == 0.1)  # the first batch: constant score
    assert torch.all(method.scores.abs() <= 1.0 + 1e-6)
    assert method.buffer.n_seen == 100
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(max_cosine(torch.tensor([[1.0, 1.0]]), g), torch.tensor([math.sqrt(0.5)]))
    assert flat_grads({"a": torch.ones(3, 2, 2), "b": torch.ones(3, 5)}).shape == (3, 9)


# ---------------------------------------------------------------- MIR
def test_mir_candidates_exclude_the_current_task_or_the_incoming_classes(stream):
    method = make("mir", stream, buffer=60, subsample=50)
    for t in range(3):
        task = stream.tasks[t]
        method.buffer.add(task.x_train[:20], task.y_train[:20], t)
    for _ in range(5):
        idx = method.candidates(stream.tasks[2].y_train[:10], task_id=2)
        assert len(idx) == 40 and not (method.buffer.task[idx] == 2).any()
    incoming = torch.tensor([0, 1, 4])
    idx = method.candidates(incoming, task_id=None)  # task-free: by class
    allowed = int((~torch.isin(method.buffer.y[:60].long(), incoming)).sum())
    assert len(idx) == min(50, allowed) and not torch.isin(method.buffer.y[idx].long(), incoming).any()
    # the first task: nothing to retrieve, a plain step
    fresh = make("mir", stream, buffer=60)
    fresh.buffer.add(stream.tasks[0].x_train[:20], stream.tasks[0].y_train[:20], 0)
    assert len(fresh.candidates(stream.tasks[0].y_train[:10], 0)) == 0


def test_mir_scores_are_the_loss_increase_of_the_virtual_step(stream):
    method = make("mir", stream, buffer=60, subsample=20, minibatch_size=5)
    task = stream.tasks[0]
    method.buffer.add(task.x_train[:20], task.y_train[:20], 0)
    method.opt.zero_grad()
    F.cross_entropy(method.model(method.augment(stream.tasks[1].x_train[:10])), stream.tasks[1].y_train[:10]).backward()
    index = torch.arange(20)
    scores, inputs, labels = method.interference(index, lr=0.05)
    import copy

    virtual = copy.deepcopy(method.model)
    with torch.no_grad():
        for p, q in zip(virtual.parameters(), method.model.parameters()):
            p -= 0.05 * q.grad
        expected = (F.cross_entropy(virtual(inputs), labels, reduction="none")
                    - F.cross_entropy(method.model(inputs), labels, reduction="none"))
    torch.testing.assert_close(scores, expected)


def test_mir_subsample_larger_than_buffer_is_refused(stream):
    with pytest.raises(ValueError, match="subsample=80 is larger than the buffer"):
        make("mir", stream, buffer=50, subsample=80)


# ---------------------------------------------------------------- task-free MAS
def test_plateau_rule_fires_on_a_constructed_loss_sequence():
    det = PlateauDetector(window=3, mean_threshold=0.2, variance_threshold=0.1)
    seq = [2.0, 1.5, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 1.8, 1.9, 2.0, 0.05, 0.05, 0.05, 0.05]
    fired = [i for i, loss in enumerate(seq) if det.update(loss)]
    # first plateau once the window is low (index 5); no second update on the same plateau; a new peak, then a
    # second plateau (index 13)
    assert fired == [5, 13]


def test_task_free_mas_updates_importance_as_a_running_average(stream):
    method = make("tf_mas", stream, task_free=True, mean_threshold=10.0, variance_threshold=10.0)
    task = stream.tasks[0]
    for i in range(0, 30, 10):  # the recent buffer (30) is full after 3 batches: first update, then a plateau
        method.observe(task.x_train[i:i + 10], task.y_train[i:i + 10], None)
    assert int(method.n_updates) == 1 and len(method.hard) == 30
    first = method.importance.clone()
    assert first.abs().sum() > 0
    torch.testing.assert_close(method.anchor, torch.cat([p.detach().reshape(-1) for p in method.model.parameters()]))
    method.plateau.new_peak.fill_(True)
    method.consolidate()  # second update: Omega = g / 2 + Omega_1 / 2
    from clzoo.methods.online.tf_mas import output_norm_importance

    method.model.eval()
    g = output_norm_importance(method.model, method.preprocess(method.hard.all().x))
    torch.testing.assert_close(method.importance, first / 2 + g / 2, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- OnPro
def test_ope_is_log_2k_minus_1_for_random_prototypes_and_vanishes_as_positives_align():
    torch.manual_seed(0)
    k, d = 5, 4096
    losses = [float(prototype_contrast(torch.randn(k, d), torch.randn(k, d))) for _ in range(20)]
    assert abs(sum(losses) / len(losses) - math.log(2 * k - 1)) < 0.02
    # orthonormal classes, positives equal: log(1 + (2K - 2) exp(-1/t)), which tends to 0 as t -> 0
    p = torch.eye(k, 16)
    for t in (0.5, 0.1, 0.05):
        exact = math.log(1 + (2 * k - 2) * math.exp(-1 / t))
        assert abs(float(prototype_contrast(p, p, t)) - exact) < 1e-5
    assert float(prototype_contrast(p, p, 0.05)) < 1e-7
    # aligning the positives lowers the loss monotonically
    noise = torch.randn(k, 16)
    values = [float(prototype_contrast(p, p + s * noise)) for s in (2.0, 1.0, 0.5, 0.1, 0.0)]
    assert values == sorted(values, reverse=True)


def test_ope_prototypes_are_class_means_of_present_classes():
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([1, 1, 3, 3, 3, 1])
    loss, p1, p2 = ope_loss(z1, z2, y, n_classes=5)
    torch.testing.assert_close(p1[1], z1[[0, 1, 5]].mean(0))
    torch.testing.assert_close(p2[3], z2[[2, 3, 4]].mean(0))
    assert p1[0].abs().sum() == 0 and p1[4].abs().sum() == 0
    torch.testing.assert_close(loss, prototype_contrast(p1[[1, 3]], p2[[1, 3]]))


def test_apf_pair_distribution_is_softmax_of_inverse_distance():
    torch.manual_seed(0)
    means = torch.randn(6, 8)
    means[2] = 0  # a class without prototype takes no part
    pairs, probs = apf_pair_probabilities(means)
    present = [0, 1, 3, 4, 5]
    expected_pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]
    assert [tuple(p) for p in pairs.tolist()] == expected_pairs
    inv = torch.tensor([1 / float((means[a] - means[b]).norm()) for a, b in expected_pairs])
    torch.testing.assert_close(probs, inv.softmax(0))
    counts = pair_counts(probs, 16)
    assert int(counts.sum()) == 16 and (counts >= 0).all()
    big = pair_counts(probs, 100000).double() / 100000
    torch.testing.assert_close(big, probs.double(), atol=1e-4, rtol=0)


def test_rotation_views_and_bad_image_shapes(stream):
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    views = rotation_views(x, 16)
    assert views.shape == (32, 1, 4, 4)
    torch.testing.assert_close(views[:2], x)  # view 0 is the image itself
    torch.testing.assert_close(views[2:4, ..., :2], x[..., :2].flip(-2, -1))  # left half turned by 180 degrees
    torch.testing.assert_close(views[16:18], torch.rot90(x, 1, (2, 3)))  # block 8..11: rotated by 90 degrees
    assert view_labels(torch.tensor([1, 2]), 4, 10).tolist() == [1, 2, 11, 12, 21, 22, 31, 32]
    for shape, message in [((1, 8, 6), "square"), ((1, 9, 9), "even width")]:
        info = StreamInfo(5, 10, shape, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
        model = ContinualModel(MLP(shape, [8]), 10)
        with pytest.raises(ValueError, match=message):
            make_method("onpro", model, RunContext(info), buffer=20)
    info = StreamInfo(5, 10, (1, 9, 9), [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    make_method("onpro", ContinualModel(MLP((1, 9, 9), [8]), 10), RunContext(info), buffer=20, rotations=4)


def test_onpro_learns_its_first_task_and_trains_on_the_buffer_after(stream):
    method = make("onpro", stream, hidden=(32,), rotations=4, buffer=60, buffer_batch_size=16, projection_dim=16)
    method.begin_task(stream.tasks[0])
    for t in range(2):
        task = stream.tasks[t]
        method.begin_task(task)
        for i in range(0, 120, 10):
            loss = method.observe(task.x_train[i:i + 10], task.y_train[i:i + 10], t)
            assert torch.isfinite(loss)
    assert int(method.seen.sum()) == 4
    assert (method.classes_mean[:4].abs().sum(1) > 0).all() and method.classes_mean[4:].abs().sum() == 0


def test_onpro_keeps_one_optimizer_across_tasks(stream):
    """OnPro's official code builds one Adam for the run: the engine does not rebuild it at task starts (its moments
    carry over); ``keep_optimizer=false`` rebuilds it as for other methods."""
    for keep in (True, False):
        method = make("onpro", stream, rotations=4, buffer=40, buffer_batch_size=8, keep_optimizer=keep)
        method.ctx.optimizer = {"name": "adam", "lr": 0.001}
        method.opt = None
        firsts = []
        for t in range(2):
            method.start_task(stream.tasks[t])
            firsts.append(method.opt)
            for i in range(0, 30, 10):
                method.observe(stream.tasks[t].x_train[i:i + 10], stream.tasks[t].y_train[i:i + 10], t)
        steps = max(int(st["step"]) for st in method.opt.state.values())
        assert (firsts[0] is firsts[1]) == keep and steps == (6 if keep else 3)


def test_er_ace_task_free_masks_from_the_first_batch(tmp_path):
    cfg = online_config("er_ace", buffer={"capacity": 50})
    cfg["stream"]["task_free"] = True
    res = run(cfg, tmp_path / "r", show_progress=False)
    ckpt = torch.load(sorted((tmp_path / "r" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert int(ckpt["method"]["max_label"]) == 9  # the largest label seen so far: classes 0..9 seen
    assert res["memory"]["by_category"]["other"] == 8  # the 8-byte counter is paid for
    assert res["acc_matrix_task_il"][0][0] > 0.6
