"""BiC: the bias layer moves only the new classes' logits and, fitted on held-out exemplars, gives the old classes
back their share of the predictions; the validation split it asks for is never trained on."""
from __future__ import annotations

import torch

from clzoo.data import build_stream
from clzoo.memory import Budget
from clzoo.methods.base import RunContext, StreamInfo
from clzoo.methods.replay.bic import BiC
from clzoo.models import MLP, ContinualModel, mask_logits


def _train(stream, method, epochs=4, bs=10):
    for task in stream.tasks:
        seen = task.training_view(method.validation_fraction, seed=0)
        method.start_task(seen)
        x, y = method.training_data(seen)
        for _ in range(epochs):
            order = torch.randperm(len(y))
            for i in range(0, len(y), bs):
                method.observe(x[order[i:i + bs]], y[order[i:i + bs]], task.id)
        method.end_task(seen)
        yield task, seen


def test_bias_layer_corrects_new_class_logits_and_restores_old_class_share():
    torch.manual_seed(0)
    stream = build_stream("digits", n_tasks=2)  # 5 + 5 classes, ~720 training images per task
    ctx = RunContext(StreamInfo.from_stream(stream), budget=Budget(), optimizer={"name": "sgd", "lr": 0.05})
    method = BiC(ContinualModel(MLP(stream.input_shape, hidden_sizes=[64]), stream.n_classes), ctx,
                 buffer=50, validation_fraction=0.1)
    for task, seen in _train(stream, method):
        # the validation split is held out of what the engine trains on, and the task carries no test data
        assert seen.n_val > 0 and seen.n_train + seen.n_val == task.n_train
        x_train, _ = method.training_data(seen)
        assert not any(torch.equal(v, t) for v in seen.x_val[:5] for t in x_train)
    assert torch.equal(method.bias[0], torch.tensor([1.0, 0.0]))  # task 0's classes are never corrected
    alpha, beta = method.bias[1].tolist()
    assert (alpha, beta) != (1.0, 0.0)
    # stored exemplars: 5 per class, of which n_val[c] = 1 held out for the bias layer
    assert method.buffer.class_counts().tolist() == [5] * 10 and method.n_val.tolist() == [1] * 10

    method.eval()
    x = torch.cat([t.x_test for t in stream.tasks])
    y = torch.cat([t.y_test for t in stream.tasks])
    with torch.no_grad():
        raw = method.model(method.preprocess(x))
        corrected = method(method.preprocess(x))
    assert torch.equal(corrected[:, :5], raw[:, :5])                       # old classes untouched
    assert torch.allclose(corrected[:, 5:], alpha * raw[:, 5:] + beta)     # new classes: alpha * o + beta
    pred_raw, pred_bic = mask_logits(raw, 10).argmax(1), mask_logits(corrected, 10).argmax(1)
    old = y < 5
    share_raw, share_bic = (pred_raw < 5).float().mean().item(), (pred_bic < 5).float().mean().item()
    true_share = old.float().mean().item()
    acc_old_raw = (pred_raw[old] == y[old]).float().mean().item()
    acc_old_bic = (pred_bic[old] == y[old]).float().mean().item()
    print(f"old-class share of predictions: {share_raw:.3f} -> {share_bic:.3f} (true {true_share:.3f}); "
          f"old-class accuracy {acc_old_raw:.3f} -> {acc_old_bic:.3f}; alpha {alpha:.3f} beta {beta:.3f}")
    assert share_raw < true_share - 0.1            # the uncorrected model is biased towards the new classes
    assert abs(share_bic - true_share) < abs(share_raw - true_share)  # the correction moves it back
    assert acc_old_bic > acc_old_raw
