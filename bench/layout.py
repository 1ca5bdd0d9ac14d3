#!/usr/bin/env python
"""CPU speed of the CIFAR nets by memory layout and evaluation batch: what ``trainer.channels_last`` and
``trainer.eval_batch_size=auto`` are chosen from.

    python bench/layout.py              # ResNet-32 and the reduced ResNet-18, one thread; writes bench/LAYOUT.md
    python bench/layout.py --quick      # fewer repeats (a smoke run; prints, writes nothing)

Two measurements per network, each a median over interleaved repeats (the two layouts, or the batch sizes, take
turns, so a slow spell of the machine hits them alike):

* a training step (forward, cross-entropy, backward, SGD with momentum) at the batch its suites use, in the
  default NCHW layout and in channels-last (NHWC weights and inputs);
* evaluation (``torch.no_grad``, eval mode) of 1,000 images at batch sizes 128 to 1,000, in both layouts.

Only speed is measured here; channels-last computes the same convolutions in another memory order, so its results
agree with NCHW's up to rounding (a test checks the logits).
"""
from __future__ import annotations

import argparse
import os
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

from clzoo.models import reduced_resnet18, resnet32  # noqa: E402

NETS = {"ResNet-32 (memo_cifar100)": (resnet32, 128), "reduced ResNet-18 (online_cifar10)": (reduced_resnet18, 10)}
EVAL_BATCHES = (128, 256, 500, 1000)


def as_layout(net: torch.nn.Module, x: torch.Tensor, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return net.to(memory_format=fmt), x.contiguous(memory_format=fmt)


def train_step_s(net, x, y, opt) -> float:
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    return time.perf_counter() - t


@torch.no_grad()
def eval_s(net, x, batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(x), batch):
        net(x[i:i + batch])
    return time.perf_counter() - t


def measure(make, train_batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    net = make((3, 32, 32))
    head = torch.nn.Linear(net.out_features, 10)
    model = torch.nn.Sequential(net, head)
    x_train, y_train = torch.rand(train_batch, 3, 32, 32), torch.randint(0, 10, (train_batch,))
    x_eval = torch.rand(1000, 3, 32, 32)
    out = {"train": {False: [], True: []}, "eval": {(cl, b): [] for cl in (False, True) for b in EVAL_BATCHES}}
    for r in range(repeats + 1):  # the first round warms up and is not counted
        for cl in (False, True):
            m, x = as_layout(model, x_train, cl)
            m.train()
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
            t = statistics.median(train_step_s(m, x, y_train, opt) for _ in range(5))
            m.eval()
            _, xe = as_layout(model, x_eval, cl)
            for b in EVAL_BATCHES:
                te = eval_s(m, xe, b)
                if r:
                    out["eval"][(cl, b)].append(te)
            if r:
                out["train"][cl].append(t)
    return {"train": {k: statistics.median(v) for k, v in out["train"].items()},
            "eval": {k: statistics.median(v) for k, v in out["eval"].items()}}


def table(results: dict, repeats: int) -> str:
    lines = ["# CPU layout and evaluation batch (`bench/layout.py`)", "",
             f"One thread (`torch.set_num_threads(1)`), torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores; medians of {repeats} interleaved repeats (training: each repeat the median of "
             "5 steps).", "", "## Training step", "",
             "| network | batch | NCHW (ms) | channels-last (ms) | ratio |", "|---|---|---|---|---|"]
    for name, r in results.items():
        a, b = r["train"][False] * 1e3, r["train"][True] * 1e3
        lines.append(f"| {name} | {r['batch']} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    lines += ["", "## Evaluation of 1,000 images (s)", "",
              "| network | layout | " + " | ".join(f"batch {b}" for b in EVAL_BATCHES) + " |",
              "|---|---|" + "---|" * len(EVAL_BATCHES)]
    for name, r in results.items():
        for cl in (False, True):
            cells = " | ".join(f"{r['eval'][(cl, b)]:.2f}" for b in EVAL_BATCHES)
            lines.append(f"| {name} | {'channels-last' if cl else 'NCHW'} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, print only")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    results = {}
    for name, (make, batch) in NETS.items():
        results[name] = {**measure(make, batch, repeats), "batch": batch}
        print(f"{name}: done", flush=True)
    text = table(results, repeats)
    print(text)
    if not args.quick:
        (HERE / "LAYOUT.md").write_text(text)


if __name__ == "__main__":
    main()
