#!/usr/bin/env python
"""Per-step overhead: clzoo's training loop against a bare PyTorch loop doing the same arithmetic.

    python bench/overhead.py                         # 3 alternating repeats, 2 tasks per case -> bench/OVERHEAD.md
    python bench/overhead.py --repeats 5 --tasks 1 --cases seq-mnist/er

Cases (the DER paper's MNIST network, an MLP 784-100-100-10, SGD, one epoch, one CPU thread):

* ``seq-mnist/er``     Split MNIST, ER, batch 10 + 10 replayed, reservoir buffer of 500, lr 0.1;
* ``seq-mnist/derpp``  Split MNIST, DER++, batch 10, two replay draws of 10 (logits and labels), buffer 500, lr 0.03;
* ``perm-mnist/er``    Permuted MNIST, ER, batch 128 + 128 replayed, buffer 500, lr 0.1.

What is compared is the training time per step: clzoo's ``results["time"]["train_s"]`` (``clzoo.engine.run`` with
its defaults: TensorBoard events on, progress off) divided by its number of steps, against the same span of the bare
loop. The bare loop below is written for this file from plain PyTorch (torchvision's MNIST reader, a Python
reservoir, ``torch.optim.SGD``); it imports nothing from clzoo. Its data are float tensors already scaled to
[0, 1] (clzoo keeps uint8 images and converts each batch, as its memory accounting requires).

The two systems run one after the other in one process, their order alternating between repeats; each number is
the minimum over the repeats (the best estimate of the undisturbed time on a shared machine). The load average is
printed with the results: on a loaded machine both systems slow down, and the ratio is the meaningful figure.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
CASES = {
    # name: (stream, method, batch, replay minibatch, lr, extra clzoo overrides)
    "seq-mnist/er": ("split_mnist", "er", 10, 10, 0.1, []),
    "seq-mnist/derpp": ("split_mnist", "derpp", 10, 10, 0.03, ["method.alpha=1.0", "method.beta=0.5"]),
    "perm-mnist/er": ("perm_mnist", "er", 128, 128, 0.1, []),
}
BUFFER = 500


# ------------------------------------------------------------------------------------------------ bare loop
def load_mnist(root: str):
    """Train images as float [0, 1] (N, 784) and labels, read with torchvision (no clzoo code)."""
    from torchvision.datasets import MNIST

    ds = MNIST(root, train=True, download=False)
    return ds.data.reshape(len(ds.data), -1).float() / 255.0, ds.targets.clone()


def bare_tasks(x, y, stream: str, n_tasks: int):
    if stream == "split_mnist":
        for t in range(n_tasks):
            keep = (y == 2 * t) | (y == 2 * t + 1)
            yield x[keep], y[keep]
    else:
        g = torch.Generator().manual_seed(0)
        for t in range(n_tasks):
            perm = torch.randperm(x.shape[1], generator=g)
            yield x[:, perm], y


def bare_run(x, y, case: str, n_tasks: int) -> tuple[float, float, int]:
    """Train the case's method with a plain loop; returns (wall seconds, CPU seconds, steps) of its step loops."""
    stream, method, bs, mb, lr, _ = CASES[case]
    torch.manual_seed(0)
    random.seed(0)
    net = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    bx, by = torch.zeros(BUFFER, 784), torch.zeros(BUFFER, dtype=torch.long)
    blog = torch.zeros(BUFFER, 10)
    seen = 0
    wall, cpu, steps = 0.0, 0.0, 0
    for xt, yt in bare_tasks(x, y, stream, n_tasks):
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        t0, c0 = time.perf_counter(), time.process_time()
        order = torch.randperm(len(yt))
        for b in range(0, len(yt), bs):
            idx = order[b:b + bs]
            xb, yb = xt[idx], yt[idx]
            filled = min(seen, BUFFER)
            if method == "er":
                if filled:
                    r = torch.randperm(filled)[:mb]
                    out = net(torch.cat([xb, bx[r]]))
                    loss = F.cross_entropy(out, torch.cat([yb, by[r]]))
                else:
                    out = net(xb)
                    loss = F.cross_entropy(out, yb)
            else:  # derpp
                out = net(xb)
                loss = F.cross_entropy(out, yb)
                if filled:
                    r = torch.randperm(filled)[:mb]
                    loss = loss + 1.0 * F.mse_loss(net(bx[r]), blog[r])
                    r = torch.randperm(filled)[:mb]
                    loss = loss + 0.5 * F.cross_entropy(net(bx[r]), by[r])
            opt.zero_grad()
            loss.backward()
            opt.step()
            logits = out[:len(yb)].detach()
            for i in range(len(yb)):  # reservoir sampling, one sample at a time
                slot = seen if seen < BUFFER else random.randint(0, seen)
                if slot < BUFFER:
                    bx[slot], by[slot], blog[slot] = xb[i], yb[i], logits[i]
                seen += 1
            steps += 1
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return wall, cpu, steps


# ------------------------------------------------------------------------------------------------ clzoo
def clzoo_run(case: str, n_tasks: int, data_root: str) -> tuple[float, float, int]:
    """``clzoo.engine.run`` on the case; returns (wall seconds, CPU seconds, steps) spent in its step loops
    (``train_task_steps``, the span the bare loop times; the optimizer rebuild and task hooks are outside it)."""
    from clzoo.config import compose
    from clzoo.engine import runner

    stream, method, bs, mb, lr, extra = CASES[case]
    cfg = compose([f"stream={stream}", f"method={method}", f"trainer.batch_size={bs}", f"trainer.optimizer.lr={lr}",
                   f"method.buffer.capacity={BUFFER}", f"method.minibatch_size={mb}", f"trainer.max_tasks={n_tasks}",
                   "trainer.num_threads=1", "log.progress=false", "log.plots=false", f"data.root={data_root}", *extra])
    spent = [0.0, 0.0]
    train_task_steps = runner.train_task_steps

    def timed_train_task(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return (yield from train_task_steps(*args, **kwargs))
        finally:
            spent[0] += time.perf_counter() - t0
            spent[1] += time.process_time() - c0

    runner.train_task_steps = timed_train_task
    try:
        with tempfile.TemporaryDirectory() as d:
            res = runner.run(cfg, d, show_progress=False)
    finally:
        runner.train_task_steps = train_task_steps
    steps = sum(math.ceil(n / bs) for n in res["stream"]["train_sizes"][:n_tasks])
    return spent[0], spent[1], steps


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=2, help="tasks trained per run (default 2)")
    ap.add_argument("--data-root", default=os.environ.get("CLZOO_DATA", "~/.cache/clzoo/data"))
    ap.add_argument("--out", default=str(HERE / "OVERHEAD.md"), help="markdown report ('-' prints only)")
    args = ap.parse_args(argv)
    root = os.path.expanduser(args.data_root)
    sys.path.insert(0, str(HERE.parent))
    torch.set_num_threads(1)
    import contextlib
    import io

    x, y = load_mnist(root)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    for case in args.cases:
        times = {(system, kind): [] for system in ("clzoo", "bare") for kind in ("wall", "cpu")}
        with contextlib.redirect_stdout(io.StringIO()):
            clzoo_run(case, 1, root), bare_run(x, y, case, 1)  # warm-up (imports, first-call costs)
        for rep in range(args.repeats):
            order = ("clzoo", "bare") if rep % 2 == 0 else ("bare", "clzoo")
            for system in order:
                with contextlib.redirect_stdout(io.StringIO()):
                    wall, cpu, steps = (clzoo_run(case, args.tasks, root) if system == "clzoo"
                                        else bare_run(x, y, case, args.tasks))
                times[system, "wall"].append(wall / steps)
                times[system, "cpu"].append(cpu / steps)
                print(f"{case} {system} repeat {rep}: {steps} steps, {1e6 * wall / steps:.0f} us/step wall, "
                      f"{1e6 * cpu / steps:.0f} us/step CPU", file=sys.stderr, flush=True)
        rows.append((case, {k: min(v) for k, v in times.items()}, times))
    load_after = os.getloadavg()

    loaded = max(load_before[0], load_after[0]) > 1.5
    lines = [
        "# Per-step overhead: clzoo vs a bare PyTorch loop",
        "",
        f"Generated by `python bench/overhead.py --repeats {args.repeats} --tasks {args.tasks}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')} ({time.perf_counter() - started:.0f} s).",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}, 1 thread. Load average (1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/"
        f"{load_before[2]:.1f} before, {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} after"
        + (": **measured under load**: the machine was shared with other jobs, which slows both systems and makes "
           "wall times noisy; CPU time (``time.process_time``, all threads of the process) is less disturbed and is "
           "the figure to read." if loaded else "."),
        f"- Each time: seconds per training step over the first {args.tasks} task(s) (the step loops only), "
        f"minimum over {args.repeats} repeats, the two systems alternating. Overhead = clzoo - bare, per step.",
        "",
        "| case | clzoo CPU us/step | bare CPU us/step | **clzoo / bare (CPU)** | **overhead CPU us/step** "
        "| clzoo wall us/step | bare wall us/step | clzoo / bare (wall) | every repeat, CPU (clzoo; bare) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, best, times in rows:
        cc, bc, cw, bw = best["clzoo", "cpu"], best["bare", "cpu"], best["clzoo", "wall"], best["bare", "wall"]
        every = (", ".join(f"{1e6 * t:.0f}" for t in times["clzoo", "cpu"]) + "; "
                 + ", ".join(f"{1e6 * t:.0f}" for t in times["bare", "cpu"]))
        lines.append(f"| {case} | {1e6 * cc:.0f} | {1e6 * bc:.0f} | **{cc / bc:.2f}x** | **{1e6 * (cc - bc):+.0f}** "
                     f"| {1e6 * cw:.0f} | {1e6 * bw:.0f} | {cw / bw:.2f}x | {every} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
    print("overhead_ratio_cpu_max=" + f"{max(r[1]['clzoo', 'cpu'] / r[1]['bare', 'cpu'] for r in rows):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
