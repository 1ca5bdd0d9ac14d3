"""The table at the end of a sweep: mean +- std over seeds per configuration, from any folder of runs.

``clzoo-run -m method=er,der budget.mb=0.25,0.5 seed=0,1,2`` ends by printing it and writing
``sweep_summary.md`` and ``sweep_summary.csv`` into the sweep folder (the Hydra callback :class:`SweepTable`,
configured in ``clzoo/conf/config.yaml``); ``clzoo-leaderboard sweep FOLDER`` builds the same from any folder
holding runs (a multirun folder, ``outputs/``, a leaderboard's runs).

A *configuration* is what the runs' resolved configs share apart from the seed and the settings that do not
change what a run computes (where data lives, logging, device, threads). The table names each configuration by
the keys that differ between them: a config group's choice (``method=der``) stands for the keys under it.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .build import mean_std

#: keys (and key prefixes) that do not make two runs different configurations
IGNORED = ("seed", "resume", "log", "data", "hydra", "trainer.device", "trainer.num_threads", "trainer.log_every",
           "trainer.eval_batch_size", "trainer.max_tasks")
MB = 2**20


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, (list, dict)) else node}


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in IGNORED)


@dataclass
class SweepRun:
    folder: Path
    results: dict

    @property
    def flat(self) -> dict:
        cfg = dict(self.results.get("config") or {})
        choices = cfg.pop("_choices", None) or {}
        flat = {k: v for k, v in _flatten(cfg).items() if not _ignored(k)}
        flat.update({f"={g}": v for g, v in choices.items() if g in ("stream", "method", "model")})
        return flat

    def value(self, key: str) -> float:
        m = self.results.get("metrics") or {}
        v = m.get(key)
        return math.nan if v is None else 100.0 * v


@dataclass
class ConfigRow:
    label: dict
    runs: list[SweepRun] = field(default_factory=list)


def find_runs(folder: str | Path) -> tuple[list[SweepRun], list[tuple[Path, str]]]:
    """Every run under ``folder`` (a ``results.json``), and every failed run (a ``status.json`` saying so)."""
    folder = Path(folder)
    runs, failed = [], []
    for path in sorted(folder.rglob("results.json")):
        try:
            runs.append(SweepRun(path.parent, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            failed.append((path.parent, "unreadable results.json"))
    done = {r.folder for r in runs}
    for path in sorted(folder.rglob("status.json")):
        if path.parent in done:
            continue
        try:
            status = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if status.get("status") in ("failed", "interrupted"):
            failed.append((path.parent, status.get("error", status["status"])))
    return runs, failed


def group(runs: list[SweepRun]) -> tuple[list[str], list[ConfigRow]]:
    """Group runs by configuration; returns the keys that tell configurations apart and the groups."""
    flats = [r.flat for r in runs]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
    # a varying group choice (=method) stands for the keys under that group (method.alpha ...)
    chosen = [k[1:] for k in varying if k.startswith("=")]
    shown = [k for k in varying if k.startswith("=")] + [
        k for k in varying if not k.startswith("=") and not any(k.startswith(g + ".") for g in chosen)]
    if not shown:
        shown = ["=method", "=stream"]
    rows: dict[str, ConfigRow] = {}
    for run, flat in zip(runs, flats):
        ident = json.dumps({k: flat.get(k) for k in keys if k in varying}, sort_keys=True, default=str)
        row = rows.setdefault(ident, ConfigRow({k: flat.get(k) for k in shown}))
        row.runs.append(run)
    return [k.lstrip("=") for k in shown], list(rows.values())


def _pm(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    m, s = mean_std(values)
    return f"{m:.2f} +- {s:.2f}" if len(values) > 1 else f"{m:.2f}"


def table(folder: str | Path) -> tuple[list[str], list[list[str]], list[tuple[Path, str]]]:
    """Header and rows of the sweep table (accuracies in %, memory in MB), and the failed runs."""
    runs, failed = find_runs(folder)
    if not runs:
        return [], [], failed
    shown, rows = group(runs)
    headers = shown + ["seeds", "view", "final acc", "avg inc acc", "forgetting", "other view: final acc",
                       "memory MB", "status"]
    out = []
    for row in rows:
        scen = {r.results.get("stream", {}).get("scenario", "class_il") for r in row.runs}
        til = scen == {"task_il"}
        view = "task-IL" if til else ("domain-IL" if scen == {"domain_il"} else "class-IL")
        head, other = ("_task_il", "") if til else ("", "_task_il")
        seeds = sorted({r.results.get("seed") for r in row.runs}, key=str)
        statuses = {}
        for r in row.runs:
            statuses[r.results.get("status", "?")] = statuses.get(r.results.get("status", "?"), 0) + 1
        mem = [r.results["memory"]["total_bytes"] / MB for r in row.runs]
        out.append([_cell(row.label.get(k if k in row.label else "=" + k)) for k in
                    [k if not (("=" + k) in row.label) else "=" + k for k in shown]]
                   + [",".join(str(s) for s in seeds), view,
                      _pm([r.value("final_acc" + head) for r in row.runs]),
                      _pm([r.value("avg_incremental_acc" + head) for r in row.runs]),
                      _pm([r.value("forgetting" + head) for r in row.runs]),
                      _pm([r.value("final_acc" + other) for r in row.runs]),
                      f"{sum(mem) / len(mem):.3f}",
                      ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))])
    return headers, out, failed


def _cell(value) -> str:
    return "" if value is None else str(value)


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def write_summary(folder: str | Path, echo=print) -> Path | None:
    """Print the sweep table and write ``sweep_summary.md`` / ``sweep_summary.csv`` into ``folder``."""
    folder = Path(folder)
    headers, rows, failed = table(folder)
    if not rows and not failed:
        echo(f"{folder}: no runs (results.json) found")
        return None
    notes = [f"failed: {p.relative_to(folder) if p.is_relative_to(folder) else p}: {why}" for p, why in failed]
    if rows:
        echo(f"\nsweep summary ({sum(1 for _ in rows)} configurations; mean +- std over seeds; accuracies in %, "
             f"headline view per scenario; memory = bytes kept, MB):\n" + text_table(headers, rows))
    for note in notes:
        echo(note)
    md = (f"# Sweep summary: {folder}\n\nMean +- sample std over seeds; accuracies in %; `view` is the headline "
          f"view of the scenario; memory is what the method keeps (results.json memory.total_bytes) in MB.\n\n"
          + (markdown(headers, rows) if rows else "No completed run.") + "\n"
          + ("".join(f"\n- {n}" for n in notes) + "\n" if notes else ""))
    (folder / "sweep_summary.md").write_text(md)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(headers)
    w.writerows(rows)
    (folder / "sweep_summary.csv").write_text(buf.getvalue())
    echo(f"sweep summary: {folder / 'sweep_summary.md'}, {folder / 'sweep_summary.csv'}")
    return folder / "sweep_summary.md"


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object


class SweepTable(Callback):
    """Hydra callback: after a multirun, :func:`write_summary` over the sweep folder."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            write_summary(Path(config.hydra.sweep.dir))
        except Exception as err:  # never turn a finished sweep into a failure
            print(f"sweep summary failed: {type(err).__name__}: {err}")
