"""Images/s of the disk store (data.store=disk) against the in-memory path, on CIFAR-10 ($CLZOO_DATA/cifar10).

    python bench/store.py               # CIFAR-10's 50,000 training images; writes bench/STORE.md
    python bench/store.py --quick       # 5,000 of them, 1 repeat (seconds)

Two measurements, each configuration in its own process, the paths alternating over ``--rounds`` rounds (so its peak resident memory, ``ru_maxrss``, is its own):

* ``pipeline``: the engine's data path alone. One epoch of shuffled batches of 128 through the training transform
  (random crop + flip + normalisation, batched): in memory, ``index_select`` on the task tensor (the engine's
  in-memory path); from the store, :meth:`StoredImages.batches` (rows read from the memory-mapped file in a
  background thread). Median of ``--repeats`` epochs, after one warm-up epoch.
* ``train``: a whole ``clzoo-run`` (stream=split_cifar10, method=er, model=mlp, one epoch) through the runner;
  images/s = training samples / training time as results.json reports it.

Also: the one-off cost of each path (building the store from the image folder, decoding into the in-memory
cache) and of loading it in a later run. The store's pages are in the page cache after the first epoch (the
150 MB store fits in this machine's RAM); a store larger than RAM is read from disk at the disk's speed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("CLZOO_DATA", "~/.cache/clzoo/data")).expanduser()


class PeakAnon:
    """The peak of this process's anonymous resident memory (``RssAnon``: its own data, not the store's file pages,
    which the OS can drop and which ``ru_maxrss`` would count), sampled every 10 ms in a thread."""

    def __init__(self):
        import threading

        self.peak, self.done = 0, False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    @staticmethod
    def now_kb() -> int:
        with open("/proc/self/status") as fh:
            return int(next(line for line in fh if line.startswith("RssAnon")).split()[1])

    def _sample(self):
        while not self.done:
            self.peak = max(self.peak, self.now_kb())
            time.sleep(0.01)

    def mb(self) -> float:
        self.done = True
        self.thread.join()
        return max(self.peak, self.now_kb()) / 1024


def pipeline(store: str, work: Path, limit: int | None, repeats: int) -> dict:
    """One configuration of the data path, in this process."""
    import torch

    from clzoo.data import BatchTransform, build_stream
    from clzoo.data.disk_store import is_stored

    torch.set_num_threads(1)
    peak = PeakAnon()
    t0 = time.perf_counter()
    stream = build_stream("cifar10", n_tasks=1, root=data_root(), store=store, store_dir=work / "stores",
                          train_per_task=limit)
    load_s = time.perf_counter() - t0
    task = stream.tasks[0]
    x_all, y_all = task.x_train, task.y_train
    transform = BatchTransform([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], crop_padding=4, hflip=True)
    n, bs = len(y_all), 128
    rates = []
    for epoch in range(repeats + 1 if repeats else 0):  # epoch 0 warms up (allocator, page cache)
        order = torch.randperm(n)
        t1, total = time.perf_counter(), 0.0
        if is_stored(x_all):
            for x, y in x_all.batches(order, bs, y_all):
                total += float(transform(x).sum()) + int(y.sum())
        else:
            for b in range(0, n, bs):
                idx = order[b:b + bs]
                total += float(transform(x_all.index_select(0, idx)).sum()) + int(y_all.index_select(0, idx).sum())
        if epoch:
            rates.append(n / (time.perf_counter() - t1))
    rates.sort()
    return {"store": store, "n": n, "images_per_s": rates[len(rates) // 2] if rates else None, "load_s": load_s, "peak_mb": peak.mb()}


def train(store: str, work: Path, limit: int | None) -> dict:
    """A whole clzoo run (ER, MLP, one epoch of Split CIFAR-10) through the runner, in this process."""
    from clzoo.config import compose
    from clzoo.engine.runner import run

    overrides = ["stream=split_cifar10", "method=er", "model=mlp", "trainer.epochs=1", "trainer.num_threads=1",
                 "log.progress=false", "log.tensorboard=false", "log.plots=false", f"data.root={data_root()}",
                 f"data.store={store}", f"data.store_dir={work / 'stores'}"]
    if limit:
        overrides.append(f"stream.train_per_task={limit // 5}")
    peak = PeakAnon()
    t0 = time.perf_counter()
    results = run(compose(overrides), work / f"run-{store}-{time.time_ns()}")
    n = sum(results["stream"]["train_sizes"])
    return {"store": store, "n": n, "images_per_s": n / results["time"]["train_s"],
            "train_s": results["time"]["train_s"], "eval_s": results["time"]["eval_s"],
            "wall_s": time.perf_counter() - t0, "peak_mb": peak.mb(),
            "final_acc": results["metrics"].get("final_acc", results["acc_matrix"][-1])}


def child(kind: str, store: str, work: Path, limit: int | None, repeats: int) -> dict:
    """Run one configuration in a fresh process and return what it printed (its last line, JSON)."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import store as b; from pathlib import Path; "
            f"print(json.dumps(b.{kind}({store!r}, Path({str(work)!r}), {limit!r}"
            f"{', ' + str(repeats) if kind == 'pipeline' else ''})))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"{kind} {store} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 training images, one repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per pipeline process (median)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per configuration, alternating (median)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "STORE.md"))
    args = parser.parse_args()
    if not (data_root() / "cifar10" / "train").is_dir():
        raise SystemExit(f"needs CIFAR-10 as an image folder: {data_root()}/cifar10/{{train,test}}/<class>/*.png "
                         f"(set CLZOO_DATA)")
    limit, repeats = (5000, 1) if args.quick else (None, args.repeats)
    args.rounds = 1 if args.quick else args.rounds
    work = Path(tempfile.mkdtemp(prefix="clzoo-bench-store-"))
    load_before = os.getloadavg()
    try:
        child("pipeline", "memory", work, limit, 0)  # first: the in-memory path's cache (decode once) ...
        t0 = time.perf_counter()
        child("pipeline", "disk", work, limit, 0)  # ... and the store (decode once, hash)
        build_s = time.perf_counter() - t0
        # the two paths alternate, round after round, so a change in the machine's load hits both alike
        runs: dict[tuple, list] = {}
        for _ in range(args.rounds):
            for kind in ("pipeline", "train"):
                for store in ("memory", "disk"):
                    runs.setdefault((kind, store), []).append(child(kind, store, work, limit, repeats))
        rows = {key: {**found[-1], "images_per_s": statistics.median(r["images_per_s"] for r in found),
                      "peak_mb": max(r["peak_mb"] for r in found)} for key, found in runs.items()}
        store_mb = sum(f.stat().st_size for f in (work / "stores").rglob("*.npy")) / 2**20
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    lines = [
        "# Disk store vs in-memory path: images/s on CIFAR-10",
        "",
        f"`python bench/store.py{' --quick' if args.quick else ''}` on {platform.node() or 'this machine'}: "
        f"{os.cpu_count()} CPU cores (torch 1 thread), Python {platform.python_version()}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min; the machine is shared with other jobs, "
        "so absolute numbers move with the load).",
        "",
        f"Store: {store_mb:.0f} MB of .npy (train + test), built once in {build_s:.1f} s (process start, decoding "
        f"{60000 if not limit else 'the'} PNGs, hashing); a later run opens it in {rows[('pipeline', 'disk')]['load_s']:.2f} s "
        f"(the in-memory path loads its verified cache in {rows[('pipeline', 'memory')]['load_s']:.2f} s). "
        f"Page cache warm (the store fits in RAM here). Peak anonymous RSS: the process's own memory (RssAnon, "
        f"sampled every 10 ms), not the store's file pages, which the OS drops under pressure.",
        "",
        "| measurement | path | images | images/s: median (each process) | peak anonymous RSS, max (MB) |",
        "|---|---|---:|---:|---:|",
    ]
    for (kind, store), row in rows.items():
        what = ("data path: shuffled batches of 128 + crop/flip/normalise" if kind == "pipeline"
                else "clzoo run: split_cifar10, ER, MLP, 1 epoch")
        every = ", ".join(f"{r['images_per_s']:,.0f}" for r in runs[(kind, store)])
        lines.append(f"| {what} | {store} | {row['n']:,} | {row['images_per_s']:,.0f} ({every}) | "
                     f"{row['peak_mb']:.0f} |")
    p_mem, p_disk = rows[("pipeline", "memory")]["images_per_s"], rows[("pipeline", "disk")]["images_per_s"]
    t_mem, t_disk = rows[("train", "memory")]["images_per_s"], rows[("train", "disk")]["images_per_s"]
    lines += ["", f"Data path: the store reads at {p_disk / p_mem:.2f}x the in-memory rate; whole run: "
              f"{t_disk / t_mem:.2f}x. Final accuracy, memory / disk: {rows[('train', 'memory')]['final_acc']} / "
              f"{rows[('train', 'disk')]['final_acc']} (the same batches: bit-identical on CPU).", ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
