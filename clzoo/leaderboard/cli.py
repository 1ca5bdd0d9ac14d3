"""``clzoo-leaderboard``: run experiment suites, build the leaderboard, check committed cells.

    clzoo-leaderboard run experiments/seq_mnist.yaml -j 2 --data-root ~/data   # fill the missing runs
    clzoo-leaderboard run experiments/seq_mnist.yaml --only der derpp --dry-run  # what would run
    clzoo-leaderboard run experiments/seq_mnist.yaml --batch-seeds --runs /tmp/runs  # seeds trained together
    clzoo-leaderboard build                                                       # leaderboard/ from the runs
    clzoo-leaderboard build --strict                                              # ... failing if a run is left out
    clzoo-leaderboard digest leaderboard/runs        # add the digest of their numbers to runs written without one
    clzoo-leaderboard check experiments/seq_mnist.yaml --cells er-b500 derpp-b500 --seeds 0 --tolerance 1.0
    clzoo-leaderboard validate experiments/*.yaml                                 # schema + every cell composes
    clzoo-leaderboard sweep multirun/2026-01-01_12-00-00                          # mean +- std table of any runs

On Slurm: ``clzoo-leaderboard run SUITE --launcher submitit_slurm --hydra hydra.launcher.partition=cpu
--hydra hydra.launcher.timeout_min=60 --hydra hydra.launcher.cpus_per_task=1`` (pip install
hydra-submitit-launcher; the runs folder must be on a filesystem the nodes share).

Exit status: 0 success, 1 a run failed, the check failed or (build --strict) a run was left out, 2 a usage or
suite error.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections import Counter
from pathlib import Path

from .suite import SuiteError, load_suite


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default="leaderboard/runs", help="folder of the runs (default: leaderboard/runs)")
    p.add_argument("--data-root", default=None, help="where datasets live (data.root; default: $CLZOO_DATA or "
                                                     "~/.cache/clzoo/data)")
    p.add_argument("-j", "--jobs", type=int, default=1, help="runs in parallel (Hydra joblib launcher when > 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per run (default: 1, or what the committed run used for check)")
    p.add_argument("--device", default=None, help="trainer.device for the runs (default: the config's, auto)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="clzoo-leaderboard", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Suite schema: see experiments/README.md")
    sub = ap.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the cells of a suite that have no result yet")
    r.add_argument("suite", help="experiments/<suite>.yaml")
    _add_common(r)
    r.add_argument("--only", nargs="+", metavar="METHOD", help="only the cells of these methods (or cell names)")
    r.add_argument("--cells", nargs="+", metavar="ID", help="only these cells (ids such as der-b500)")
    r.add_argument("--seeds", nargs="+", type=int, metavar="K", help="only these seeds")
    r.add_argument("--launcher", default=None, help="a Hydra launcher (joblib, submitit_slurm, submitit_local, "
                                                    "ray...); default: joblib when -j > 1, else in this process")
    r.add_argument("--hydra", action="append", default=[], metavar="OVERRIDE",
                   help="extra Hydra override for the multirun, e.g. hydra.launcher.partition=cpu (repeatable)")
    r.add_argument("--batch-seeds", action="store_true",
                   help="train the seeds of a cell together in one process, as one stacked model, where the method "
                        "allows it (fine-tuning and ER on an MLP, on CPU; numbers identical to separate runs); "
                        "other cells run their seeds separately and say why")
    r.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")

    b = sub.add_parser("build", help="regenerate leaderboard/ from the runs")
    b.add_argument("suites", nargs="*", help="suite files (default: experiments/*.yaml)")
    b.add_argument("--runs", default="leaderboard/runs", help="folder of the runs (default: leaderboard/runs)")
    b.add_argument("--out", default="leaderboard", help="output folder (default: leaderboard)")
    b.add_argument("--strict", action="store_true",
                   help="fail (exit 1, nothing written) when any run is left out: unreadable or truncated "
                        "results.json, numbers that do not match their digest, partial, stale, or no such cell")

    d = sub.add_parser("digest", help="add the digest of its numbers to every results.json that has none "
                                      "(runs written before digests existed; numbers unchanged)")
    d.add_argument("runs", nargs="?", default="leaderboard/runs", help="folder of the runs (default: leaderboard/runs)")

    c = sub.add_parser("check", help="re-run committed cells and compare within a two-sided tolerance")
    c.add_argument("suite", help="experiments/<suite>.yaml")
    _add_common(c)
    c.add_argument("--cells", nargs="+", required=True, metavar="ID", help="cell ids, e.g. er-b500 derpp-b500")
    c.add_argument("--seeds", nargs="+", type=int, metavar="K", help="seeds (default: all committed)")
    c.add_argument("--tolerance", type=float, required=True, metavar="PP",
                   help="allowed difference in percentage points, in either direction")
    c.add_argument("--workdir", default=None, help="re-run here instead of a temporary folder (kept)")

    w = sub.add_parser("sweep", help="table of mean +- std over seeds per configuration, from any folder of runs")
    w.add_argument("folders", nargs="+", help="folders holding runs (a multirun folder, outputs/, ...)")

    v = sub.add_parser("validate", help="check suite files: schema, and that every cell composes and passes a run's "
                                        "configuration checks (not the device's)")
    v.add_argument("suites", nargs="+")
    v.add_argument("--no-compose", action="store_true", help="check the schema only")
    return ap


def _default_suites() -> list[Path]:
    found = sorted(Path("experiments").glob("*.yaml"))
    if not found:
        raise SuiteError("no suites given and none found in experiments/*.yaml")
    return found


def cmd_run(args) -> int:
    from .runs import job_entry, launch, plan, run_status, warm_data

    suite = load_suite(args.suite)
    planned = plan(suite, args.runs, args.data_root, only=args.only, cells=args.cells, seeds=args.seeds)
    counts = Counter(p.status for p in planned)
    todo = [p for p in planned if p.status != "done"]
    print(f"{suite.name}: {len(planned)} runs selected: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + f"; {len(todo)} to run")
    if args.dry_run:
        for p in planned:
            print(f"  {p.status:8} {p.key:32} {p.hash}  {p.run_dir}")
        return 0
    if not todo:
        return 0
    command = "clzoo-leaderboard " + " ".join(shlex.quote(a) for a in args.argv)
    threads = args.threads or 1
    entries = [job_entry(p, threads, args.device, command) for p in todo]
    if args.batch_seeds:
        from .runs import group_by_cell

        entries = group_by_cell(entries)
    warm_data(todo)
    launch(entries, args.jobs, args.launcher, args.hydra)
    after = Counter(run_status(p.run_dir, p.hash) for p in todo)
    failed = [p for p in todo if (p.run_dir / "error.txt").is_file()]
    print(f"{suite.name}: {after.get('done', 0)} of {len(todo)} runs complete"
          + (f"; {len(failed)} failed:" if failed else ""))
    for p in failed:
        first = (p.run_dir / "error.txt").read_text().splitlines()[0]
        print(f"  {p.key}: {first}  ({p.run_dir / 'error.txt'})")
    return 0 if after.get("done", 0) == len(todo) else 1


def cmd_build(args) -> int:
    from .build import RunsLeftOutError, build

    suites = args.suites or _default_suites()
    try:
        build(suites, args.runs, args.out, strict=args.strict)
    except RunsLeftOutError as err:
        print(f"clzoo-leaderboard: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/README.md, results.csv, summary.csv, index.html, plots/")
    return 0


def cmd_digest(args) -> int:
    from .runs import add_digests

    if not Path(args.runs).is_dir():
        raise SuiteError(f"no runs folder {args.runs}")
    return 1 if add_digests(args.runs)[2] else 0


def cmd_check(args) -> int:
    from .check import check

    suite = load_suite(args.suite)
    ok = check(suite, args.cells, args.tolerance, args.seeds, args.runs, args.data_root, args.jobs, args.threads,
               args.device, args.workdir)
    return 0 if ok else 1


def cmd_validate(args) -> int:
    from ..config import ConfigError, validate
    from .suite import compose_cell

    status = 0
    for path in args.suites:
        try:
            suite = load_suite(path)
        except SuiteError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 2
            continue
        errors = []
        if not args.no_compose:
            for cell in suite.cells:
                try:  # composed and checked as a run checks it (method arguments, trainer, budget), not the device
                    validate(compose_cell(suite, cell, suite.seeds[0]), here=False)
                except SuiteError as err:
                    errors.append(str(err))
                except ConfigError as err:
                    errors.append(f"{path}: cell {cell.id}: {err}")
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        status = max(status, 2 if errors else 0)
        print(f"{path}: {len(suite.cells)} cells x {len(suite.seeds)} seeds = {len(suite.cells) * len(suite.seeds)} "
              f"runs" + (f"; {len(errors)} cell(s) do not compose or fail the checks" if errors else "; ok"))
    return status


def cmd_sweep(args) -> int:
    from .sweep import write_summary

    found = [write_summary(folder) for folder in args.folders]
    return 0 if all(found) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        return {"run": cmd_run, "build": cmd_build, "digest": cmd_digest, "check": cmd_check,
                "validate": cmd_validate, "sweep": cmd_sweep}[args.command](args)
    except SuiteError as err:
        print(f"clzoo-leaderboard: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
