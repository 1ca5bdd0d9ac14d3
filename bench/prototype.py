#!/usr/bin/env python
"""Per-step cost of the prototype family against a bare PyTorch loop doing the same forward / backward work.

    python bench/prototype.py                # writes bench/PROTOTYPE.md
    python bench/prototype.py --quick        # fewer steps, a smaller network; prints only

Two measurements:

1. **Per step.** PRD's and NAPA-VQ's ``observe`` in the state of a second task (a frozen teacher, old classes,
   prototypes) against a bare loop written here: the same network copies, the same losses as plain tensor code
   (no method object, no ledger, no parts), one optimizer step each. The ratio clzoo / bare is the overhead of the
   implementation (target: at most 1.3).
2. **NAPA-VQ's graph update** (``NeighbourhoodGraph.update`` + ``na_loss`` + ``symmetrise``) per step at 10 and at
   100 classes seen (40 and 400 coding vectors) on the same batch of features: its time must not grow faster than
   linearly in the number of classes (ratio at most 10).

Inputs are random CIFAR-shaped uint8 images; timings only, no accuracy. One torch thread unless --threads.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from clzoo.data.scenarios import Task  # noqa: E402
from clzoo.methods import RunContext, StreamInfo, make_method  # noqa: E402
from clzoo.methods.prototype.napavq import NeighbourhoodGraph  # noqa: E402
from clzoo.models import ContinualModel, reduced_resnet18  # noqa: E402


def setup(name: str, nf: int, batch: int, n_first: int = 50, n_classes: int = 100, per_class: int = 4):
    """A method after its first task (50 classes), at the start of the second (10 classes)."""
    torch.manual_seed(0)
    shape = (3, 32, 32)
    task_classes = [list(range(n_first))] + [list(range(c, c + 10)) for c in range(n_first, n_classes, 10)]
    info = StreamInfo(len(task_classes), n_classes, shape, task_classes)
    ctx = RunContext(info, optimizer={"name": "adam", "lr": 1e-3}, batch_size=batch, epochs=1)
    model = ContinualModel(reduced_resnet18(shape, nf), n_classes)
    method = make_method(name, model, ctx).train()

    def task(t):
        cls = torch.tensor(task_classes[t]).repeat_interleave(per_class)
        x = torch.randint(0, 256, (len(cls),) + shape, dtype=torch.uint8)
        return Task(t, task_classes[t], x, cls, x[:0], cls[:0])

    t0, t1 = task(0), task(1)
    method.start_task(t0)
    method.observe(t0.x_train[:batch], t0.y_train[:batch], 0)
    method.end_task(t0)
    method.start_task(t1)
    return method, t1


# ---------------------------------------------------------------------------------------------- bare loops
def bare_prd(method):
    """PRD's step as plain tensor code on copies of the method's networks (second view: a horizontal flip; the
    method's views go through the run's train transform, here none)."""
    backbone = copy.deepcopy(method.model.backbone)
    proj = copy.deepcopy(method.projection)
    teacher = copy.deepcopy(method.teacher)
    protos = method.prototypes.detach().clone().requires_grad_(True)
    old = method.old_prototypes.clone()
    opt = torch.optim.Adam(list(backbone.parameters()) + list(proj.parameters()), lr=1e-3)
    opt.add_param_group({"params": [protos], "lr": 1e-3, "weight_decay": 0.0})
    tau, slices = method.supcon_temperature, method.task_slices

    def step(x, y, t):
        x = x.float() / 255
        views = torch.cat([x, x.flip(-1)])
        h = backbone(views)
        z = F.normalize(proj(h), dim=1)
        b = len(y)
        yy = y.repeat(2)
        sim = z @ z.T / tau
        eye = torch.eye(2 * b, dtype=torch.bool)
        logp = sim - torch.logsumexp(sim.masked_fill(eye, -1e9), 1, keepdim=True)
        pos = (yy[:, None] == yy[None]) & ~eye
        loss = -(tau / 0.07) * ((logp * pos).sum(1) / pos.sum(1)).mean()
        lo, hi = slices[t]
        cos = F.normalize(h.detach(), dim=1) @ F.normalize(protos[lo:hi], dim=1).T
        loss = loss + 2.0 * (1 - cos.gather(1, (yy - lo)[:, None])).mean()
        with torch.no_grad():
            h_old = teacher(views)
        for lo, hi in slices[:t]:
            s_new = h @ F.normalize(protos[lo:hi], dim=1).T
            s_old = h_old @ F.normalize(old[lo:hi], dim=1).T
            loss = loss + 4.0 * F.kl_div(F.log_softmax(s_new, 1), F.log_softmax(s_old, 1), reduction="batchmean",
                                         log_target=True)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def bare_napavq(method):
    """NAPA-VQ's step as plain tensor code (graph update inlined) on copies of the method's networks."""
    backbone = copy.deepcopy(method.model.backbone)
    teacher = copy.deepcopy(method.teacher)
    cvs = method.navq.weight.detach().clone().requires_grad_(True)
    edges = method.navq.edges.clone()
    means = method.prototypes.means.clone()
    opt = torch.optim.Adam(backbone.parameters(), lr=1e-4)
    cv_opt = torch.optim.SGD([cvs], lr=0.5)

    def graph_and_na(f, lab, n):
        nonlocal edges
        with torch.no_grad():
            d = torch.cdist(f, cvs[:n])
            knn = d.topk(min(15, n), 1, largest=False).indices
            bmu = knn[:, 0]
            visits = torch.bincount(bmu, minlength=n).float()
            close = torch.zeros(n, n)
            close.index_put_((bmu.repeat_interleave(knn.shape[1]), knn.flatten()), torch.ones(knn.numel()),
                             accumulate=True)
            e = torch.maximum(edges[:n, :n], (close > 0).float()) * 0.9 ** (visits[:, None] - close).clamp(min=0)
            edges[:n, :n] = e * (e >= 0.9 ** 10)
        sq = torch.cdist(f, cvs[:n]).pow(2)
        nb = edges[lab, :n] > 0
        nb[torch.arange(len(lab)), lab] = False
        dn = sq * nb
        with torch.no_grad():
            w = torch.exp(-0.001 * dn) * (dn > 0)
            w = torch.nan_to_num(w / w.sum(1, keepdim=True))
        loss = F.relu(sq.gather(1, lab[:, None]).squeeze(1) - (w * dn).sum(1)).mean()
        edges = (edges + edges.T) / 2
        return loss

    def step(x, y, t, n_old=50, n_seen=60):
        x = x.float() / 255
        x4 = torch.stack([torch.rot90(x, k, (2, 3)) for k in range(4)], 1).flatten(0, 1)
        y4 = (y[:, None] * 4 + torch.arange(4)).flatten()
        n = 4 * n_seen
        f = backbone(x4)
        loss = F.cross_entropy(-torch.cdist(f, cvs[:n]) / 0.1, y4) + graph_and_na(f, y4, n)
        with torch.no_grad():
            f_old = teacher(x4)
        loss = loss + 10 * (f - f_old).norm()
        idx = 4 * torch.randint(n_old, (len(y),))
        nb = torch.multinomial((edges[idx] > 0).float(), 1).squeeze(1)
        g = torch.rand(len(y), 1) * 0.5 + 0.5
        aug = g * means[idx] + (1 - g) * means[nb]
        loss = loss + graph_and_na(aug, idx, n) + 10 * F.cross_entropy(-torch.cdist(aug, cvs[:n]) / 0.1, idx)
        opt.zero_grad()
        cv_opt.zero_grad()
        loss.backward()
        cvs.grad[:4 * n_old] = 0
        opt.step()
        cv_opt.step()

    return step


def time_steps(fn, batches, repeats: int) -> float:
    """Median seconds per step over ``repeats`` passes of ``batches`` (after one warm-up step)."""
    fn(*batches[0])
    per = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(*b)
        per.append((time.perf_counter() - t0) / len(batches))
    return statistics.median(per)


def per_step(name: str, nf: int, batch: int, steps: int, repeats: int) -> dict:
    method, task = setup(name, nf, batch)
    bare = (bare_prd if name == "prd" else bare_napavq)(method)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(steps):
        idx = torch.randint(len(task.y_train), (batch,), generator=g)
        batches.append((task.x_train[idx], task.y_train[idx], 1))
    ours = time_steps(method.observe, batches, repeats)
    plain = time_steps(bare, batches, repeats)
    # interleave a second measurement of each, so drifting machine load hits both alike
    ours = min(ours, time_steps(method.observe, batches, repeats))
    plain = min(plain, time_steps(bare, batches, repeats))
    return {"method": name, "clzoo_s": ours, "bare_s": plain, "ratio": ours / plain}


def graph_update(n_classes: int, batch: int = 256, dim: int = 512, repeats: int = 50) -> float:
    torch.manual_seed(0)
    n = 4 * n_classes
    graph = NeighbourhoodGraph(n, dim)
    feats = torch.randn(batch, dim)
    labels = torch.randint(n, (batch,))

    def step():
        graph.update(feats, n)
        graph.na_loss(feats, labels, n)
        graph.symmetrise()

    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, nf 8; print only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "PROTOTYPE.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    nf, batch, steps, repeats = (8, 16, 3, 1) if args.quick else (20, 64, 5, 2)
    rows = [per_step(name, nf, batch, steps, repeats) for name in ("prd", "napavq")]
    g10, g100 = graph_update(10), graph_update(100)
    lines = [f"# Prototype family: per-step cost vs a bare loop", "",
             f"reduced ResNet-18 (nf {nf}), random 3x32x32 uint8 inputs, batch {batch}, second task of a "
             f"B50 + 10-class stream (teacher, 50 old classes), Adam; median of {repeats} passes over {steps} "
             f"steps, best of two interleaved measurements; torch {torch.__version__}, {args.threads} thread(s), "
             f"{platform.processor() or platform.machine()}.", "",
             "| method | clzoo s/step | bare s/step | clzoo / bare |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['clzoo_s']:.4f} | {r['bare_s']:.4f} | {r['ratio']:.2f} |" for r in rows]
    lines += ["", "NAPA-VQ graph update + NA loss + symmetrisation, 256 features of 512 dims:", "",
              "| classes seen (CVs) | ms/step |", "|---|---|",
              f"| 10 (40) | {1e3 * g10:.3f} |", f"| 100 (400) | {1e3 * g100:.3f} |", "",
              f"ratio 100 / 10 classes: {g100 / g10:.2f} (linear growth would be 10)"]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        Path(args.out).write_text(text)
    worst = max(r["ratio"] for r in rows)
    print(f"overhead_vs_bare_max={worst:.2f} graph_ratio_100_vs_10={g100 / g10:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
