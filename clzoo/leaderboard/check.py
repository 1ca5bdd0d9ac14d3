"""``clzoo-leaderboard check``: re-run committed cells into a temporary folder and compare, two-sided.

A re-run number that lands more than ``tolerance`` percentage points away from the committed one, above as well as
below, fails the check: a method that suddenly does better than its committed result has changed too. The memory
a run keeps is deterministic and must match to the byte. A cell whose configuration hash is no longer the committed
one fails as well: the suite or a method's defaults changed, so the committed numbers are stale.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .runs import DEFAULT_RUNS, job_entry, launch, plan, read_results, run_dir_of, warm_data
from .suite import Suite, SuiteError, config_hash

CHECK_METRICS = ("final_acc", "final_acc_task_il", "avg_incremental_acc", "avg_incremental_acc_task_il",
                 "forgetting", "forgetting_task_il")


@dataclass
class Comparison:
    run: str
    metric: str
    committed: float | None
    new: float | None
    tolerance: float  # in the metric's unit (pp for accuracies, bytes for memory)
    unit: str = "pp"

    @property
    def diff(self) -> float | None:
        if self.committed is None or self.new is None:
            return None
        return self.new - self.committed

    @property
    def ok(self) -> bool:
        if self.committed is None and self.new is None:
            return True
        if self.diff is None or math.isnan(self.diff):
            return False
        return abs(self.diff) <= self.tolerance + 1e-9

    def describe(self) -> str:
        if self.diff is None:
            return f"{self.run} {self.metric}: committed {self.committed}, re-run {self.new}"
        fmt = (lambda v: f"{v:.2f}") if self.unit == "pp" else (lambda v: f"{v:,.0f}")
        where = ("above" if self.diff > 0 else "below") if not self.ok else "within"
        tol = f"{self.tolerance:g} {self.unit}" if self.unit == "pp" else "exact match"
        return (f"{self.run} {self.metric}: committed {fmt(self.committed)}, re-run {fmt(self.new)} "
                f"({self.diff:+.2f} {self.unit}, {where} the tolerance: {tol})" if self.unit == "pp" else
                f"{self.run} {self.metric}: committed {fmt(self.committed)}, re-run {fmt(self.new)} bytes ({where}, "
                f"{tol})")


def compare(committed: dict, new: dict, tolerance: float, run: str = "") -> list[Comparison]:
    """Compare two results.json dicts: every metric of :data:`CHECK_METRICS` in percentage points within
    ``tolerance`` (both directions) and the memory kept, exactly."""
    out = []
    for key in CHECK_METRICS:
        a, b = committed["metrics"].get(key), new["metrics"].get(key)
        out.append(Comparison(run, key, None if a is None else 100 * a, None if b is None else 100 * b, tolerance))
    out.append(Comparison(run, "memory.total_bytes", committed["memory"]["total_bytes"], new["memory"]["total_bytes"],
                          0, "bytes"))
    return out


def check(suite: Suite, cells: list[str], tolerance: float, seeds: list[int] | None = None,
          runs_root: str | Path = DEFAULT_RUNS, data_root: str | None = None, n_jobs: int = 1,
          threads: int | None = None, device: str | None = None, workdir: str | Path | None = None,
          echo=print) -> bool:
    """Re-run ``cells`` x ``seeds`` (default: the seeds with committed results) and compare; True when all pass.

    Raises :class:`SuiteError` when a named cell does not exist or has no committed result to compare with.
    """
    if tolerance < 0:
        raise SuiteError("--tolerance must be >= 0 (percentage points)")
    for cid in cells:
        suite.cell(cid)
    committed = {}
    for cid in cells:
        cell = suite.cell(cid)
        for seed in seeds or suite.seeds:
            r = read_results(run_dir_of(runs_root, suite, cell, seed))
            if r is not None and r.get("status") == "complete":
                committed[(cid, seed)] = r
            elif seeds:
                raise SuiteError(f"{cid}/seed{seed}: no complete committed result under "
                                 f"{run_dir_of(runs_root, suite, cell, seed)}; run `clzoo-leaderboard run "
                                 f"{suite.path} --cells {cid}` first")
        if not any(k[0] == cid for k in committed):
            raise SuiteError(f"{cid}: no committed result under {Path(runs_root) / suite.name / cid}; run "
                             f"`clzoo-leaderboard run {suite.path} --cells {cid}` first")
    tmp = tempfile.TemporaryDirectory(prefix="clzoo-check-") if workdir is None else None
    root = Path(workdir or tmp.name)
    ok = True
    try:
        todo = [p for p in plan(suite, root, data_root, cells=cells, seeds=sorted({s for _, s in committed}))
                if (p.cell.id, p.seed) in committed]
        entries = []
        for p in todo:
            old = committed[(p.cell.id, p.seed)]
            old_hash = config_hash(old.get("config", {}))
            if old_hash != p.hash:
                ok = False
                echo(f"FAIL {p.key}: the committed run has configuration hash {old_hash}, the suite now gives "
                     f"{p.hash} (the suite or a method's defaults changed): re-run the cell with `clzoo-leaderboard "
                     f"run {suite.path} --cells {p.cell.id}` and commit the new results")
                continue
            t = threads or (old.get("leaderboard") or {}).get("threads") or 1
            entries.append(job_entry(p, t, device, f"clzoo-leaderboard check {suite.path} --cells {p.cell.id}"))
        warm_data(todo)
        launch(entries, n_jobs, echo=echo)
        for p in todo:
            if not any(e["run_dir"] == str(p.run_dir.resolve()) for e in entries):
                continue
            new = read_results(p.run_dir)
            if new is None or new.get("status") != "complete":
                ok = False
                err = (p.run_dir / "error.txt")
                echo(f"FAIL {p.key}: the re-run did not complete"
                     + (f": {err.read_text().splitlines()[0]}" if err.is_file() else ""))
                continue
            for c in compare(committed[(p.cell.id, p.seed)], new, tolerance, p.key):
                if c.ok:
                    echo(f"ok   {c.describe()}")
                else:
                    ok = False
                    echo(f"FAIL {c.describe()}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    echo(("check passed" if ok else "check FAILED") + f": {len(committed)} run(s) of {', '.join(cells)}, "
         f"tolerance {tolerance:g} pp")
    return ok
