"""Leaderboard throughput: the fixed cost of one run, worker reuse, and seeds trained as one batched model.

    python bench/throughput.py fixed            # what a run costs besides its training steps
    python bench/throughput.py workers          # does the joblib launcher reuse its worker processes?
    python bench/throughput.py seeds --tasks 5  # seeds 0,1,2 of Seq-MNIST fine-tuning and ER: separate vs grouped
    python bench/throughput.py suite --rev 7341636             # the whole seq_mnist suite, -j 2, with the code of
    python bench/throughput.py suite --rev HEAD --batch-seeds  # a revision (before / after issue 18's work)
    python bench/throughput.py checkpoint       # what a per-task checkpoint holds the run up: written / submitted

Every case runs with one torch thread (as leaderboard runs do) and prints wall and CPU seconds; the machine these
numbers come from is shared, so CPU seconds and the load average are printed too. Runs go to a temporary folder.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "experiments" / "seq_mnist.yaml"
NUMBERS = ("acc_matrix", "acc_matrix_task_il", "acc_init", "acc_init_task_il", "metrics", "memory")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def cell_config(cell_id: str, seed: int, *, train_per_task: int | None = None, tasks: int | None = None) -> dict:
    from clzoo.leaderboard.suite import compose_cell, load_suite, with_seed

    suite = load_suite(SUITE)
    cfg = with_seed(compose_cell(suite, next(c for c in suite.cells if c.id == cell_id), suite.seeds[0], None), seed)
    cfg["log"] = {**cfg.get("log", {}), "tensorboard": False, "plots": False, "progress": False, "keep_checkpoints": 1}
    cfg["trainer"]["num_threads"] = 1
    if train_per_task:
        cfg["stream"]["train_per_task"] = train_per_task
    if tasks:
        cfg["trainer"]["max_tasks"] = tasks
    return cfg


# ------------------------------------------------------------------------------------------------ fixed cost
def fixed(args) -> None:
    """A tiny Seq-MNIST fine-tuning run (100 training images per task: 50 steps in all; the full test sets):
    in a fresh process, then again and again in the same process; and its parts."""
    import torch

    from clzoo.data import cache
    from clzoo.data.sources import load_source
    from clzoo.engine import runner

    torch.set_num_threads(1)
    code = ("import time, resource; t = time.perf_counter(); import clzoo.leaderboard.runs, clzoo.engine.runner; "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_utime "
            "+ resource.getrusage(resource.RUSAGE_SELF).ru_stime)")
    starts = []
    for _ in range(3):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        starts.append((time.perf_counter() - t, float(out[0]), float(out[1])))
    print(f"load average {load()}")
    for wall, imp, cpu in starts:
        print(f"fresh interpreter + imports: {wall:.2f} s wall (imports {imp:.2f} s), {cpu:.2f} s CPU")
    cfg = cell_config("finetune", 0, train_per_task=100)
    with tempfile.TemporaryDirectory() as d:
        for i in range(4):
            if i == 3:
                cache.clear_memo()
            with Timer() as t, contextlib.redirect_stdout(io.StringIO()):  # not the run's own summary
                res = runner.run(cfg, Path(d) / f"r{i}", show_progress=False)
            what = "first in this process" if i == 0 else ("memo cleared" if i == 3 else "again, same process")
            print(f"tiny run {i} ({what}): {t.wall:.2f} s wall, {t.cpu:.2f} s CPU; of which training "
                  f"{res['time']['train_s']:.2f} s, evaluation {res['time']['eval_s']:.2f} s (6 passes over 10,000 "
                  f"test images)")
    cache.clear_memo()
    for label in ("cache file read and verified", "memoized"):
        with Timer() as t:
            src = load_source("mnist", cfg["data"].get("root"))
        print(f"MNIST source, {label}: {t.wall:.3f} s wall, {t.cpu:.3f} s CPU")
    with Timer() as t:
        stream = runner.build_stream_from_config(cfg)
    print(f"stream build from the memoized source: {t.wall:.3f} s wall, {t.cpu:.3f} s CPU")
    del src
    evaluation(cfg, stream)


def evaluation(cfg: dict, stream) -> None:
    """One evaluation pass (every task's test set, class-IL and task-IL) against the bare forward passes it needs:
    the same 10,000 images in chunks of 1,000, task by task and all tasks at once."""
    import torch

    from clzoo.engine import runner
    from clzoo.engine.checkpoint import seed_everything
    from clzoo.methods.base import RunContext, StreamInfo

    seed_everything(0)
    model = runner.build_model(cfg["model"], stream)
    train_tf, eval_tf = runner.transforms_from_config(cfg["stream"].get("augment"), torch.device("cpu"))
    ctx = RunContext(StreamInfo.from_stream(stream), torch.device("cpu"), train_tf, eval_tf)
    method = runner.instantiate(cfg["method"], model=model, ctx=ctx)
    x_all = torch.cat([t.x_test for t in stream.tasks])

    @torch.no_grad()
    def by_task():
        for t in stream.tasks:
            for i in range(0, len(t.x_test), 1000):
                method(method.preprocess(t.x_test[i:i + 1000]))

    @torch.no_grad()
    def at_once():
        for i in range(0, len(x_all), 1000):
            method(method.preprocess(x_all[i:i + 1000]))

    cases = {"evaluate() (both settings, per task)": lambda: runner.evaluate(method, stream, 4, torch.device("cpu")),
             "bare forward, chunks of 1,000 per task": by_task, "bare forward, chunks of 1,000 over all tasks": at_once}
    best = {k: float("inf") for k in cases}
    for _ in range(5):
        for name, fn in cases.items():
            with Timer() as t:
                fn()
            best[name] = min(best[name], t.cpu)
    for name, cpu in best.items():
        print(f"{name}: {cpu:.3f} s CPU (best of 5)")


# ------------------------------------------------------------------------------------------------ workers
def workers(args) -> None:
    """Six tiny runs through the leaderboard's Hydra multirun with -j 2: which processes ran them."""
    from clzoo.leaderboard.runs import launch

    with tempfile.TemporaryDirectory() as d:
        entries = []
        for i in range(6):
            cfg = cell_config("finetune", i % 3, train_per_task=100)
            entries.append({"suite": "bench", "cell": f"c{i}", "seed": i % 3, "run_dir": f"{d}/c{i}/seed{i % 3}",
                            "config": cfg, "hash": "bench", "fresh": True, "threads": 1, "device": None,
                            "command": "bench/throughput.py workers"})
        with Timer() as t:
            launch(entries, n_jobs=2, launch_dir=Path(d) / "_launch", echo=lambda s: None)
        pids = []
        for e in entries:
            first = (Path(e["run_dir"]) / "run.log").read_text().splitlines()[0]
            pids.append(first.split(" pid ")[1].split()[0])
        print(f"load average {load()}; 6 runs with -j 2: {t.wall:.1f} s wall; worker processes: "
              f"{len(set(pids))} distinct pids ({', '.join(pids)})")


# ------------------------------------------------------------------------------------------------ seeds
def seeds(args) -> None:
    """Seeds 0, 1, 2 of a cell: three separate runs in this process, then the three as one group, ``--repeats``
    times in turn (the minimum of each is reported: the machine may be shared); the numbers must be identical."""
    import torch

    from clzoo.engine.runner import run
    from clzoo.engine.seed_group import run_seed_group

    torch.set_num_threads(1)
    for cell in args.cells:
        cfgs = [cell_config(cell, s, tasks=args.tasks) for s in (0, 1, 2)]
        seps, grps, same = [], [], True
        with tempfile.TemporaryDirectory() as d:
            with contextlib.redirect_stdout(io.StringIO()):  # the runs' own summaries
                run(cfgs[0], Path(d) / "warm", show_progress=False)  # imports, memo: not counted below
                for r in range(args.repeats):
                    with Timer() as sep:
                        alone = [run(c, Path(d) / f"s{r}-{i}", show_progress=False) for i, c in enumerate(cfgs)]
                    with Timer() as grp:
                        grouped = run_seed_group(cfgs, [Path(d) / f"g{r}-{i}" for i in range(3)])
                    seps.append(sep)
                    grps.append(grp)
                    same = same and all(json.dumps(a[k], sort_keys=True) == json.dumps(g[k], sort_keys=True)
                                        for a, g in zip(alone, grouped) for k in NUMBERS)
        sep_cpu, sep_wall = min(t.cpu for t in seps), min(t.wall for t in seps)
        grp_cpu, grp_wall = min(t.cpu for t in grps), min(t.wall for t in grps)
        print(f"{cell}, {args.tasks} task(s), min of {args.repeats}, load average {load()}: 3 separate runs "
              f"{sep_wall:.1f} s wall ({sep_cpu:.1f} s CPU); grouped {grp_wall:.1f} s wall ({grp_cpu:.1f} s CPU) "
              f"= {3 * grp_cpu / sep_cpu:.2f} single runs of CPU, {3 * grp_wall / sep_wall:.2f} of wall; "
              f"numbers identical: {same}")


# ------------------------------------------------------------------------------------------------ whole suite
def same_numbers(a: dict, b: dict) -> bool:
    """Two runs' results printed the same numbers: accuracy matrices, the metrics both versions report (later
    versions add keys) and the counted memory."""
    matrices = ("acc_matrix", "acc_matrix_task_il", "acc_init", "acc_init_task_il")
    common = set(a["metrics"]) & set(b["metrics"])
    return all(a.get(k) == b.get(k) for k in matrices) and all(a["metrics"][k] == b["metrics"][k] for k in common) \
        and a["memory"]["total_bytes"] == b["memory"]["total_bytes"]


def suite(args) -> None:
    """The whole seq_mnist suite (every cell and seed) with ``-j 2`` into a temporary runs folder, with the code of
    revision ``--rev`` (its files from ``git archive``, imported ahead of the installed package, so one environment
    serves both revisions); prints its wall time, the CPU time of the processes it ran, the load average around it,
    and whether every run's numbers equal those of the same run in ``--against`` (the committed runs by default; a
    pass kept with ``--keep`` compares two revisions under one torch)."""
    import resource
    import shutil

    rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    data_root = args.data_root or os.environ.get("CLZOO_DATA")
    with tempfile.TemporaryDirectory() as d:
        code = Path(d) / f"clzoo-{rev}"
        code.mkdir()
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        runs = Path(d) / "runs"
        cmd = [sys.executable, "-c", "import sys, clzoo.leaderboard.cli as c; sys.exit(c.main())", "run",
               "experiments/seq_mnist.yaml", "-j", str(args.jobs), "--runs", str(runs)]
        cmd += ["--data-root", data_root] if data_root else []
        cmd += ["--batch-seeds"] if args.batch_seeds else []
        cmd += ["--only", *args.only] if args.only else []
        env = {**os.environ, "PYTHONPATH": str(code), "MPLBACKEND": "Agg"}
        imported = subprocess.run([sys.executable, "-c", "import clzoo; print(clzoo.__file__)"], cwd=code, env=env,
                                  capture_output=True, text=True, check=True).stdout.strip()
        assert imported.startswith(str(code)), f"the revision's code is not the one imported: {imported}"
        before_load, before = load(), resource.getrusage(resource.RUSAGE_CHILDREN)
        with Timer() as t:
            proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            raise SystemExit(f"the suite failed at {rev} (exit {proc.returncode})")
        done = sorted(runs.glob("seq_mnist/*/seed*/results.json"))
        same = differ = 0
        for path in done:
            committed = Path(args.against) / path.relative_to(runs)
            if not committed.exists():
                continue
            if same_numbers(json.loads(path.read_text()), json.loads(committed.read_text())):
                same += 1
            else:
                differ += 1
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        print(f"| {rev}{' --batch-seeds' if args.batch_seeds else ''} | {len(done)} runs | {t.wall:.1f} s | "
              f"{cpu:.1f} s | {before_load} -> {load()} | {same} equal to {args.against}, {differ} not |")
        if args.keep:
            shutil.copytree(runs, args.keep, dirs_exist_ok=True)


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint(args) -> None:
    """The time a per-task checkpoint keeps the training loop waiting: written in the loop (serialised, hashed,
    fsynced) or submitted to the background writer (a host snapshot), for the Seq-MNIST MLP and the DER paper's
    ResNet-18, each with a 500-sample uint8 buffer; minimum and median over ``--repeats`` tasks."""
    import statistics

    import torch

    from clzoo.engine.checkpoint import BackgroundCheckpoints, save_checkpoint
    from clzoo.memory.buffer import ReplayBuffer
    from clzoo.models import MLP
    from clzoo.models.backbones import reduced_resnet18

    torch.set_num_threads(1)
    nets = {"MLP 784-100-100-10": (MLP((1, 28, 28), [100, 100]), (1, 28, 28)),
            "ResNet-18 (nf 64)": (reduced_resnet18((3, 32, 32), nf=64), (3, 32, 32))}
    for name, (net, shape) in nets.items():
        state = {"model": net.state_dict(), "buffer": ReplayBuffer(500, shape, 10).state_dict()}
        mb = sum(t.numel() * t.element_size() for part in state.values() for t in part.values()) / 2**20
        progress = {"R": [[0.5] * 5] * 5}
        with tempfile.TemporaryDirectory() as tmp:
            written, submitted = [], []
            background = BackgroundCheckpoints()
            for task in range(args.repeats):
                with Timer() as t:
                    save_checkpoint(Path(tmp) / "written", task, state, progress)
                written.append(t.wall)
                with Timer() as t:
                    background.submit(Path(tmp) / "submitted", task, state, progress)
                submitted.append(t.wall)
                background.wait()  # the next task starts with the writer idle, as after a task's training
            background.close()
        print(f"{name} ({mb:.1f} MiB of state): written {min(written):.3f} s (median "
              f"{statistics.median(written):.3f}), submitted {min(submitted):.3f} s (median "
              f"{statistics.median(submitted):.3f}); load {load()}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=["fixed", "workers", "seeds", "suite", "checkpoint"])
    ap.add_argument("--cells", nargs="+", default=["finetune", "er-b500"], help="seq_mnist cells (seeds case)")
    ap.add_argument("--tasks", type=int, default=5, help="tasks trained per run (seeds case; default all 5)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="separate / grouped passes in turn (seeds case); tasks checkpointed (checkpoint case)")
    ap.add_argument("--rev", default="HEAD", help="the revision whose code runs the suite (suite case)")
    ap.add_argument("--batch-seeds", action="store_true", help="clzoo-leaderboard run --batch-seeds (suite case)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="runs in parallel (suite case; default 2)")
    ap.add_argument("--data-root", default=None, help="where MNIST lives (suite case; default $CLZOO_DATA)")
    ap.add_argument("--only", nargs="+", default=None, help="only these cells' methods (suite case; default all)")
    ap.add_argument("--against", default=str(ROOT / "leaderboard" / "runs"),
                    help="runs whose numbers the suite's must equal (suite case; default the committed runs, which "
                         "equal only under the torch version that made them)")
    ap.add_argument("--keep", default=None, help="copy the suite's runs here (suite case)")
    args = ap.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    {"fixed": fixed, "workers": workers, "seeds": seeds, "suite": suite, "checkpoint": checkpoint}[args.case](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
