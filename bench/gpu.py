"""The bare loop of ``bench/run.py --device cuda`` (issue 18's GPU table) and the GPU targets.

    python bench/run.py --suite gpu --device cuda          # the table (bench/gpu.sh runs this)
    python bench/run.py --suite gpu --device cpu --quick   # the same code path on a CPU, tiny, seconds

The cases (``gpu_cases`` in bench/run.py): Seq-CIFAR-10 ER on the full ResNet-18 (the DER paper's network:
64-128-256-512 filters, 11.2M parameters; the paper's ER arguments for a buffer of 500: SGD lr 0.1, batch 32, 32
replayed samples per step), one epoch per task instead of the paper's 50 so that every system runs in a minute or
two; and Seq-MNIST ER as in the CPU table.

The bare loop here (:func:`run_bare_device`) does the work of ``run.run_bare`` the way one writes it for a GPU:
data, model and buffer on the device, augmentation as batched index arithmetic, and nothing read back per step
(no ``loss.item()``, a reservoir that writes its dropped samples to a spare row instead of selecting the kept ones
with a boolean mask), so it does not wait for every step to finish. Its random draws come from the device's
generator, so its accuracies match the other systems' only statistically.
"""
from __future__ import annotations

import gc
import time

import torch
import torch.nn.functional as F

from clzoo.engine.checkpoint import seed_everything
from clzoo.engine.runner import build_model

#: issue 18's targets on a GPU: at least this much faster than Avalanche, at most this much slower than the bare loop
SPEEDUP_TARGET = 3.0
OVERHEAD_TARGET = 1.1

def synchronize(device) -> None:
    """Wait for the device's queued work (timings must include it)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def crop_flip(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop (after zero padding) and horizontal flip of every image of the batch, by advanced indexing of
    the padded batch (no per-image Python)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b, 1, 1, 1), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (b, 1, 1, 1), device=x.device)
    rows = top + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = left + torch.arange(w, device=x.device).view(1, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    out = padded[batch, channel, rows, cols]
    flip = (torch.rand(b, device=x.device) < 0.5).view(b, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)


def run_bare_device(case, stream, seed: int, device) -> dict:
    """ER / DER / fine-tuning as a bare loop on ``device`` (see the module docstring)."""
    device = torch.device(device)
    aug = case.augment or {}
    mean = torch.tensor(aug["mean"], device=device).view(1, -1, 1, 1) if aug.get("mean") else None
    std = torch.tensor(aug["std"], device=device).view(1, -1, 1, 1) if aug.get("std") else None
    pad = int(aug.get("crop_padding") or 0)

    def prepare(xb, train):
        x = xb.float().div_(255.0)
        if train and pad:
            x = crop_flip(x, pad)
        if mean is not None:
            x = (x - mean) / std
        return x

    @torch.no_grad()
    def evaluate(n_seen):
        model.eval()
        correct = []
        for task in stream.tasks:
            hits = torch.zeros((), dtype=torch.long, device=device)
            x_test, y_test = task.x_test.to(device), task.y_test.to(device)
            for i in range(0, len(y_test), 1000):
                logits = model(prepare(x_test[i:i + 1000], False))
                if n_seen:
                    hits += (logits[:, :n_seen].argmax(1) == y_test[i:i + 1000]).sum()
            correct.append(hits)
        model.train()
        return [int(c) / len(t.y_test) for c, t in zip(correct, stream.tasks)]  # one read per evaluation

    gc.collect()
    synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    seed_everything(seed)
    model = build_model(case.model, stream).to(device)
    replay = case.method in ("er", "der")
    if replay:  # one spare row at index `cap` takes the samples the reservoir drops
        cap = case.buffer
        buf_x = torch.zeros((cap + 1, *stream.input_shape), dtype=torch.uint8, device=device)
        buf_y = torch.zeros(cap + 1, dtype=torch.long, device=device)
        buf_z = torch.zeros(cap + 1, stream.n_classes, device=device) if case.method == "der" else None
        n_seen = 0
    evaluate(0)
    model.train()
    for task in stream.tasks:
        opt = torch.optim.SGD(model.parameters(), lr=case.lr)
        x_all, y_all = task.x_train.to(device), task.y_train.to(device)
        n = len(y_all)
        for _ in range(case.epochs):
            order = torch.randperm(n, device=device)
            for b in range(0, n, case.batch_size):
                idx = order[b:b + case.batch_size]
                x, y = x_all[idx], y_all[idx]
                if case.method == "der":
                    logits = model(prepare(x, True))
                    loss = F.cross_entropy(logits, y)
                    if n_seen:
                        j = torch.randperm(min(n_seen, cap), device=device)[:case.minibatch]
                        loss = loss + case.alpha * F.mse_loss(model(prepare(buf_x[j], True)), buf_z[j])
                else:
                    inputs, labels = prepare(x, True), y
                    if replay and n_seen:
                        j = torch.randperm(min(n_seen, cap), device=device)[:case.minibatch]
                        inputs = torch.cat([inputs, prepare(buf_x[j], True)])
                        labels = torch.cat([labels, buf_y[j]])
                    logits = model(inputs)
                    loss = F.cross_entropy(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if replay:  # reservoir sampling (Vitter's algorithm R), dropped samples to the spare row
                    pos = n_seen + torch.arange(len(y), device=device)
                    slots = torch.where(pos < cap, pos, (torch.rand(len(y), device=device) * (pos + 1)).long())
                    slots = slots.clamp_(max=cap)
                    buf_x[slots], buf_y[slots] = x, y
                    if buf_z is not None:
                        buf_z[slots] = logits.detach()[:len(y)]
                    n_seen += len(y)
        acc = evaluate(stream.classes_seen(task.id))
    synchronize(device)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"time": elapsed, "cpu": cpu, "acc": sum(acc) / len(acc), "per_task": acc}
