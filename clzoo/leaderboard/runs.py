"""Planning and executing a suite's runs.

Every cell x seed has a fixed folder ``<runs>/<suite>/<cell-id>/seed<k>/``. A run whose ``results.json`` is
complete and whose configuration hash equals the one the suite gives now is *done* and skipped; any other is
(re-)run. Runs execute one per process through a Hydra multirun of :mod:`clzoo.leaderboard.job`, so any Hydra
launcher works: joblib locally (``-j N``), submitit on Slurm (``--launcher submitit_slurm``); ``-j 1`` without
a launcher runs them one after the other in this process.

After a run completes, its checkpoints are deleted; what stays (``results.json``, ``metrics.csv``,
``run.log``) is small, and ``leaderboard/runs/.gitignore`` keeps only results.json and metrics.csv in git.
``results.json`` gets a ``leaderboard`` entry: suite, cell, the hash (:func:`~clzoo.leaderboard.suite.config_hash`),
threads, device and the command that ran it, and ``numbers_digest``: the SHA-256 of its numbers and configuration
(:func:`numbers_digest`), which ``clzoo-leaderboard build`` verifies, so an edited or damaged file is left out.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..engine.checkpoint import atomic_write_text
from .suite import Cell, Suite, SuiteError, compose_cell, config_hash, with_seed

DEFAULT_RUNS = Path("leaderboard") / "runs"
KEEP = ("results.json", "metrics.csv", "run.log")


@dataclass
class PlannedRun:
    suite: Suite
    cell: Cell
    seed: int
    run_dir: Path
    config: dict
    hash: str
    status: str  # done | pending (no results) | partial | stale (other configuration) | failed (error.txt)
    #              | damaged (results.json unreadable, or its numbers do not match their digest)

    @property
    def key(self) -> str:
        return f"{self.cell.id}/seed{self.seed}"


def run_dir_of(runs_root: str | Path, suite: Suite, cell: Cell, seed: int) -> Path:
    return Path(runs_root) / suite.name / cell.id / f"seed{seed}"


#: what ``numbers_digest`` covers: every number the leaderboard shows or could show, and what produced them
DIGEST_FIELDS = ("config", "seed", "status", "completed_tasks", "acc_matrix", "acc_matrix_task_il", "acc_init",
                 "acc_init_task_il", "metrics", "memory", "time")
DIGEST_KEY = "numbers_digest"


def numbers_digest(results: dict) -> str:
    """``sha256:<hex>`` of the :data:`DIGEST_FIELDS` of a results dict, as canonical JSON (sorted keys; floats
    written as Python's shortest round-trip repr, so reading and rewriting the file keeps the digest)."""
    numbers = {k: results.get(k) for k in DIGEST_FIELDS}
    text = json.dumps(numbers, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def digest_problem(results: dict) -> str | None:
    """Why the run's numbers cannot be trusted (no digest, or one that does not match them), else None."""
    stored = results.get(DIGEST_KEY)
    if not stored:
        return ("its results.json has no digest of its numbers (written before digests existed: add one with "
                "clzoo-leaderboard digest RUNS_FOLDER)")
    if stored != numbers_digest(results):
        return "its numbers do not match their digest (the file was edited or damaged); re-run it"
    return None


def load_results(run_dir: Path) -> tuple[dict | None, str | None]:
    """``(results, None)``; ``(None, None)`` when the run has no results.json; ``(None, reason)`` when it has one
    that cannot be read (truncated, damaged, unreadable)."""
    path = Path(run_dir) / "results.json"
    if not path.exists():
        return None, None
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, f"its results.json cannot be read ({err.strerror or err})"
    try:
        results = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, f"its results.json is not UTF-8 text ({len(raw):,} bytes, damaged); re-run it"
    except json.JSONDecodeError as err:
        return None, (f"its results.json is not valid JSON ({len(raw):,} bytes; {err.msg} at line {err.lineno}, "
                      f"column {err.colno}: truncated or damaged); re-run it")
    if not isinstance(results, dict):
        return None, f"its results.json holds a JSON {type(results).__name__}, not a run's results; re-run it"
    return results, None


def read_results(run_dir: Path) -> dict | None:
    """The run's results, or None when it has none or they cannot be read (see :func:`load_results`)."""
    return load_results(run_dir)[0]


def run_status(run_dir: Path, expected_hash: str) -> str:
    results, problem = load_results(run_dir)
    if problem is not None:
        return "damaged"
    if results is not None:
        if config_hash(results.get("config", {})) != expected_hash:
            return "stale"
        if results.get(DIGEST_KEY) and results[DIGEST_KEY] != numbers_digest(results):
            return "damaged"
        return "done" if results.get("status") == "complete" else "partial"
    if (Path(run_dir) / "error.txt").is_file():
        return "failed"
    return "pending"


def plan(suite: Suite, runs_root: str | Path = DEFAULT_RUNS, data_root: str | None = None,
         only: list[str] | None = None, cells: list[str] | None = None, seeds: list[int] | None = None) -> list[PlannedRun]:
    """Every run of the selected cells and seeds, with its configuration and status."""
    if seeds:
        missing = [s for s in seeds if s not in suite.seeds]
        if missing:
            raise SuiteError(f"{suite.path}: seed(s) {missing} are not among the suite's seeds {suite.seeds}")
    planned = []
    for cell in suite.select(only, cells):
        base = compose_cell(suite, cell, suite.seeds[0], data_root)
        for seed in seeds or suite.seeds:
            cfg = with_seed(base, seed)
            h = config_hash(cfg)
            rd = run_dir_of(runs_root, suite, cell, seed)
            planned.append(PlannedRun(suite, cell, seed, rd, cfg, h, run_status(rd, h)))
    return planned


def cell_command(suite: Suite, cell: Cell, seed: int | None = None) -> str:
    """The clzoo-run command that computes one run of ``cell`` (add data.root=... for real datasets)."""
    seed = suite.seeds[0] if seed is None else seed
    return "clzoo-run " + " ".join(shlex.quote(o) for o in suite.overrides(cell, seed))


# ------------------------------------------------------------------------------------------- execution
def job_entry(p: PlannedRun, threads: int | None, device: str | None, command: str) -> dict:
    """What one job needs (JSON-serialisable): the configuration, where to write, how to execute."""
    return {"suite": p.suite.name, "cell": p.cell.id, "seed": p.seed, "run_dir": str(p.run_dir.resolve()),
            "config": p.config, "hash": p.hash, "fresh": p.status in ("stale", "failed", "damaged"), "threads": threads,
            "device": device, "command": command}


def _clear(run_dir: Path) -> None:
    from ..engine.lock import LOCK_NAME

    if run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.name != LOCK_NAME:  # held by this job: removing it would let another take the folder
                shutil.rmtree(child) if child.is_dir() else child.unlink()


def execute(entry: dict, echo=None) -> dict:
    """Run one job into its folder, holding the folder's lock; never raises (a failure leaves ``error.txt``,
    except when another process holds the folder: then nothing there is touched). Returns a short summary.
    A group entry (``--batch-seeds``, :func:`group_by_cell`) runs its seeds together; its summary lists theirs."""
    from ..engine.lock import RunDirBusyError, run_dir_lock

    if "group" in entry:
        runs = execute_group(entry["group"], echo)
        failed = [r for r in runs if r["status"] == "failed"]
        return {"label": f"{entry['suite']}/{entry['cell']}", "status": "failed" if failed else "complete",
                "runs": runs, "seconds": max(r["seconds"] for r in runs)}

    try:
        with run_dir_lock(entry["run_dir"]):
            return _execute(entry, echo)
    except RunDirBusyError as err:
        label = f"{entry['suite']}/{entry['cell']}/seed{entry['seed']}"
        _echo(echo, f"FAILED {label}: {err}")
        return {"label": label, "status": "failed", "error": f"{type(err).__name__}: {err}", "seconds": 0.0}


def _prepare(entry: dict) -> tuple[Path, dict, int | None, str]:
    """Clear a fresh run's folder, and the configuration it runs with: (folder, config, threads, label)."""
    import torch

    run_dir = Path(entry["run_dir"])
    if entry.get("fresh"):
        _clear(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").unlink(missing_ok=True)
    cfg = json.loads(json.dumps(entry["config"]))
    cfg["log"] = {**(cfg.get("log") or {}), "tensorboard": False, "plots": False, "progress": False,
                  "keep_checkpoints": 1}
    if entry.get("device"):
        cfg["trainer"]["device"] = entry["device"]
    threads = entry.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
        cfg["trainer"]["num_threads"] = int(threads)
    return run_dir, cfg, threads, f"{entry['suite']}/{entry['cell']}/seed{entry['seed']}"


def _log_header(log, entry: dict) -> None:
    # the process id shows which runs shared a worker process (the joblib launcher reuses its workers)
    print(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} {entry['command']}", file=log, flush=True)


def _failed(run_dir: Path, label: str, err: BaseException, started: float, echo) -> dict:
    from ..engine.checkpoint import atomic_write_text

    text = "".join(traceback.format_exception(err))
    atomic_write_text(run_dir / "error.txt", f"{type(err).__name__}: {err}\n\n{text}")
    summary = {"label": label, "status": "failed", "error": f"{type(err).__name__}: {err}",
               "seconds": time.perf_counter() - started}
    _echo(echo, f"FAILED {label}: {summary['error']} (see {run_dir / 'error.txt'})")
    return summary


def _record(entry: dict, run_dir: Path, cfg: dict, threads, label: str, results: dict, started: float, echo,
            batched_seeds: list[int] | None = None) -> dict:
    """Write the run's results.json with its leaderboard entry and digest; drop its checkpoints when complete."""
    import torch

    from ..engine.runner import resolve_device

    results["leaderboard"] = {"suite": entry["suite"], "cell": entry["cell"], "config_hash": entry["hash"],
                              "threads": threads or torch.get_num_threads(),
                              "device": str(resolve_device(cfg["trainer"].get("device", "auto"))),
                              "command": entry["command"],
                              # trained together with these seeds (clzoo.engine.seed_group; identical numbers)
                              **({"batched_seeds": batched_seeds} if batched_seeds else {})}
    results[DIGEST_KEY] = numbers_digest(results)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    if results.get("status") == "complete":
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    m = results["metrics"]
    summary = {"label": label, "status": results.get("status"), "seconds": time.perf_counter() - started,
               "final_acc": m["final_acc"], "final_acc_task_il": m["final_acc_task_il"]}
    _echo(echo, f"done {label}: final accuracy {100 * m['final_acc']:.2f}% class-IL, "
                f"{100 * m['final_acc_task_il']:.2f}% task-IL ({summary['seconds']:.1f} s)"
                + (f" [seeds {batched_seeds} batched]" if batched_seeds else ""))
    return summary


def _execute(entry: dict, echo=None) -> dict:
    from ..engine.checkpoint import latest_checkpoint
    from ..engine.runner import ResumeError, run

    run_dir, cfg, threads, label = _prepare(entry)
    started = time.perf_counter()
    with open(run_dir / "run.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        _log_header(log, entry)
        try:
            cfg["resume"] = latest_checkpoint(run_dir) is not None  # an interrupted run continues
            try:
                results = run(cfg, run_dir, show_progress=False)
            except ResumeError as err:
                print(f"cannot resume ({err}); starting again", flush=True)
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                cfg["resume"] = False
                results = run(cfg, run_dir, show_progress=False)
        except Exception as err:  # noqa: BLE001 - recorded, reported by the caller; other runs go on
            traceback.print_exc(file=log)
            return _failed(run_dir, label, err, started, echo)
    return _record(entry, run_dir, cfg, threads, label, results, started, echo)


# ------------------------------------------------------------------------------------------- batched seeds
def group_by_cell(entries: list[dict]) -> list[dict]:
    """``--batch-seeds``: the entries with the runs of each cell that can be batched
    (:func:`clzoo.engine.seed_group.why_not_batched`) and start from scratch gathered into one group entry
    ``{"group": [...]}``; every other run stays an entry of its own (a cell that cannot be batched says why)."""
    from ..engine.seed_group import why_not_batched

    out, cells, said = [], {}, set()
    for e in entries:
        cells.setdefault((e["suite"], e["cell"]), []).append(e)
    for (suite, cell), members in cells.items():
        reason = why_not_batched(members[0]["config"]) if len(members) > 1 else "one seed to run"
        resumable = [e for e in members if not e.get("fresh") and _has_checkpoint(e)]
        fresh = [e for e in members if e not in resumable]
        if reason is None and len(fresh) > 1:
            out.append({"group": fresh, "suite": suite, "cell": cell})
            out.extend(resumable)
        else:
            if reason and reason != "one seed to run" and (suite, cell) not in said:
                said.add((suite, cell))
                _echo(None, f"{suite}/{cell}: seeds run separately: {reason}")
            out.extend(members)
    return out


def _has_checkpoint(entry: dict) -> bool:
    from ..engine.checkpoint import latest_checkpoint

    return Path(entry["run_dir"]).is_dir() and latest_checkpoint(Path(entry["run_dir"])) is not None


def execute_group(entries: list[dict], echo=None) -> list[dict]:
    """Run the seeds ``entries`` of one cell together (:func:`clzoo.engine.seed_group.run_seed_group`), each into
    its own folder with its own run.log, results.json and digest, as :func:`execute` writes them."""
    from ..engine.lock import RunDirBusyError, run_dir_lock
    from ..engine.seed_group import run_seed_group

    with contextlib.ExitStack() as stack:
        try:
            for e in entries:
                stack.enter_context(run_dir_lock(e["run_dir"]))
        except RunDirBusyError:  # another process holds one of them: each seed on its own, as without grouping
            stack.close()
            return [execute(e, echo) for e in entries]
        prepared = [_prepare(e) for e in entries]
        logs = [stack.enter_context(open(run_dir / "run.log", "a")) for run_dir, *_ in prepared]
        for log, e in zip(logs, entries):
            _log_header(log, e)
        seeds = [int(e["seed"]) for e in entries]
        started = time.perf_counter()
        cfgs = [{**cfg, "resume": False} for _, cfg, _, _ in prepared]
        with contextlib.redirect_stderr(logs[0]):
            outcomes = run_seed_group(cfgs, [run_dir for run_dir, *_ in prepared], logs)
        summaries = []
        for e, (run_dir, cfg, threads, label), log, got in zip(entries, prepared, logs, outcomes):
            if isinstance(got, BaseException):
                traceback.print_exception(got, file=log)
                summaries.append(_failed(run_dir, label, got, started, echo))
            else:
                summaries.append(_record(e, run_dir, cfg, threads, label, got, started, echo, seeds))
        return summaries


def _echo(echo, line: str) -> None:
    (echo or (lambda s: print(s, file=sys.__stderr__, flush=True)))(line)


def launch(entries: list[dict], n_jobs: int = 1, launcher: str | None = None, hydra_overrides: list[str] = (),
           launch_dir: str | Path | None = None, echo=None) -> None:
    """Execute ``entries``: in this process (``n_jobs == 1`` and no launcher) or as a Hydra multirun of
    :mod:`clzoo.leaderboard.job` with ``hydra/launcher=<launcher>`` (joblib when ``n_jobs > 1``)."""
    if not entries:
        return
    if n_jobs <= 1 and not launcher and not hydra_overrides:
        for entry in entries:
            execute(entry, echo)
        return
    launcher = launcher or "joblib"
    first = entries[0]["group"][0] if "group" in entries[0] else entries[0]
    launch_dir = Path(launch_dir or Path(first["run_dir"]).parents[1] / "_launch" / time.strftime("%Y%m%d-%H%M%S"))
    launch_dir = launch_dir.resolve()
    launch_dir.mkdir(parents=True, exist_ok=True)
    plan_path = launch_dir / "plan.json"
    plan_path.write_text(json.dumps({"jobs": entries}))
    cmd = [sys.executable, "-m", "clzoo.leaderboard.job", "--multirun", f"plan={plan_path}",
           f"job=range(0,{len(entries)})", f"hydra.sweep.dir={launch_dir}", "hydra.sweep.subdir=${hydra.job.num}",
           f"hydra/launcher={launcher}"]
    if launcher == "joblib":
        cmd.append(f"hydra.launcher.n_jobs={max(n_jobs, 1)}")
    cmd += list(hydra_overrides)
    _echo(echo, f"launching {len(entries)} runs: {' '.join(shlex.quote(c) for c in cmd)}")
    env = dict(os.environ)
    env.setdefault("MPLBACKEND", "Agg")
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the Hydra multirun exited with status {proc.returncode}; its logs are in {launch_dir}")


def warm_data(planned: list[PlannedRun]) -> None:
    """Load each dataset once before parallel jobs start, so they do not race to write the decoded cache."""
    from ..data.sources import load_source

    seen = set()
    for p in planned:
        s, d = p.config["stream"], p.config.get("data", {})
        key = (s["dataset"], str(d.get("root")), str(s.get("path")))
        if key not in seen:
            seen.add(key)
            load_source(s["dataset"], d.get("root"), bool(d.get("download", False)), s.get("path"))


def add_digests(runs_root: str | Path, echo=print) -> tuple[int, int, list[str]]:
    """Add ``numbers_digest`` to every ``results.json`` under ``runs_root`` that has none, computed from the file
    as it is (its numbers are not changed: the rewritten file is checked to load back to the same dict plus the
    digest). Returns (added, already there, problems: unreadable files or digests that do not match)."""
    added, present, problems = 0, 0, []
    for path in sorted(Path(runs_root).rglob("results.json")):
        results, problem = load_results(path.parent)
        if problem:
            problems.append(f"{path}: {problem}")
            continue
        if results.get(DIGEST_KEY):
            present += 1
            if results[DIGEST_KEY] != numbers_digest(results):
                problems.append(f"{path}: its numbers do not match their digest (left as it is)")
            continue
        updated = {**results, DIGEST_KEY: numbers_digest(results)}
        new_text = json.dumps(updated, indent=1)  # as clzoo-leaderboard run writes it
        back = json.loads(new_text)
        back.pop(DIGEST_KEY)
        if json.dumps(back, sort_keys=True) != json.dumps(results, sort_keys=True):  # text: NaN-safe, exact floats
            problems.append(f"{path}: rewriting would change it; left as it is")
            continue
        atomic_write_text(path, new_text)
        added += 1
    echo(f"{runs_root}: digest added to {added} results.json, {present} had one"
         + (f"; {len(problems)} problem(s)" if problems else ""))
    for p in problems:
        echo(f"  {p}")
    return added, present, problems
