"""Dump the stream of one cell of a leaderboard suite, as clzoo builds it, for a reference implementation to train on.

    python experiments/crosscheck/dump_stream.py SUITE CELL DATA_ROOT SEED DEST [--smoke N] [--same-stream CELL ...]

Writes ``DEST`` (torch.save): ``{"tasks": [{"classes", "x_train", "y_train", "x_test", "y_test"}, ...],
"fingerprint", "seed"}`` with the stored uint8 images (N, C, H, W) and int64 labels of every task, in the
stream's order. ``--smoke N`` keeps the first N training and test images of every class (a quick check of a
cross-check's plumbing). ``--same-stream`` names other cells whose stream configuration must equal CELL's (one
dump then serves them all). Run from a clzoo checkout's root (the suite's presets are read relative to it).
"""
from __future__ import annotations

import argparse

import torch

from clzoo.engine.runner import build_stream_from_config
from clzoo.leaderboard.suite import compose_cell, load_suite


def first_per_class(x: torch.Tensor, y: torch.Tensor, n: int):
    """The first ``n`` samples of each class, in the stream's order (all of them when ``n`` is 0)."""
    if not n:
        return x, y
    keep = torch.cat([(y == c).nonzero().squeeze(1)[:n] for c in y.unique()]).sort().values
    return x[keep], y[keep]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite")
    ap.add_argument("cell")
    ap.add_argument("data_root")
    ap.add_argument("seed", type=int)
    ap.add_argument("dest")
    ap.add_argument("--smoke", type=int, default=0)
    ap.add_argument("--same-stream", nargs="*", default=[])
    args = ap.parse_args(argv)

    suite = load_suite(args.suite)
    cells = {c.id: c for c in suite.cells}
    for name in [args.cell, *args.same_stream]:
        if name not in cells:
            raise SystemExit(f"{args.suite}: no cell {name!r} (cells: {', '.join(cells)})")
    cfg = compose_cell(suite, cells[args.cell], args.seed, data_root=args.data_root)
    for other in args.same_stream:
        if compose_cell(suite, cells[other], args.seed, data_root=args.data_root)["stream"] != cfg["stream"]:
            raise SystemExit(f"{args.suite}: the streams of cells {args.cell} and {other} differ")
    stream = build_stream_from_config(cfg)
    tasks = []
    for t in stream.tasks:
        xtr, ytr = first_per_class(t.x_train, t.y_train.long(), args.smoke)
        xte, yte = first_per_class(t.x_test, t.y_test.long(), args.smoke)
        tasks.append({"classes": list(t.classes), "x_train": xtr.clone(), "y_train": ytr.clone(),
                      "x_test": xte.clone(), "y_test": yte.clone()})
    torch.save({"tasks": tasks, "fingerprint": stream.info.get("data_fingerprint"), "seed": args.seed}, args.dest)
    print(f"seed {args.seed}: stream {stream.info.get('data_fingerprint', '')[:12]}, classes "
          f"{[t['classes'] for t in tasks]}, train {[len(t['y_train']) for t in tasks]}, "
          f"test {[len(t['y_test']) for t in tasks]} -> {args.dest}")


if __name__ == "__main__":
    main()
