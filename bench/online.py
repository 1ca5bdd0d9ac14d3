#!/usr/bin/env python
"""Per-step cost of the online methods GSS and MIR against bare PyTorch loops doing the same work.

    python bench/online.py                 # writes bench/ONLINE.md
    python bench/online.py --quick         # fewer steps, prints only

Three measurements, one torch thread, MNIST-shaped inputs (28x28 uint8; real MNIST is not needed for timing):

* ``gss``  - one steady-state ``GSS.observe`` (buffer full, MLP 784-100-100-10, the official Disjoint-MNIST
  settings: batch 10, buffer 300, 3 iterations, 10 buffer gradients) against a bare loop written here that does
  the same forward / backward work on plain tensors: 3 x (incoming step + buffer step), 10 buffer-minibatch
  gradients, the batch gradient, the per-sample gradients (``torch.func``), the cosines and the replacement draw.
* ``mir``  - one ``MIR.observe`` (buffer 500 filled with earlier tasks, MLP 784-400-400-10, 50 candidates, 10
  replayed) against a bare loop: incoming forward / backward, the virtual step, two no-grad forwards of the 50
  candidates, top-10, the replay forward / backward, one SGD step, a reservoir insertion.
* ``per-sample`` - GSS's per-sample gradient scores against the official code's loop (one forward / backward per
  sample, ``get_each_batch_sample_sim``), batch 10 (the protocol's) and 100, same model: GSS's default
  (``per_sample=factored``: one forward / backward, cosines from the linear layers' outer-product structure) and
  ``per_sample=vmap`` (``torch.func``'s ``vmap(grad(...))``).

Each timing is the median over ``--repeats`` rounds of ``--steps`` steps (rounds of clzoo and bare interleaved).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from clzoo.methods import RunContext, StreamInfo, make_method  # noqa: E402
from clzoo.models import MLP, ContinualModel  # noqa: E402

SHAPE = (1, 28, 28)
TASKS = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def data(n: int, classes, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
    y = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=g)]
    return x, y


def build(name, hidden, **hp):
    torch.manual_seed(0)
    ctx = RunContext(StreamInfo(5, 10, SHAPE, TASKS, online=True), optimizer={"name": "sgd", "lr": 0.05})
    method = make_method(name, ContinualModel(MLP(SHAPE, hidden), 10), ctx, **hp)
    method.reset_optimizer()
    return method


def timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for i in range(steps):
        fn(i)
    return (time.perf_counter() - t0) / steps


# ---------------------------------------------------------------- GSS
def gss_pair(steps):
    method = build("gss", [100, 100], buffer=300)
    x, y = data(600 + 10 * steps, [0, 1, 2, 3], 1)
    for i in range(0, 300, 10):  # fill the buffer
        method.observe(x[i:i + 10], y[i:i + 10], 0)
    method.change_threshold = 2.0  # every batch competes for a slot (the most expensive path)

    def clzoo_step(i):
        j = 300 + 10 * i
        method.observe(x[j:j + 10], y[j:j + 10], 0)

    # the bare loop: the same work on plain tensors
    torch.manual_seed(0)
    model = ContinualModel(MLP(SHAPE, [100, 100]), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    bx = x[:300].float().div(255)
    by = y[:300].clone()
    scores = torch.rand(300)
    params = dict(model.named_parameters())

    def flat_grad(inp, lab):
        loss = F.cross_entropy(model(inp), lab)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])

    def sample_loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.view(1))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))

    def bare_step(i):
        j = 300 + 10 * i
        xi, yi = x[j:j + 10].float().div(255), y[j:j + 10]
        order = torch.randperm(300)
        for it in range(3):
            opt.zero_grad()
            F.cross_entropy(model(xi), yi).backward()
            opt.step()
            k = order[it * 10:(it + 1) * 10]
            opt.zero_grad()
            F.cross_entropy(model(bx[k]), by[k]).backward()
            opt.step()
        order = torch.randperm(300)
        ref = torch.stack([flat_grad(bx[order[k * 10:(k + 1) * 10]], by[order[k * 10:(k + 1) * 10]]) for k in range(10)])
        g = flat_grad(xi, yi)
        cos = (ref @ g) / (ref.norm(dim=1) * g.norm()).clamp_min(1e-8)
        if cos.max() < 2.0:
            detached = {n: p.detach() for n, p in params.items()}
            gs = per_sample(detached, xi, yi)
            gi = torch.cat([t.reshape(10, -1) for t in gs.values()], 1)
            c = ((gi @ ref.t()) / (gi.norm(dim=1, keepdim=True) * ref.norm(dim=1)).clamp_min(1e-8)).max(1).values
            w = (scores - scores.min()) / (scores.max() - scores.min() + 0.01)
            cand = torch.multinomial(w + 1e-6, 10, replacement=False)
            rep = torch.multinomial(torch.stack([(c + 1) / 2, (scores[cand] + 1) / 2], 1), 1).squeeze(1) == 1
            bx[cand[rep]] = xi[rep]
            by[cand[rep]] = yi[rep]
            scores[cand[rep]] = c[rep]

    return clzoo_step, bare_step


# ---------------------------------------------------------------- MIR
def mir_pair(steps):
    method = build("mir", [400, 400], buffer=500, subsample=50, minibatch_size=10)
    old_x, old_y = data(500, [0, 1, 2, 3], 2)
    method.buffer.add(old_x, old_y, 0)
    x, y = data(10 * steps + 10, [4, 5], 3)

    def clzoo_step(i):
        method.observe(x[10 * i:10 * i + 10], y[10 * i:10 * i + 10], 1)

    torch.manual_seed(0)
    model = ContinualModel(MLP(SHAPE, [400, 400]), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    bx, by, bt = old_x.clone(), old_y.clone(), torch.zeros(500, dtype=torch.long)
    seen = [500]

    def bare_step(i):
        xi, yi = x[10 * i:10 * i + 10].float().div(255), y[10 * i:10 * i + 10]
        opt.zero_grad()
        loss = F.cross_entropy(model(xi), yi)
        loss.backward()
        pool = (bt != 1).nonzero().squeeze(1)
        idx = pool[torch.randperm(len(pool))[:50]]
        cx, cy = bx[idx].float().div(255), by[idx]
        virtual = {n: p - 0.05 * p.grad for n, p in model.named_parameters()}
        with torch.no_grad():
            pre = F.cross_entropy(model(cx), cy, reduction="none")
            post = F.cross_entropy(functional_call(model, virtual, (cx,)), cy, reduction="none")
        top = (post - pre).argsort(descending=True)[:10]
        F.cross_entropy(model(cx[top]), cy[top]).backward()
        opt.step()
        draws = (torch.rand(10) * torch.arange(seen[0] + 1, seen[0] + 11)).long()
        keep = draws < 500
        bx[draws[keep]], by[draws[keep]], bt[draws[keep]] = x[10 * i:10 * i + 10][keep], yi[keep], 1
        seen[0] += 10

    return clzoo_step, bare_step


# ---------------------------------------------------------------- per-sample gradients
def per_sample_pair(steps, batch=10, per_sample="factored"):
    method = build("gss", [100, 100], buffer=300)
    method.per_sample = per_sample
    method.model.eval()  # as GSS.admit scores
    x, y = data(batch, [0, 1], 4)
    inputs = method.preprocess(x)
    reference = torch.randn(10, sum(p.numel() for p in method.model.parameters()))
    model = method.model

    def func_step(i):
        method.sample_scores(inputs, y, reference)

    def loop_step(i):  # the official get_each_batch_sample_sim: one forward / backward per sample
        sims = torch.zeros(len(y))
        for k in range(len(y)):
            model.zero_grad()
            F.cross_entropy(model(inputs[k:k + 1]), y[k:k + 1]).backward()
            g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            sims[k] = ((reference @ g) / (reference.norm(dim=1) * g.norm()).clamp_min(1e-8)).max()

    return func_step, loop_step


CASES = {"gss": (gss_pair, "GSS.observe", "bare loop"), "mir": (mir_pair, "MIR.observe", "bare loop"),
         "per-sample": (per_sample_pair, "factored scores, batch 10", "per-sample loop"),
         "per-sample-100": (lambda steps: per_sample_pair(steps, 100), "factored scores, batch 100",
                            "per-sample loop"),
         "per-sample-vmap": (lambda steps: per_sample_pair(steps, 10, "vmap"), "torch.func scores, batch 10",
                             "per-sample loop"),
         "per-sample-vmap-100": (lambda steps: per_sample_pair(steps, 100, "vmap"), "torch.func scores, batch 100",
                                 "per-sample loop")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(HERE / "ONLINE.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps, repeats = (5, 2) if args.quick else (args.steps, args.repeats)
    rows = []
    for name, (make_pair, a_name, b_name) in CASES.items():
        a, b = make_pair(steps * (repeats + 1))
        timed(a, 2), timed(b, 2)  # warm-up
        ta, tb = [], []
        for _ in range(repeats):
            ta.append(timed(a, steps))
            tb.append(timed(b, steps))
        ma, mb = statistics.median(ta), statistics.median(tb)
        rows.append((name, a_name, ma, b_name, mb))
        per_sample = name.startswith("per-sample")
        ratio = mb / ma if per_sample else ma / mb
        what = "loop / clzoo (speed-up)" if per_sample else "clzoo / bare"
        print(f"{name:11s} {a_name} {1000 * ma:.2f} ms/step, {b_name} {1000 * mb:.2f} ms/step, {what} = {ratio:.2f}",
              flush=True)
    if not args.quick:
        lines = ["# Online methods: per-step cost (bench/online.py)", "",
                 f"torch {torch.__version__}, {platform.machine()}, 1 thread, median of {repeats} rounds of {steps} "
                 f"steps. Generated by `python bench/online.py`; see its docstring for what each case does.", "",
                 "| case | clzoo | ms / step | reference | ms / step | ratio |", "|---|---|---|---|---|---|"]
        for name, a_name, ma, b_name, mb in rows:
            ratio = f"{mb / ma:.2f}x faster" if name.startswith("per-sample") else f"{ma / mb:.2f} (clzoo / bare)"
            lines.append(f"| {name} | {a_name} | {1000 * ma:.2f} | {b_name} | {1000 * mb:.2f} | {ratio} |")
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
