"""Speed and peak memory of HyperInterval's training step, and the cost of its output regulariser.

    python bench/bench_hypernet.py                    # Split-MNIST defaults: target MLP 784-400-400-2, H [75, 75]
    python bench/bench_hypernet.py --quick            # a small configuration (seconds; CI)

One training step = the current task's IBP forward / backward through the hypernetwork and the target network
(batch 128, worst-case loss on) + the regulariser over ``t`` earlier tasks + an Adam update. The regulariser runs
the ``t`` earlier embedding boxes through the hypernetwork either as one batch (clzoo's form: the output layer's
weights, which dominate, are read once per step) or one task at a time (the official code's loop over
``calc_fix_target_reg``: the output layer is read ``t + 1`` times per step). Both give the same value. Each
configuration runs in its own process, so the peak resident memory (``ru_maxrss``) is that configuration's own.
Writes bench/RESULTS_hypernet.md (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(target_hidden: list[int], hnet_hidden: list[int], emb_dim: int, prev: int, mode: str, steps: int,
            batch: int) -> dict:
    import torch

    from clzoo.methods.base import RunContext, StreamInfo
    from clzoo.methods.hypernet.hyperinterval import HyperInterval
    from clzoo.models import MLP, ContinualModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    T = prev + 1
    info = StreamInfo(T, 2, (1, 28, 28), [[0, 1]] * T, "task_il")
    ctx = RunContext(info, optimizer={"name": "adam", "lr": 1e-3}, batch_size=batch, epochs=1)
    method = HyperInterval(ContinualModel(MLP((1, 28, 28), target_hidden), 2), ctx, emb_dim=emb_dim,
                           hidden=hnet_hidden)
    if mode == "loop":  # the official form: one hypernetwork pass per earlier task
        def regulariser(task_id):
            total = 0.0
            for j in range(task_id):
                out = torch.stack(method.hnet.interval(*method.box([j])), dim=1)
                total = total + (out - method.reg_targets[j:j + 1]).pow(2).sum()
            return total / (task_id * method.n_targets)
        method.regulariser = regulariser
    method.current_task = prev
    for t, p in enumerate(method.embeddings):
        p.requires_grad_(t == prev)
    for t, p in enumerate(method.rho):
        p.requires_grad_(t == prev)
    if prev:
        with torch.no_grad():
            method.reg_targets = method.generate_targets(prev) + 0.01  # off target: the regulariser has a gradient
    method.steps_in_task, method.step_in_task = 10**9, 10**9  # past the warm-up: full epsilon, both loss terms
    method.reset_optimizer()
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 2, (batch,))
    for _ in range(2):  # warm-up (allocations, Adam state)
        method.observe(x, y, prev)
    walls, cpu0 = [], time.process_time()
    for _ in range(steps):
        t0 = time.perf_counter()
        method.observe(x, y, prev)
        walls.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / steps
    dt = min(walls)  # the least disturbed step (the machine may be shared)
    with torch.no_grad():
        reg = float(method.regulariser(prev)) if prev else 0.0
    return {"prev": prev, "mode": mode, "step_s": dt, "steps_per_s": 1 / dt, "cpu_step_s": cpu,
            "median_step_s": sorted(walls)[len(walls) // 2],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "target_params": method.target.n_params, "generator_params": sum(p.numel() for p in method.hnet.parameters()),
            "regulariser": reg}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small target (784-32-32-2) and hypernetwork, 3 steps")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after 2 warm-up steps)")
    ap.add_argument("--prev", type=int, nargs="+", default=[0, 5, 10], help="numbers of earlier tasks")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS_hypernet.md"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # child process: one configuration
        print(json.dumps(measure(**json.loads(args.one))))
        return
    cfg = ({"target_hidden": [32, 32], "hnet_hidden": [16, 16], "emb_dim": 8} if args.quick
           else {"target_hidden": [400, 400], "hnet_hidden": [75, 75], "emb_dim": 72})
    steps = 3 if args.quick else args.steps
    rows = []
    for prev in args.prev:
        for mode in (("batched",) if prev == 0 else ("batched", "loop")):
            spec = json.dumps({**cfg, "prev": prev, "mode": mode, "steps": steps, "batch": 128})
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, __file__, "--one", spec], capture_output=True, text=True, env=env,
                                 check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"{prev:>2} earlier tasks, {mode:<7}: {row['step_s'] * 1000:8.1f} ms/step (min; median "
                  f"{row['median_step_s'] * 1000:.1f}), CPU {row['cpu_step_s'] * 1000:.1f} ms/step, "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    if args.quick:
        return
    base = {r["prev"]: r for r in rows if r["mode"] == "batched"}
    lines = ["# HyperInterval training step: speed, peak memory, and the regulariser's cost",
             "", f"Generated by `python bench/bench_hypernet.py` on {time.strftime('%Y-%m-%d %H:%M')}.", "",
             f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (load "
             f"average {os.getloadavg()[0]:.1f} at the end, the benchmark itself about 1), one torch thread.",
             f"- Configuration: the official Split-MNIST defaults: target MLP 784-{'-'.join(map(str, cfg['target_hidden']))}-2 "
             f"({rows[0]['target_params']:,} parameters), hypernetwork {cfg['emb_dim']}-"
             f"{'-'.join(map(str, cfg['hnet_hidden']))}-{rows[0]['target_params']:,} "
             f"({rows[0]['generator_params']:,} parameters), batch 128, Adam, past the warm-up (full epsilon, "
             f"worst-case term on).",
             f"- Each row: its own process, {steps} timed steps after 2 warm-up steps. *wall* = the fastest step (the "
             f"least disturbed by other jobs; median in brackets), *CPU* = process CPU time per step (one thread), "
             f"which other jobs disturb least; peak memory = the process's peak resident set (model, Adam state, "
             f"activations, stored targets).",
             "- *batched*: clzoo's regulariser (all earlier boxes through the hypernetwork as one batch); *loop*: one "
             "hypernetwork pass per earlier task, as the official code.", "",
             "| earlier tasks | regulariser | wall ms / step | steps / s (wall) | CPU ms / step | CPU x step with no "
             "earlier task | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prev']} | {r['mode']} | {r['step_s'] * 1000:.0f} ({r['median_step_s'] * 1000:.0f}) | "
                     f"{r['steps_per_s']:.2f} | {r['cpu_step_s'] * 1000:.0f} | "
                     f"{r['cpu_step_s'] / base[0]['cpu_step_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    extra = {(r["prev"], r["mode"]): r["cpu_step_s"] - base[0]["cpu_step_s"] for r in rows if r["prev"]}
    if all(k in extra for k in ((5, "batched"), (10, "batched"), (5, "loop"), (10, "loop"))):
        lines += ["", f"Regulariser cost per step (CPU, above the step with no earlier task): batched "
                      f"{extra[5, 'batched'] * 1000:.0f} ms at 5 earlier tasks and {extra[10, 'batched'] * 1000:.0f} ms at "
                      f"10 (x{extra[10, 'batched'] / extra[5, 'batched']:.2f} for twice the tasks); looped "
                      f"{extra[5, 'loop'] * 1000:.0f} ms and {extra[10, 'loop'] * 1000:.0f} ms "
                      f"(x{extra[10, 'loop'] / extra[5, 'loop']:.2f}). The looped form reads the hypernetwork's output "
                      f"layer once per earlier task, so its cost grows linearly with the tasks and a run's time "
                      f"quadratically; the batched form reads it once per step, and only the small per-task rows grow."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
