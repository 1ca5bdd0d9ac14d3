"""The exemplar-free prototype family (NCM, PASS, PRD, NAPA-VQ) and its shared parts: the numbers and invariants the
papers' code implies, and the bad inputs each refuses before training."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clzoo.data import StreamError, build_stream
from clzoo.engine.runner import build_model, build_stream_from_config, instantiate, run, transforms_from_config
from clzoo.memory.ledger import measure, tag_memory
from clzoo.methods import RunContext, StreamInfo, make_method
from clzoo.methods.parts.contrastive import supcon_loss
from clzoo.methods.parts.distillation import feature_distillation
from clzoo.methods.parts.prototypes import PrototypeStore, ncm_logits
from clzoo.methods.parts.rotation import RotationError, class_logits, joint_labels, rotate4
from clzoo.methods.prototype.napavq import NeighbourhoodGraph
from clzoo.models import ContinualModel, MLP
from clzoo.testing import tiny_config
from conftest import error_line

METHODS = ["ncm", "pass", "prd", "napavq"]
ADAM = {"name": "adam", "lr": 1e-3}


def built(name, optimizer=None, stream=None, **hparams):
    """(method, stream) on the tiny digits stream, as the runner builds them."""
    cfg = tiny_config(name, optimizer=optimizer, stream=stream, **hparams)
    s = build_stream_from_config(cfg)
    tr, ev = transforms_from_config(None, "cpu")
    ctx = RunContext(StreamInfo.from_stream(s), torch.device("cpu"), tr, ev, optimizer=cfg["trainer"]["optimizer"],
                     batch_size=10, epochs=1)
    torch.manual_seed(0)
    return instantiate(cfg["method"], model=build_model(cfg["model"], s), ctx=ctx).train(), s


def train_task(method, task, steps=None):
    method.start_task(task)
    n = len(task.y_train) if steps is None else 10 * steps
    for i in range(0, n, 10):
        method.observe(task.x_train[i:i + 10], task.y_train[i:i + 10], task.id)
    method.end_task(task)


# ---------------------------------------------------------------- shared parts
def test_rotation_labels_are_4y_plus_k_and_images_turn_by_quarters():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    y = torch.tensor([2, 5])
    x4, y4 = rotate4(x, y)
    assert y4.tolist() == [8, 9, 10, 11, 20, 21, 22, 23]
    assert torch.equal(joint_labels(y), y4) and torch.equal(y4 // 4, y.repeat_interleave(4))
    for i in range(2):
        for k in range(4):
            assert torch.equal(x4[4 * i + k], torch.rot90(x[i], k, (1, 2)))
    assert class_logits(torch.arange(8.0).view(1, 8)).tolist() == [[0.0, 4.0]]
    with pytest.raises(RotationError, match="square"):
        rotate4(torch.zeros(2, 1, 3, 4))


def test_prototype_store_means_variance_and_ncm():
    store = PrototypeStore(3, 2, variance=True)
    feats = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
    store.update(feats, torch.tensor([0, 0, 2, 2]))
    assert store.means.tolist() == [[1.0, 0.0], [0.0, 0.0], [10.0, 11.0]]
    assert store.seen.tolist() == [True, False, True]
    assert store.variance.tolist() == pytest.approx([1.0, 0.0, 1.0])  # trace(unbiased cov) / D
    assert measure(store).by_category["prototypes"] == 3 * 2 * 4 + 3 + 3 * 4
    logits = ncm_logits(torch.tensor([[1.0, 0.5], [9.0, 9.0]]), store.means, "euclidean", store.seen)
    assert logits[:, 1].isinf().all() and logits.argmax(1).tolist() == [0, 2]
    assert logits[0, 0].item() == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="metric"):
        ncm_logits(feats, store.means, "manhattan")


def test_feature_distillation_is_the_batch_norm_of_the_difference():
    a, b = torch.ones(4, 3), torch.zeros(4, 3, requires_grad=True)
    assert feature_distillation(a, b).item() == pytest.approx(math.sqrt(12))
    assert feature_distillation(a, b, "mse").item() == pytest.approx(1.0)


def test_supcon_matches_its_definition_on_two_samples():
    z = nn.functional.normalize(torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]), dim=2)
    loss = supcon_loss(z, torch.tensor([0, 1]), temperature=1.0, base_temperature=1.0)
    # each anchor: one positive at similarity 1, two negatives at 0 -> -log(e / (e + 2))
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-5)


# ---------------------------------------------------------------- NAPA-VQ's neighbourhood graph
def graph_on_a_line(k=2):
    g = NeighbourhoodGraph(4, 2, k=k, epsilon=0.9, prune_after=10)
    with torch.no_grad():
        g.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    return g


def test_graph_stays_symmetric_with_unit_diagonal():
    g = NeighbourhoodGraph(12, 5, k=3)
    torch.manual_seed(0)
    for _ in range(20):
        g(torch.randn(16, 5) * 2, torch.randint(12, (16,)), 12)
        assert torch.equal(g.edges, g.edges.T)
        assert torch.equal(g.edges.diagonal(), torch.ones(12))


def test_edges_decay_by_epsilon_per_visit_and_are_pruned_below_the_threshold():
    g = graph_on_a_line(k=2)
    near0 = torch.tensor([[0.1, 0.0]])
    g.update(near0, 4)                      # BMU c0, 2 nearest {c0, c1}: edge 0-1 set
    assert g.edges[0, 1].item() == 1.0 and g.edges[1, 0].item() == 0.0   # the BMU's row, before symmetrising
    g.k = 1                                  # later visits of c0 without c1 among the nearest
    for visit in range(1, 10):
        g.update(near0, 4)
        assert g.edges[0, 1].item() == pytest.approx(0.9 ** visit, rel=1e-5)
        assert g.edges[1, 0].item() == 0.0 and g.edges[0, 0].item() == 1.0
    g.update(near0.repeat(2, 1), 4)          # two visits in one batch: 0.9^11 < 0.9^10, pruned
    assert g.edges[0, 1].item() == 0.0
    g.symmetrise()
    assert torch.equal(g.edges, g.edges.T)


def test_na_loss_zero_when_positive_nearer_than_weighted_neighbours():
    g = graph_on_a_line()
    g.edges.fill_(1.0)
    f = torch.tensor([[0.2, 0.0]])
    assert g.na_loss(f, torch.tensor([0]), 4).item() == 0.0
    assert g.na_loss(torch.tensor([[0.0, 9.0]]), torch.tensor([0]), 4).item() == 0.0  # 81 < weighted 82, 181, 1
    loss = g.na_loss(torch.tensor([[10.0, 1.0]]), torch.tensor([0]), 4)   # far from c0, next to c2
    sq = torch.tensor([101.0, 82.0, 1.0, 181.0])
    w = torch.softmax(-0.001 * sq[1:], 0)
    assert loss.item() == pytest.approx(101.0 - (w * sq[1:]).sum().item(), rel=1e-5) and loss.item() > 0
    g.edges.copy_(torch.eye(4))              # no neighbour: the loss is the positive distance
    assert g.na_loss(torch.tensor([[0.0, 9.0]]), torch.tensor([0]), 4).item() == pytest.approx(81.0)


def test_napavq_old_coding_vectors_get_exactly_zero_gradient():
    method, stream = built("napavq", optimizer=ADAM, cv_lr=0.5)
    train_task(method, stream.tasks[0], steps=3)
    old = method.navq.weight[:8].detach().clone()
    new = method.navq.weight[8:16].detach().clone()
    method.start_task(stream.tasks[1])
    x, y = stream.tasks[1].x_train[:10], stream.tasks[1].y_train[:10]
    method.observe(x, y, 1)
    assert torch.count_nonzero(method.navq.weight.grad[:8]) == 0
    assert torch.equal(method.navq.weight[:8], old)
    assert not torch.equal(method.navq.weight[8:16], new)
    edges = method.navq.edges
    assert torch.equal(edges, edges.T) and torch.equal(edges.diagonal(), torch.ones(len(edges)))


# ---------------------------------------------------------------- PASS
def test_pass_head_rows_of_unseen_classes_keep_their_initial_values_under_weight_decay():
    """Adam's L2 weight decay alone used to shrink the rows of classes not seen yet to ~0 before their task."""
    method, stream = built("pass", optimizer={**ADAM, "weight_decay": 2e-4})
    head = method.model.head
    initial_w, initial_b = head.weight.detach().clone(), head.bias.detach().clone()
    train_task(method, stream.tasks[0], steps=4)
    seen = 4 * method.seen_classes(0)
    assert not torch.equal(head.weight[:seen], initial_w[:seen])          # the first task's rows are trained
    assert torch.equal(head.weight[seen:], initial_w[seen:]) and torch.equal(head.bias[seen:], initial_b[seen:])
    method.start_task(stream.tasks[1])
    method.observe(stream.tasks[1].x_train[:10], stream.tasks[1].y_train[:10], 1)
    now = 4 * method.seen_classes(1)
    assert not torch.equal(head.weight[seen:now], initial_w[seen:now])    # the new task's rows start learning
    assert torch.equal(head.weight[now:], initial_w[now:])


@pytest.mark.parametrize("name", ["pass", "napavq", "prd"])
def test_run_milestones_apply_to_the_methods_own_optimizer(name):
    """PASS, NAPA-VQ and PRD build their own optimizer; trainer.optimizer.milestones used to be dropped silently."""
    method, stream = built(name, optimizer={**ADAM, "milestones": [1], "gamma": 0.1})
    task = stream.tasks[0]
    method.start_task(task)
    before = [group["lr"] for group in method.opt.param_groups]
    method.observe(task.x_train[:10], task.y_train[:10], 0)
    method.end_epoch()
    assert [group["lr"] for group in method.opt.param_groups] == pytest.approx([lr * 0.1 for lr in before])


# ---------------------------------------------------------------- PRD
def test_prd_relation_kl_is_zero_at_the_first_step_of_a_new_task_then_not():
    method, stream = built("prd")
    train_task(method, stream.tasks[0], steps=4)
    method.eval()
    logits = method(method.preprocess(stream.tasks[1].x_test[:5]))
    assert logits[:, 2:].isinf().all() and logits[:, :2].isfinite().all()   # class-IL masks future prototypes
    method.train()
    method.start_task(stream.tasks[1])
    x, y = stream.tasks[1].x_train[:10], stream.tasks[1].y_train[:10]
    assert method.losses(x, y, 1)["distill"].item() == pytest.approx(0.0, abs=1e-7)
    for _ in range(3):
        method.observe(x, y, 1)
    assert method.losses(x, y, 1)["distill"].item() > 1e-6


def test_prd_prototype_loss_trains_only_the_current_prototypes_on_detached_features():
    method, stream = built("prd")
    task = stream.tasks[1]
    method.start_task(task)
    h = method.features(method.augment(task.x_train[:10]))
    method.prototype_loss(h, task.y_train[:10], 1).backward()
    assert all(p.grad is None for p in method.model.parameters())
    grad = method.prototypes.grad
    rows = grad.abs().sum(1) > 0
    assert rows.nonzero().squeeze(1).tolist() == task.classes


# ---------------------------------------------------------------- every method: exemplar-free, bad inputs
@pytest.mark.parametrize("name", METHODS)
def test_no_exemplars_are_kept(name):
    method, stream = built(name, optimizer=ADAM if name in ("pass", "napavq") else None)
    for task in stream.tasks[:2]:
        train_task(method, task, steps=2)
    ledger = measure(method)
    assert ledger.by_category["exemplars"] == 0 and ledger.by_category["exemplar_extras"] == 0
    assert ledger.by_category["prototypes"] > 0


def test_storing_an_exemplar_fails():
    method, stream = built("pass", optimizer=ADAM)
    train_task(method, stream.tasks[0], steps=1)
    method.register_buffer("sneaked", stream.tasks[0].x_train[:5].clone())
    method.memory_categories = {**method.memory_categories, "sneaked": "exemplars"}
    with pytest.raises(RuntimeError, match="exemplar-free but keeps 320 bytes of exemplars"):
        method.start_task(stream.tasks[1])


def test_prototype_method_with_a_buffer_is_refused(cli, run_dir):
    line = error_line(cli("method=pass", "method.buffer=200", f"hydra.run.dir={run_dir}").stderr)
    assert "pass is exemplar-free" in line and "remove method.buffer" in line
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize("name", METHODS)
def test_first_task_with_one_class_is_refused(name):
    with pytest.raises(StreamError, match="first task, which has 1 class"):
        built(name, stream={"n_tasks": 10})


@pytest.mark.parametrize("name", ["pass", "napavq"])
def test_rotation_on_non_square_images_is_refused(name):
    info = StreamInfo(2, 4, (1, 8, 6), [[0, 1], [2, 3]])
    model = ContinualModel(MLP((1, 8, 6), [16]), 4)
    with pytest.raises(RotationError, match=r"square images .* shape \(1, 8, 6\)"):
        make_method(name, model, RunContext(info))


def test_train_per_class_balances_a_large_first_task(digits_root):
    stream = build_stream("digits", n_tasks=None, first_task_classes=4, classes_per_task=2, train_per_class=20,
                          root=digits_root)
    assert [len(t.classes) for t in stream.tasks] == [4, 2, 2, 2]
    for task in stream.tasks:
        assert torch.bincount(task.y_train)[task.classes].tolist() == [20] * len(task.classes)
    again = build_stream("digits", n_tasks=None, first_task_classes=4, classes_per_task=2, train_per_class=20,
                         root=digits_root)
    assert torch.equal(again.tasks[0].x_train, stream.tasks[0].x_train)


def test_seen_sample_average_weighs_tasks_by_their_test_images():
    from clzoo.engine import metrics as M

    R = [[0.9, 0.0], [0.6, 1.0]]
    assert M.seen_accuracy_curve(R, [400, 100]) == pytest.approx([0.9, (240 + 100) / 500])
    got = M.all_metrics(R, [0.0, 0.0], sizes=[400, 100])
    assert got["avg_incremental_acc_seen"] == pytest.approx((0.9 + 0.68) / 2)
    assert got["avg_incremental_acc"] == pytest.approx((0.9 + 0.8) / 2)   # tasks weighed equally
    assert "avg_incremental_acc_seen" not in M.all_metrics(R, [0.0, 0.0])
