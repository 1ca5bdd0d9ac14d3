"""The replay family (ER, DER, DER++, ER-ACE, A-GEM, iCaRL, GDumb): the conformance kit, and behaviour checks of
the parts they are built from (reservoir and class-balanced insertion, herding, A-GEM's projection, ACE's mask,
DER's stored logits). Offline, on the bundled digits stream."""
from __future__ import annotations

import copy

import pytest
import torch

from clzoo.data import build_stream
from clzoo.memory.buffer import ReplayBuffer
from clzoo.memory.selection import class_balanced_random, herding
from clzoo.methods import RunContext, StreamInfo, make_method
from clzoo.methods.replay.agem import project_gradient
from clzoo.methods.replay.er_ace import ace_mask
from clzoo.models import MLP, ContinualModel
from clzoo.testing import TINY_STREAM, check_method

SMALL_MLP = {"_target_": "clzoo.models.MLP", "hidden_sizes": [32]}
REPLAY = ["der", "derpp", "er_ace", "agem", "icarl", "gdumb"]


@pytest.fixture(scope="module")
def stream():
    return build_stream(**TINY_STREAM)


def make(name, stream, seed=0, **hparams):
    torch.manual_seed(seed)
    ctx = RunContext(StreamInfo.from_stream(stream), optimizer={"name": "sgd", "lr": 0.05})
    model = ContinualModel(MLP(stream.input_shape, [32]), stream.n_classes)
    return make_method(name, model, ctx, **hparams)


# ---------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", REPLAY)
def test_conformance_kit(name, tmp_path):
    # iCaRL keeps a teacher copy of the model, counted against the budget: with the default 100-100 MLP the teacher
    # alone (70 kB) exceeds the kit's 0.05 MB budget, so its auto-buffer check runs on a smaller network
    kwargs = {"model": SMALL_MLP} if name == "icarl" else {}
    report = check_method(name, workdir=tmp_path, buffer={"capacity": 50}, **kwargs)
    assert report.checks == ["trains and evaluates", "ledger equals state_dict bytes", "no tensors outside state_dict",
                             "resume gives identical results", "auto buffer fills the budget"]
    assert report.auto_capacity > 0
    ledger = report.results["memory"]["by_category"]
    assert ledger["exemplars"] == 50 * 64  # 50 uint8 8x8 images
    if name in ("der", "derpp"):  # the stored logits are paid for
        assert ledger["exemplar_extras"] >= 50 * 10 * 4
    if name == "icarl":
        assert ledger["teachers"] > 0 and ledger["prototypes"] == 10 * 32 * 4


# ---------------------------------------------------------------- reservoir
def _index_stream(n):
    return torch.arange(n, dtype=torch.int32).unsqueeze(1), torch.zeros(n, dtype=torch.long)


def test_reservoir_keeps_every_stream_sample_with_probability_m_over_n():
    n, m, b, trials = 1000, 100, 25, 100
    x, y = _index_stream(n)
    kept = torch.zeros(n)
    torch.manual_seed(0)
    for _ in range(trials):
        buf = ReplayBuffer(m, (1,), 10, x_dtype=torch.int32)
        for i in range(0, n, b):
            buf.add(x[i:i + b], y[i:i + b])
        assert len(buf) == m and buf.x.unique().numel() == m  # full, no sample twice
        kept[buf.x.squeeze(1).long()] += 1
    rate = kept / trials
    blocks = rate.view(10, -1).mean(1)  # inclusion rate of each tenth of the stream
    assert torch.allclose(blocks, torch.full_like(blocks, m / n), atol=0.015), blocks
    assert abs(rate[:10].mean() - m / n) < 0.04 and abs(rate[-10:].mean() - m / n) < 0.04


def test_vectorised_reservoir_equals_sequential_algorithm_r():
    n, m, b = 357, 40, 13
    x, y = _index_stream(n)
    torch.manual_seed(3)
    buf = ReplayBuffer(m, (1,), 10, x_dtype=torch.int32)
    for i in range(0, n, b):
        buf.add(x[i:i + b], y[i:i + b])
    # reference: one sample at a time, with the same uniform draws (one per sample, drawn per batch)
    torch.manual_seed(3)
    ref = [-1] * m
    for i in range(0, n, b):
        r = torch.rand(len(x[i:i + b]))
        for j in range(len(r)):
            pos = i + j
            slot = pos if pos < m else int((r[j:j + 1] * torch.tensor([pos + 1])).long())
            if slot < m:
                ref[slot] = pos
    assert buf.x.squeeze(1).tolist() == ref


# ---------------------------------------------------------------- class-balanced (GDumb)
def _reference_class_balanced(x, y, capacity):
    """GDumb's greedy sampler, one sample at a time (the rule of the paper's Algorithm 1)."""
    X, Y, filled = [None] * capacity, [None] * capacity, 0
    for xi, yi in zip(x.tolist(), y.tolist()):
        counts = torch.bincount(torch.tensor(Y[:filled], dtype=torch.long), minlength=10)
        n_cls = int((counts > 0).sum()) + int(counts[yi] == 0)
        if filled < capacity:
            slot, filled = filled, filled + 1
        elif counts[yi] * n_cls < capacity:
            cands = (torch.tensor(Y[:filled]) == int(counts.argmax())).nonzero().squeeze(1)
            slot = int(cands[torch.randint(len(cands), (1,))])
        else:
            continue
        X[slot], Y[slot] = xi, yi
    return X[:filled], Y[:filled]


def test_class_balanced_buffer_is_balanced_and_equals_the_sequential_rule():
    g = torch.Generator().manual_seed(0)
    # an imbalanced class-incremental stream: class c has 30 + 25c samples, classes arrive two at a time
    y = torch.cat([torch.full((30 + 25 * c,), c) for c in range(10)])
    y = torch.cat([y[(y // 2) == t][torch.randperm(int(((y // 2) == t).sum()), generator=g)] for t in range(5)])
    x = torch.arange(len(y), dtype=torch.int32).unsqueeze(1)
    torch.manual_seed(1)
    buf = ReplayBuffer(48, (1,), 10, x_dtype=torch.int32, selection="class_balanced")
    for i in range(0, len(y), 7):
        buf.add(x[i:i + 7], y[i:i + 7])
    counts = buf.class_counts()
    assert len(buf) == 48 and int(counts.max() - counts.min()) <= 1, counts
    assert y[buf.x.squeeze(1).long()].tolist() == buf.y.long().tolist()  # each slot holds its own label
    torch.manual_seed(1)
    ref_x, ref_y = _reference_class_balanced(x.squeeze(1), y, 48)
    assert buf.x.squeeze(1).tolist() == ref_x and buf.y.tolist() == ref_y


def test_class_balanced_random_subset():
    y = torch.tensor([0] * 50 + [1] * 7 + [2] * 30)
    idx = class_balanced_random(y, 40, torch.Generator().manual_seed(0))
    assert idx.unique().numel() == 40
    assert torch.bincount(y[idx]).tolist() == [17, 7, 16]  # the small class gives all it has, the rest is shared


# ---------------------------------------------------------------- herding (iCaRL)
def test_herding_picks_the_sample_nearest_the_mean_first_and_its_prefix_means_converge():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(400, 16, generator=g) + torch.linspace(0, 3, 16)
    mu = feats.mean(0)
    order = herding(feats, 100)
    assert order.unique().numel() == 100
    assert int(order[0]) == int((feats - mu).norm(dim=1).argmin())
    err = torch.stack([(feats[order[:k]].mean(0) - mu).norm() for k in range(1, 101)])
    rand_err = torch.stack([(feats[torch.randperm(400, generator=g)[:50]].mean(0) - mu).norm() for _ in range(50)])
    assert err[49] < 0.2 * rand_err.mean()          # far better than a random subset of the same size
    assert err[99] < err[9] < err[0]                # the prefix means approach the class mean ...
    assert (err * torch.arange(1, 101)).max() < 2 * (feats - mu).norm(dim=1).max()  # ... at herding's O(1/k) rate


def test_icarl_exemplars_shrink_by_prefix_and_classify_by_nearest_mean(stream):
    method = make("icarl", stream, buffer=20)
    method.start_task(stream.tasks[0])
    method.end_task(stream.tasks[0])
    first = method.buffer.all()
    assert method.buffer.class_counts()[:2].tolist() == [10, 10]
    method.start_task(stream.tasks[1])
    method.end_task(stream.tasks[1])
    after = method.buffer.all()
    assert method.buffer.class_counts()[:4].tolist() == [5, 5, 5, 5]  # M // 4 per seen class
    for c in (0, 1):  # an old class keeps the first m of its herding order
        assert torch.equal(after.x[after.y == c], first.x[first.y == c][:5])
    assert torch.allclose(method.prototypes[:4].norm(dim=1), torch.ones(4))
    assert torch.equal(method.prototypes[4:], torch.zeros_like(method.prototypes[4:]))
    method.eval()
    x = method.preprocess(stream.tasks[1].x_test[:20])
    feats = torch.nn.functional.normalize(method.model.features(x), dim=1)
    nearest = torch.cdist(feats, method.prototypes[:4]).argmin(1)
    assert torch.equal(method(x)[:, :4].argmax(1), nearest)


# ---------------------------------------------------------------- A-GEM
def test_agem_projection_never_conflicts_with_the_reference_gradient():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a, ref = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
        if a.dot(ref) >= 0:
            assert torch.equal(project_gradient(a, ref), a)  # no conflict: unchanged
            a = a - 2 * (a.dot(ref) / ref.dot(ref)) * ref     # mirror it into conflict
        assert a.dot(ref) < 0
        p = project_gradient(a, ref)
        assert p.dot(ref) >= -1e-4 * a.norm() * ref.norm()
        assert torch.allclose(p, a - (a.dot(ref) / ref.dot(ref)) * ref)
    assert torch.equal(project_gradient(a, torch.zeros(1000)), a)  # an empty reference changes nothing


def test_agem_memory_is_split_over_tasks_and_class_balanced(stream):
    method = make("agem", stream, buffer=52)
    for task in stream.tasks[:3]:
        method.start_task(task)
        method.end_task(task)
    mem = method.buffer.all()
    assert torch.bincount(mem.task).tolist() == [10, 10, 11]  # (t+1)M//T - tM//T slots for T=5, M=52
    assert torch.bincount(mem.y).tolist() == [5, 5, 5, 5, 6, 5]
    assert all(int(t) == int(y) // 2 for t, y in zip(mem.task, mem.y))


# ---------------------------------------------------------------- ER-ACE
def test_ace_mask_keeps_present_and_unseen_classes():
    keep = ace_mask(torch.tensor([3, 2, 3]), 10, 4)
    assert keep.tolist() == [False, False, True, True, True, True, True, True, True, True]


def test_er_ace_incoming_loss_leaves_masked_classes_untouched(stream):
    method = make("er_ace", stream, buffer=50)
    task = stream.tasks[1]
    method.start_task(task)  # second task, empty buffer: the step is the masked incoming loss alone
    head = method.model.head.weight.detach().clone()
    method.observe(task.x_train[:10], task.y_train[:10], task.id)
    moved = (method.model.head.weight.detach() - head).abs().sum(1)
    assert moved[:2].eq(0).all()              # old classes absent from the batch: no push-down
    assert moved[2:4].gt(0).all()             # the classes in the batch learn


def test_er_ace_cosine_head_is_the_scaled_cosine_and_passes_the_kit(stream, tmp_path):
    """``head=cosine``: the authors' classifier (scale 10, no bias): logits are 10 x the cosine between the
    features and each class's weight row, bounded by 10 whatever the norms; counted under ``heads``; resumes."""
    from clzoo.models.heads import CosineLinear

    method = make("er_ace", stream, buffer=50, head="cosine")
    head = method.model.head
    assert isinstance(head, CosineLinear) and not hasattr(head, "bias") and head.weight.shape == (10, 32)
    feats = torch.randn(6, 32) * 50
    expected = 10 * torch.nn.functional.cosine_similarity(feats[:, None], head.weight[None], dim=2)
    assert torch.allclose(head(feats), expected, atol=1e-5) and head(feats).abs().max() <= 10 + 1e-5
    report = check_method("er_ace", workdir=tmp_path, buffer={"capacity": 50}, head="cosine")
    assert "resume gives identical results" in report.checks
    assert report.results["memory"]["by_category"]["heads"] == 10 * 100 * 4  # the kit's 100-100 MLP; weights only, no bias
    with pytest.raises(ValueError, match="method.head=cosin is not a classifier"):
        make("er_ace", stream, buffer=50, head="cosin")


def test_icarl_ce_kd_is_pycils_loss(stream):
    """``loss=ce_kd``: cross-entropy over the seen classes, plus (after the first task) the KL distillation at T = 2
    from the old network's logits of the old classes, unscaled: the same gradient as PyCIL's ``_KD_loss``."""
    import torch.nn.functional as F

    method = make("icarl", stream, buffer=20, loss="ce_kd")
    for task in stream.tasks[:2]:
        method.start_task(task)
        x, y = task.x_train[:8], task.y_train[:8]
        inputs = method.augment(x)
        n_seen = method.seen_classes(task.id)
        logits = method.model(inputs)[:, :n_seen]
        expected = F.cross_entropy(logits, y)
        if task.id:
            old = method.teacher(inputs)[:, :2].detach()
            soft = F.softmax(old / 2, dim=1)
            expected = expected - (soft * F.log_softmax(logits[:, :2] / 2, dim=1)).sum(1).mean() \
                + (soft * F.log_softmax(old / 2, dim=1)).sum(1).mean()   # PyCIL's form minus the teacher's entropy
        assert torch.allclose(method.observe(x, y, task.id), expected, atol=1e-6)
        method.end_task(task)
    with pytest.raises(ValueError, match="method.loss=ce is not a loss"):
        make("icarl", stream, buffer=20, loss="ce")


# ---------------------------------------------------------------- DER
def test_der_stores_the_logits_of_the_step_that_inserted_each_sample(stream):
    for name in ("der", "derpp"):
        method = make(name, stream, buffer=30)
        task = stream.tasks[0]
        method.start_task(task)
        before = copy.deepcopy(method.model)
        x, y = task.x_train[:10], task.y_train[:10]
        method.observe(x, y, task.id)
        assert torch.allclose(method.buffer.logits[:10], before(method.augment(x)))
        x2, y2 = task.x_train[10:20], task.y_train[10:20]
        before = copy.deepcopy(method.model)
        method.observe(x2, y2, task.id)  # replays the first batch, then stores the second batch's logits
        assert torch.allclose(method.buffer.logits[10:20], before(method.augment(x2)))
        assert not torch.allclose(method.buffer.logits[10:20], method.model(method.augment(x2)))


# ---------------------------------------------------------------- GDumb
def test_gdumb_memory_is_balanced_and_the_model_restarts_from_the_same_weights(stream):
    method = make("gdumb", stream, buffer=30, fit_epochs=2)
    init = copy.deepcopy(method.model.state_dict())
    method.reset_model()
    reset_once = copy.deepcopy(method.model.state_dict())
    for task in stream.tasks[:3]:
        method.start_task(task)
        for _ in range(2):  # two passes: the sampler must see each sample only once
            for i in range(0, task.n_train, 10):
                method.observe(task.x_train[i:i + 10], task.y_train[i:i + 10], task.id)
        method.end_task(task)
    assert method.buffer.class_counts()[:6].tolist() == [5] * 6
    assert len(method.buffer.all().x.unique(dim=0)) == 30
    assert int(method.buffer.n_seen) == sum(t.n_train for t in stream.tasks[:3])
    trained = method.model.state_dict()
    assert any(not torch.equal(trained[k], reset_once[k]) for k in trained)
    method.reset_model()
    assert all(torch.equal(method.model.state_dict()[k], reset_once[k]) for k in reset_once)
    assert any(not torch.equal(init[k], reset_once[k]) for k in init)  # a real re-initialisation
