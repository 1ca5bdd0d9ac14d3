"""``clzoo-leaderboard build``: the runs of every suite -> ``leaderboard/`` (README.md, results.csv,
summary.csv, plots/, index.html).

Numbers are in %, mean +- sample standard deviation (n - 1) over the seeds that have a complete run whose
configuration hash equals the one the suite gives now (other runs are *stale* and left out, with a warning), and
whose numbers match the digest stored with them (a results.json that cannot be read, or whose numbers were edited,
is left out and listed under "Runs left out" with the reason; ``build --strict`` fails on any run left out).
Memory is what a method keeps between tasks besides the model itself (total ledger bytes minus the backbone and
heads categories, and a hypernetwork's generator), in MB = 2^20 bytes. The area under the accuracy-versus-memory curve uses the trapezoid rule
over MB (:func:`auc_trapezoid`).
"""
from __future__ import annotations

import csv
import html
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.checkpoint import atomic_write_text
from .runs import DEFAULT_RUNS, cell_command, digest_problem, load_results, run_dir_of
from ..memory.ledger import MB, MODEL_CATEGORIES
from .suite import (SETTING_LABELS, SETTINGS, Cell, Suite, SuiteError, compose_cell, config_hash, suite_hash,
                    with_seed)



# ---------------------------------------------------------------------------------------------- numbers
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def auc_trapezoid(xs: list[float], ys: list[float]) -> float | None:
    """Area under the curve through the points (x, y), sorted by x, by the trapezoid rule; None below 2 points.
    With x in MB and y in %, the area is in %·MB."""
    pts = sorted(zip(xs, ys))
    if len(pts) < 2:
        return None
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))


def extra_bytes(results: dict) -> int:
    """Bytes kept between tasks besides the model: the ledger total minus its backbone, heads and generator."""
    cats = results["memory"]["by_category"]
    return sum(v for k, v in cats.items() if k not in MODEL_CATEGORIES)


def run_values(results: dict, settings: list[str], input_bytes: int | None,
               memory_axis: str = "besides_model") -> dict[str, float]:
    """The numbers of one run that the tables aggregate (accuracies in %). ``memory_mb`` is the suite's memory
    axis: the bytes kept besides the model, or (``counted``) the bytes the run's budget counts."""
    m = results["metrics"]
    out = {}
    for s in settings:
        sfx = SETTINGS[s]
        for key in ("final_acc", "avg_incremental_acc", "forgetting", "bwt", "fwt"):
            v = m.get(key + sfx)
            out[f"{s}:{key}"] = math.nan if v is None else 100.0 * v
    seen = m.get("avg_incremental_acc_seen")  # over every test sample seen (the NECIL papers' average)
    out["class_il:avg_incremental_acc_seen"] = math.nan if seen is None else 100.0 * seen
    out["memory_mb"] = extra_bytes(results) / MB
    if memory_axis == "counted":
        mem = results["memory"]
        out["memory_mb"] = mem["budgeted_bytes"] / MB
        params = mem.get("parameter_bytes") or {}
        counted_model = sum(params.get(c, 0) for c in ("backbone", "per_task")) if mem.get("count_model") else 0
        out["model_mb"] = counted_model / MB
        out["exemplar_mb"] = (mem["budgeted_bytes"] - counted_model) / MB
    out["memory_bytes"] = float(extra_bytes(results))
    out["total_bytes"] = float(results["memory"]["total_bytes"])
    out["exemplars"] = (results["memory"]["by_category"].get("exemplars", 0) / input_bytes) if input_bytes else math.nan
    # seeds trained together (--batch-seeds) each timed the whole group's steps: the run's share is 1/len
    out["train_s"] = float(results["time"]["train_s"]) / len((results.get("leaderboard") or {}).get("batched_seeds") or [0])
    return out


def accuracy_curve(matrix: list[list[float]]) -> list[float]:
    """Average accuracy (%) on the tasks seen so far, after each task."""
    return [100.0 * sum(row[: i + 1]) / (i + 1) for i, row in enumerate(matrix)]


# ---------------------------------------------------------------------------------------------- collecting
@dataclass
class CellResult:
    cell: Cell
    hash: str | None
    runs: dict[int, dict] = field(default_factory=dict)     # seed -> results.json
    values: dict[int, dict] = field(default_factory=dict)   # seed -> run_values

    @property
    def n(self) -> int:
        return len(self.runs)

    def stat(self, key: str) -> tuple[float, float]:
        vals = [v[key] for v in self.values.values() if not math.isnan(v[key])]
        return mean_std(vals)

    def curve(self, setting: str) -> list[float]:
        key = "acc_matrix" + ("_task_il" if setting == "task_il" else "")
        curves = [accuracy_curve(r[key]) for r in self.runs.values()]
        return [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))] if curves else []


@dataclass
class SuiteResult:
    suite: Suite
    cells: list[CellResult]
    warnings: list[str] = field(default_factory=list)
    backbones: dict[str, int] = field(default_factory=dict)  # sha256 of pretrained weights -> runs that used them

    @property
    def n_runs(self) -> int:
        return sum(c.n for c in self.cells)

    @property
    def hash(self) -> str:
        return suite_hash([c.hash for c in self.cells if c.hash])

    def commands(self) -> list[str]:
        seen = []
        for c in self.cells:
            for r in c.runs.values():
                cmd = (r.get("leaderboard") or {}).get("command")
                if cmd and cmd not in seen:
                    seen.append(cmd)
        return seen

    def auc_points(self, name: str, planned: bool = False) -> list[CellResult]:
        """The cells of ``name`` whose points make its accuracy-vs-memory curve for the AUC: its byte-budget
        cells when the suite has byte budgets (the same memory points for every method), else all its
        budgeted cells; those with runs, or with ``planned`` every such cell of the suite."""
        budgeted = [c for c in self.cells if c.cell.name == name and c.cell.budget.kind != "none" and (c.n or planned)]
        has_bytes = any(c.cell.budget.kind in ("bytes_of", "mb") for c in self.cells)
        if has_bytes:
            return [c for c in budgeted if c.cell.budget.kind in ("bytes_of", "mb")]
        return budgeted

    def auc(self, name: str, setting: str, metric: str = "final_acc") -> tuple[float | None, float, float]:
        """Area under ``metric`` (final accuracy: AUC-L; average incremental accuracy: AUC-A) versus memory; None
        until every memory point the suite plans for the method has a run (an area over fewer points spans another
        range and cannot be ranked against the others)."""
        pts = self.auc_points(name)
        xs = [c.stat("memory_mb")[0] for c in pts]
        ys = [c.stat(f"{setting}:{metric}")[0] for c in pts]
        complete = len(pts) == len(self.auc_points(name, planned=True))
        area = auc_trapezoid(xs, ys) if complete else None
        return area, (min(xs) if xs else math.nan), (max(xs) if xs else math.nan)


def collect(suite: Suite, runs_root: str | Path = DEFAULT_RUNS) -> SuiteResult:
    result = SuiteResult(suite, [])
    input_bytes = None  # read from the stream when a run is found: a suite not run needs no data (images of any size)
    for cell in suite.cells:
        try:
            base = compose_cell(suite, cell, suite.seeds[0])
        except SuiteError as err:
            result.warnings.append(f"{cell.id}: left out, its configuration cannot be composed now ({err})")
            result.cells.append(CellResult(cell, None))
            continue
        cr = CellResult(cell, config_hash(base))
        for seed in suite.seeds:
            h = config_hash(with_seed(base, seed))
            rd = run_dir_of(runs_root, suite, cell, seed)
            r, problem = load_results(rd)
            if problem is None and r is not None:
                problem = digest_problem(r)
            if problem is not None:
                result.warnings.append(f"{cell.id}/seed{seed}: left out, {problem} ({rd / 'results.json'})")
                continue
            if r is None:
                continue
            if r.get("status") != "complete":
                result.warnings.append(f"{cell.id}/seed{seed}: left out, the run is {r.get('status')} "
                                       f"({r.get('completed_tasks')} tasks)")
                continue
            rh = config_hash(r.get("config", {}))
            if rh != h:
                result.warnings.append(f"{cell.id}/seed{seed}: left out, stale (its configuration hash {rh} is not "
                                       f"the suite's {h}); re-run it with clzoo-leaderboard run")
                continue
            cr.runs[seed] = r
            if input_bytes is None:
                input_bytes = math.prod(suite.stream_shape()[0])
            cr.values[seed] = run_values(r, suite.settings, input_bytes, suite.memory_axis)
        result.cells.append(cr)
    _leave_out_other_backbones(result)
    folder = Path(runs_root) / suite.name
    ids = {c.id for c in suite.cells}
    if folder.is_dir():
        for d in sorted(folder.iterdir()):
            if d.is_dir() and not d.name.startswith("_") and d.name not in ids and any(d.glob("seed*/results.json")):
                result.warnings.append(f"{d.name}: left out, no such cell in {suite.path} (delete {d} if it is gone)")
    return result


def backbone_digest(results: dict) -> str | None:
    """sha256 of the pretrained weights a run started from (its card's), None for a run without a checkpoint."""
    record = results.get("backbone") or {}
    return (record.get("card") or {}).get("sha256") if record.get("checkpoint") else None


def _leave_out_other_backbones(result: SuiteResult) -> None:
    """A checkpoint enters a run's configuration by its path, so runs of one suite could have started from
    different weights at that path (a backbone pretrained again elsewhere): keep the runs of the weights most runs
    used (the first seen on a tie) and leave the others out, saying so. Sets ``result.backbones``."""
    counts: dict[str, int] = {}
    for cr in result.cells:
        for r in cr.runs.values():
            digest = backbone_digest(r)
            if digest:
                counts[digest] = counts.get(digest, 0) + 1
    result.backbones = counts
    if len(counts) < 2:
        return
    kept = max(counts, key=counts.get)
    for cr in result.cells:
        for seed, r in list(cr.runs.items()):
            digest = backbone_digest(r)
            if digest and digest != kept:
                result.warnings.append(
                    f"{cr.cell.id}/seed{seed}: left out, it started from other pretrained weights (sha256 {digest[:12]}; "
                    f"{counts[kept]} run(s) of this suite used {kept[:12]}); re-run it with those weights")
                del cr.runs[seed], cr.values[seed]


def backbone_line(sr: SuiteResult) -> str | None:
    """What the table's runs were initialised from, when they started from a pretrained checkpoint."""
    if not sr.backbones:
        return None
    kept = max(sr.backbones, key=sr.backbones.get)  # the weights whose runs _leave_out_other_backbones kept
    for cr in sr.cells:
        for r in cr.runs.values():
            if backbone_digest(r) == kept:
                record, card = r["backbone"], r["backbone"]["card"]
                source = card.get("source") or {}
                accuracy = card.get("accuracy")
                return (f"Pretrained backbone: `{record['checkpoint']}` (sha256 {card['sha256'][:12]}), trained on "
                        f"{len(source.get('classes') or [])} classes of {source.get('dataset')}"
                        + (f", {100 * accuracy:.2f}% on their test images" if isinstance(accuracy, (int, float)) else "")
                        + "; every run of this table started from it.")
    return None


# ---------------------------------------------------------------------------------------------- formatting
def fmt(mean: float, std: float | None = None, n: int = 1, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or n < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_delta(mean: float, ref: float | None) -> str:
    if ref is None or mean is None or math.isnan(mean):
        return ""
    return f"{mean - ref:+.2f}"


def table_rows(sr: SuiteResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a suite's main table (cells sorted by budget, then by their order in the suite)."""
    settings = sr.suite.settings
    first = settings[0]
    refs = any(c.cell.reference for c in sr.cells)  # no ref / Δ columns in a suite without published numbers
    headers = ["Cell", "Budget", "Seeds"]
    for s in settings:
        headers += [f"{SETTING_LABELS[s]} final"] + (["ref", "Δ"] if refs else [])
    # a stream with a larger first task (non-exemplar class-IL protocols): also the papers' average incremental
    # accuracy, over every test sample of the classes seen, beside the mean over tasks
    necil = first == "class_il" and any((r.get("config", {}).get("stream") or {}).get("first_task_classes")
                                        for c in sr.cells for r in c.runs.values())
    headers += [f"Avg. incr. ({SETTING_LABELS[first]})"] + (["Avg. incr. (seen samples)"] if necil else [])
    headers += [f"Forgetting ({SETTING_LABELS[first]})", "Memory (MB)", "Exemplars", "Train (s)", "Hash"]
    rows = []
    order = sorted(sr.cells, key=lambda c: (c.cell.budget.sort_key(), c.cell.index))
    for c in order:
        mb = sr.suite.budget_mb(c.cell)
        row = [c.cell.id, c.cell.budget.label(mb), str(c.n) if c.n else "not run"]
        for s in settings:
            m, sd = c.stat(f"{s}:final_acc") if c.n else (math.nan, math.nan)
            ref = (c.cell.reference or {}).get(s)
            row += [fmt(m, sd, c.n)] + (["" if ref is None else f"{ref:.2f}", fmt_delta(m, ref)] if refs else [])
        if c.n:
            row += [fmt(*c.stat(f"{first}:avg_incremental_acc"), c.n)]
            row += [fmt(*c.stat("class_il:avg_incremental_acc_seen"), c.n)] if necil else []
            row += [fmt(*c.stat(f"{first}:forgetting"), c.n),
                    f"{c.stat('memory_mb')[0]:.4g}", fmt(c.stat("exemplars")[0], digits=0),
                    fmt(*c.stat("train_s"), c.n, digits=1)]
        else:
            row += ["–"] * (6 if necil else 5)
        row.append(c.hash or "?")
        rows.append(row)
    return headers, rows


def auc_rows(sr: SuiteResult) -> tuple[list[str], list[list[str]]]:
    """One row per method with two or more memory points: the area under final accuracy versus memory (on a
    ``counted`` axis, MEMO's AUC-L, and AUC-A over average incremental accuracy too), trapezoid rule."""
    settings = sr.suite.settings
    metrics = [("final_acc", "AUC-L" if sr.suite.memory_axis == "counted" else "AUC")]
    if sr.suite.memory_axis == "counted":
        metrics.append(("avg_incremental_acc", "AUC-A"))
    headers = ["Method (cell name)", "Memory range (MB)", "Points"] + [
        f"{label} {SETTING_LABELS[s]} (%·MB)" for _, label in metrics for s in settings]
    headers += [f"Mean {SETTING_LABELS[s]} over the range (%)" for s in settings]
    rows = []
    names = []
    for c in sr.cells:
        if c.cell.name not in names and c.cell.budget.kind != "none":
            names.append(c.cell.name)
    for name in names:
        pts = sr.auc_points(name)
        if len(pts) < 2:
            continue
        aucs = [sr.auc(name, s, metric) for metric, _ in metrics for s in settings]
        lo, hi = aucs[0][1], aucs[0][2]
        ids = ", ".join(p.cell.id for p in sorted(pts, key=lambda p: p.cell.budget.sort_key()))
        planned = len(sr.auc_points(name, planned=True))
        row = [name, f"{lo:.4g} – {hi:.4g}", ids if len(pts) == planned else f"{len(pts)} of {planned} run: {ids}"]
        row += [f"{a[0]:.4g}" if a[0] is not None else "–" for a in aucs]
        row += [fmt(a[0] / (hi - lo)) if a[0] is not None and hi > lo else "–" for a in aucs[:len(settings)]]
        rows.append(row)
    return headers, rows


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(headers: list[str], rows: list[list[str]], numeric_from: int = 2) -> str:
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead>", "<tbody>"]
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = ' class="num"' if i >= numeric_from else ""
            if headers[i] == "Δ" and v:
                cls = f' class="num {"pos" if v.startswith("+") else "neg"}"'
            cells.append(f"<td{cls}>{html.escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- plots
# tab10, then further colours that stay distinct from it (tab20's paler twins would pair up with tab10's)
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#00008b", "#b8860b", "#ff1493", "#2f4f4f", "#7cfc00", "#800000", "#4682b4"]


def _colors(names: list[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _ylim(values: list[float]) -> tuple[float, float]:
    """A y range that shows the spread: from a little below the lowest value (at least 0) to 100."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return 0.0, 101.0
    low = min(vals)
    pad = max(2.0, 0.05 * (100.0 - low))
    return max(0.0, low - pad), 100.0 + 0.25 * pad


MARKERS = "osD^vP*Xhp<>"


def _spread(ys: list[float], gap: float, low: float | None = None, high: float | None = None) -> list[float]:
    """Label positions for the values ``ys`` (same order): each at its value or, when that is within ``gap`` of
    the label below it, just above that label; so close values stay readable (and none goes below ``low``)."""
    order = sorted(range(len(ys)), key=ys.__getitem__)
    out = [0.0] * len(ys)
    prev = None
    for i in order:
        y = ys[i] if low is None else max(ys[i], low)
        out[i] = prev = y if prev is None else max(y, prev + gap)
    if high is not None and out and max(out) > high:  # the stack ran over the top: move it down
        excess = max(out) - high
        out = [y - excess for y in out]
    return out


def _no_buffer_strip(ax, cells, setting: str, colors: dict, marker: dict, ylim: tuple[float, float]) -> None:
    """The methods that keep no exemplars (a dotted line each, before): one point each at x = 0, labelled directly
    with its name and accuracy, labels spread apart so methods with close accuracies stay legible."""
    ys = [c.stat(f"{setting}:final_acc")[0] for c in cells]
    es = [c.stat(f"{setting}:final_acc")[1] for c in cells]
    for c, y, e in zip(cells, ys, es):
        ax.errorbar([0], [y], yerr=[e], color=colors[c.cell.name], marker=marker[c.cell.name], ms=6, capsize=2)
    for c, y, ly in zip(cells, ys, _spread(ys, 0.05 * (ylim[1] - ylim[0]), ylim[0] + 0.02 * (ylim[1] - ylim[0]),
                                                     ylim[1] - 0.03 * (ylim[1] - ylim[0]))):
        ax.annotate(f"{c.cell.name} {y:.1f}", xy=(0, y), xytext=(0.35, ly), textcoords="data", va="center",
                    fontsize=8, color=colors[c.cell.name],
                    arrowprops=dict(arrowstyle="-", color=colors[c.cell.name], lw=0.6, shrinkA=0, shrinkB=3))
    ax.set_xlim(-0.3, 2.6)
    ax.set_xticks([])
    ax.tick_params(labelleft=False)
    ax.set_title("no buffer", fontsize=10)
    ax.grid(alpha=0.3, axis="y")


def plot_suite(sr: SuiteResult, out_dir: Path) -> list[Path]:
    """``<suite>_acc_per_task_<setting>.png`` (one panel per budget) and ``<suite>_acc_vs_memory.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    name = sr.suite.name
    done = [c for c in sr.cells if c.n]
    if not done:
        return []
    names = []
    for c in sr.cells:
        if c.cell.name not in names:
            names.append(c.cell.name)
    colors = _colors(names)
    marker = {n: MARKERS[i % len(MARKERS)] for i, n in enumerate(names)}
    paths = []

    groups: dict = {}
    for c in sorted(done, key=lambda c: (c.cell.budget.sort_key(), c.cell.index)):
        groups.setdefault(c.cell.budget, []).append(c)
    T = len(done[0].curve(sr.suite.settings[0]))
    for s in sr.suite.settings:
        n = len(groups)
        ncols = min(3, n)
        nrows = math.ceil(n / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 2.2, 3.6 * nrows), squeeze=False,
                                 sharey=True)
        lo, hi = _ylim([v for cells in groups.values() for c in cells for v in c.curve(s)])
        for ax, (budget, cells) in zip(axes.flat, groups.items()):
            for c in cells:
                ys = c.curve(s)
                ax.plot(range(len(ys)), ys, marker=marker[c.cell.name], ms=4, lw=1.6,
                        color=colors[c.cell.name], label=c.cell.name)
            ax.set_title(budget.group(), fontsize=10)
            ax.set_xticks(range(0, T, 1 if T <= 10 else 2))
            ax.set_ylim(lo, hi)
            ax.grid(alpha=0.3)
            ax.set_xlabel("after training task i (tasks from 0)")
        for ax in axes[:, 0]:
            ax.set_ylabel(f"avg. {SETTING_LABELS[s]} accuracy\non tasks seen (%)")
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        handles = [plt.Line2D([], [], color=colors[nm], marker=marker[nm], lw=1.6, label=nm) for nm in names
                   if any(c.cell.name == nm for c in done)]
        fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False)
        fig.suptitle(f"{sr.suite.title or name}: {SETTING_LABELS[s]} accuracy after each task "
                     f"(mean over seeds)", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 0.95))
        paths.append(out_dir / f"{name}_acc_per_task_{s}.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")  # titles and legends never clipped
        plt.close(fig)

    budgeted = [c for c in done if c.cell.budget.kind != "none"]
    unbuffered = [c for c in done if c.cell.budget.kind == "none"]
    if budgeted:
        settings = sr.suite.settings
        strip = 0.42 if unbuffered else 0.0
        fig = plt.figure(figsize=((6.2 + 2.2 * bool(unbuffered)) * len(settings) + 0.6, 6.2))
        grid = fig.add_gridspec(1, len(settings) * (2 if unbuffered else 1),
                                width_ratios=[1, strip] * len(settings) if unbuffered else [1] * len(settings),
                                wspace=0.25)
        for k, s in enumerate(settings):
            ax = fig.add_subplot(grid[0, 2 * k if unbuffered else k])
            ylim = _ylim([c.stat(f"{s}:final_acc")[0] - c.stat(f"{s}:final_acc")[1] for c in done])
            for nm in names:
                mine = [c for c in budgeted if c.cell.name == nm]
                if not mine:
                    continue
                auc_ids = {id(p) for p in sr.auc_points(nm)}
                for kinds, style, fill in ((("samples",), "--", "none"), (("bytes_of", "mb"), "-", colors[nm])):
                    pts = sorted((c for c in mine if c.cell.budget.kind in kinds), key=lambda c: c.stat("memory_mb")[0])
                    if not pts:
                        continue
                    xs = [c.stat("memory_mb")[0] for c in pts]
                    ys = [c.stat(f"{s}:final_acc")[0] for c in pts]
                    es = [c.stat(f"{s}:final_acc")[1] for c in pts]
                    ax.errorbar(xs, ys, yerr=es, color=colors[nm], ls=style, marker=marker[nm], ms=6, mfc=fill,
                                lw=1.8 if id(pts[0]) in auc_ids else 1.0, capsize=2)
            xs_all = [c.stat("memory_mb")[0] for c in budgeted if c.stat("memory_mb")[0] > 0]
            log_x = bool(xs_all) and max(xs_all) / min(xs_all) > 20
            if log_x:
                from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(("memory counted by the budget: model + exemplars" if sr.suite.memory_axis == "counted" else
                           "memory kept besides the model") + " (MB = 2^20 bytes" + (", log scale)" if log_x else ")"))
            ax.set_ylabel(f"final {SETTING_LABELS[s]} accuracy (%)")
            ax.set_ylim(*ylim)
            ax.grid(alpha=0.3, which="both")
            ax.set_title(f"{SETTING_LABELS[s]}: methods with a buffer", fontsize=10)
            if unbuffered:
                _no_buffer_strip(fig.add_subplot(grid[0, 2 * k + 1], sharey=ax), unbuffered, s, colors, marker, ylim)
        handles = []
        for nm in names:
            if not any(c.cell.name == nm for c in budgeted):
                continue  # methods without a buffer are labelled in their own panel
            a = sr.auc(nm, settings[0])[0]
            handles.append(plt.Line2D([], [], color=colors[nm], marker=marker[nm], ls="-",
                                      label=nm + (f" (AUC {a:.4g})" if a is not None else "")))
        handles += [plt.Line2D([], [], color="gray", ls="-", marker="s", label="byte budget (solid, filled)"),
                    plt.Line2D([], [], color="gray", ls="--", marker="o", mfc="none",
                               label="sample budget (dashed, hollow)")]
        ncol = min(len(handles), 4)
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8.5, frameon=False,
                   title=f"AUC {SETTING_LABELS[settings[0]]}: area under accuracy versus memory (trapezoid over "
                         f"MB, %·MB)", title_fontsize=8.5)
        fig.suptitle(f"{sr.suite.title or name}: accuracy versus memory (mean ± std over seeds)", fontsize=11)
        rows = math.ceil(len(handles) / ncol) + 1  # + the legend's title
        fig.subplots_adjust(left=0.85 / fig.get_figwidth(), right=0.985, top=0.9, bottom=min(0.45, 0.1 + 0.038 * rows))
        paths.append(out_dir / f"{name}_acc_vs_memory.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")  # titles and legends never clipped
        plt.close(fig)
    if sr.suite.memory_axis == "counted":
        stacked = plot_memory_stack(sr, out_dir)
        if stacked is not None:
            paths.append(stacked)
    return paths


def plot_memory_stack(sr: SuiteResult, out_dir: Path) -> Path | None:
    """``<suite>_memory_stack.png``: every budgeted cell's counted memory as model + exemplars on one axis (MB),
    with its final accuracy written beside the bar (MEMO's "a model or 603 exemplars" view)."""
    import matplotlib.pyplot as plt

    cells = [c for c in sr.cells if c.n and c.cell.budget.kind != "none" and "model_mb" in next(iter(c.values.values()))]
    if not cells:
        return None
    cells.sort(key=lambda c: (c.stat("memory_mb")[0], c.cell.id))
    setting = sr.suite.settings[0]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(cells) + 1.5))
    ys = range(len(cells))
    model = [c.stat("model_mb")[0] for c in cells]
    exemplars = [c.stat("exemplar_mb")[0] for c in cells]
    ax.barh(ys, model, color="#4c72b0", label="model parameters")
    ax.barh(ys, exemplars, left=model, color="#dd8452", label="exemplars")
    for y, c, m, e in zip(ys, cells, model, exemplars):
        ax.text(m + e, y, f"  {c.stat(f'{setting}:final_acc')[0]:.1f}%", va="center", fontsize=8)
    ax.set_yticks(list(ys), [c.cell.id for c in cells], fontsize=8)
    ax.set_xlabel("memory counted by the budget (MB = 2^20 bytes)")
    ax.set_title(f"{sr.suite.title or sr.suite.name}: model and exemplars on one axis "
                 f"(final {SETTING_LABELS[setting]} accuracy beside each bar)", fontsize=10)
    ax.set_xlim(0, 1.12 * max(m + e for m, e in zip(model, exemplars)))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    path = out_dir / f"{sr.suite.name}_memory_stack.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- files
CSV_RUN_FIELDS = ["suite", "cell", "name", "method", "budget_kind", "budget_value", "budget_mb", "seed",
                  "config_hash", "memory_mb", "memory_bytes", "total_bytes", "exemplars", "train_s"]


def results_csv(results: list[SuiteResult]) -> str:
    """One row per run; accuracies in %."""
    buf = io.StringIO()
    metric_keys = []
    for sr in results:
        for c in sr.cells:
            for v in c.values.values():
                metric_keys += [k for k in v if ":" in k and k not in metric_keys]
    writer = csv.writer(buf)
    writer.writerow(CSV_RUN_FIELDS + [k.replace(":", "_") for k in metric_keys])
    for sr in results:
        for c in sr.cells:
            mb = sr.suite.budget_mb(c.cell)
            for seed, v in sorted(c.values.items()):
                writer.writerow([sr.suite.name, c.cell.id, c.cell.name, c.cell.method, c.cell.budget.kind,
                                 c.cell.budget.value if c.cell.budget.value is not None else "",
                                 "" if mb is None else repr(mb), seed, c.hash, f"{v['memory_mb']:.6f}",
                                 int(v["memory_bytes"]), int(v["total_bytes"]),
                                 "" if math.isnan(v["exemplars"]) else f"{v['exemplars']:g}", f"{v['train_s']:.3f}"]
                                + ["" if math.isnan(v.get(k, math.nan)) else f"{v[k]:.4f}" for k in metric_keys])
    return buf.getvalue()


def summary_csv(results: list[SuiteResult]) -> str:
    """One row per cell: mean and std over seeds, references, differences (accuracies in %)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["suite", "cell", "name", "method", "budget_kind", "budget_value", "budget_mb", "n_seeds",
                     "config_hash", "setting", "final_acc_mean", "final_acc_std", "reference", "delta",
                     "avg_incremental_acc_mean", "avg_incremental_acc_std", "forgetting_mean", "forgetting_std",
                     "memory_mb", "exemplars", "train_s_mean", "train_s_std", "reference_source"])
    for sr in results:
        for c in sr.cells:
            if not c.n:
                continue
            mb = sr.suite.budget_mb(c.cell)
            for s in sr.suite.settings:
                fm, fs = c.stat(f"{s}:final_acc")
                am, asd = c.stat(f"{s}:avg_incremental_acc")
                gm, gs = c.stat(f"{s}:forgetting")
                ref = (c.cell.reference or {}).get(s)
                writer.writerow([sr.suite.name, c.cell.id, c.cell.name, c.cell.method, c.cell.budget.kind,
                                 c.cell.budget.value if c.cell.budget.value is not None else "",
                                 "" if mb is None else repr(mb), c.n, c.hash, s, f"{fm:.4f}", f"{fs:.4f}",
                                 "" if ref is None else ref, "" if ref is None else f"{fm - ref:.4f}",
                                 f"{am:.4f}", f"{asd:.4f}", f"{gm:.4f}", f"{gs:.4f}",
                                 f"{c.stat('memory_mb')[0]:.6f}", f"{c.stat('exemplars')[0]:g}",
                                 f"{c.stat('train_s')[0]:.3f}", f"{c.stat('train_s')[1]:.3f}",
                                 c.cell.source or ""])
    return buf.getvalue()


LEGEND = (
    "Numbers are percentages, **mean ± sample standard deviation (n − 1) over seeds**. *final*: mean over all tasks "
    "of the accuracy after the last task. *Avg. incr.*: mean over tasks of the average accuracy on the tasks seen "
    "so far. *Forgetting*: mean over all tasks but the last of best minus final accuracy. *Memory*: bytes a method "
    "keeps between tasks besides the model (exemplars as uint8, their labels / task ids / logits, teacher copies, "
    "importance weights, ...), MB = 2^20 bytes; *Exemplars*: stored inputs. *Train*: seconds of training per run "
    "(all tasks, one CPU thread unless the run says otherwise). *ref*: the published number; *Δ* = ours − ref. "
    "*Hash*: the configuration hash of the cell's run with {seed0} seed (execution settings such as the data "
    "folder, device, threads and logging are not part of it). The AUC is "
    "the area under accuracy versus memory, **trapezoid rule over MB**, in %·MB, given once every memory point of the method has a run.")


def _relpath(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def suite_markdown(sr: SuiteResult, plots: list[Path], out_dir: Path) -> str:
    s = sr.suite
    lines = [f"## {s.title or s.name}", ""]
    if s.description:
        lines += [s.description.strip(), ""]
    lines += [f"- Suite: `{_relpath(s.path)}` — stream `{s.stream}`, seeds {', '.join(map(str, s.seeds))}"
              + (f", common overrides `{' '.join(s.common)}`" if s.common else "")
              + (", settings of each cell in its preset `conf/experiment/<preset>.yaml` (`+experiment=` in its command)"
                 if s.preset or any(c.preset for c in s.cells) else "") + ".",
              f"- Configuration hash of this table: `{sr.hash}` (over the cells' hashes in the last column).",
              f"- Runs: {sr.n_runs} of {len(s.cells) * len(s.seeds)} complete."]
    backbone = backbone_line(sr)
    if backbone:
        lines.append(f"- {backbone}")
    cmds = sr.commands()
    if cmds:
        lines.append("- Produced by: " + "; ".join(f"`{c}`" for c in cmds) + ", then `clzoo-leaderboard build`.")
    else:
        lines.append(f"- Produce it with `clzoo-leaderboard run {_relpath(s.path)}` then `clzoo-leaderboard build`.")
    sources = []
    for c in s.cells:
        if c.source and c.source not in sources:
            sources.append(c.source)
    if sources:
        lines.append("- Published references (*ref*): " + "; ".join(sources) + ".")
    lines += ["", md_table(*table_rows(sr)), ""]
    notes = []
    for c in s.cells:
        if c.note and (c.name, c.note) not in notes:
            notes.append((c.name, c.note))
    for nm, note in notes:
        lines.append(f"- *{nm}*: {note}")
    if notes:
        lines.append("")
    ah, ar = auc_rows(sr)
    if ar:
        lines += ["Area under accuracy versus memory (trapezoid rule over MB; byte-budget cells where the suite has "
                  "them, so every method is measured at the same memory points):", "", md_table(ah, ar), ""]
    for p in plots:
        lines += [f"![{p.stem}]({_relpath_to(p, out_dir)})", ""]
    if sr.warnings:
        lines += ["<details><summary>Runs left out</summary>", ""] + [f"- {w}" for w in sr.warnings] + ["", "</details>", ""]
    lines += ["<details><summary>The clzoo-run command of each cell (seed " + str(s.seeds[0])
              + "; add <code>data.root=DIR</code> for real datasets)</summary>", ""]
    lines += [f"- `{c.id}` (`{config_hash_of(sr, c)}`): `{cell_command(s, c)}`" for c in s.cells]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def config_hash_of(sr: SuiteResult, cell: Cell) -> str:
    for c in sr.cells:
        if c.cell is cell:
            return c.hash or "?"
    return "?"


def _relpath_to(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


HTML_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1500px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2.2em; border-bottom: 2px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 13px; margin: 0.8em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; }
th { background: #f2f4f7; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.pos { color: #176b24; } td.neg { color: #a31818; }
tr:nth-child(even) td { background: #fafbfc; }
code { background: #f4f4f4; padding: 1px 4px; border-radius: 3px; font-size: 12.5px; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
.legend { font-size: 13px; color: #444; max-width: 1100px; }
ul.meta { font-size: 14px; } details { font-size: 13px; margin: 0.5em 0; }
"""


def suite_html(sr: SuiteResult, plots: list[Path], out_dir: Path) -> str:
    s = sr.suite
    e = html.escape
    parts = [f'<h2 id="{e(s.name)}">{e(s.title or s.name)}</h2>']
    if s.description:
        parts.append(f"<p>{e(s.description.strip())}</p>")
    meta = [f"Suite: <code>{e(_relpath(s.path))}</code> — stream <code>{e(s.stream)}</code>, seeds "
            f"{e(', '.join(map(str, s.seeds)))}" + (f", common overrides <code>{e(' '.join(s.common))}</code>"
                                                     if s.common else "")
            + (", settings of each cell in its preset <code>conf/experiment/&lt;preset&gt;.yaml</code>"
               if s.preset or any(c.preset for c in s.cells) else ""),
            f"Configuration hash of this table: <code>{sr.hash}</code> (over the cells' hashes in the last column)",
            f"Runs: {sr.n_runs} of {len(s.cells) * len(s.seeds)} complete"]
    backbone = backbone_line(sr)
    if backbone:
        meta.append(e(backbone.replace("`", "").rstrip(".")))
    cmds = sr.commands()
    if cmds:
        meta.append("Produced by: " + "; ".join(f"<code>{e(c)}</code>" for c in cmds)
                    + ", then <code>clzoo-leaderboard build</code>")
    sources = []
    for c in s.cells:
        if c.source and c.source not in sources:
            sources.append(c.source)
    if sources:
        meta.append("Published references (ref): " + e("; ".join(sources)))
    parts.append("<ul class='meta'>" + "".join(f"<li>{m}</li>" for m in meta) + "</ul>")
    parts.append(html_table(*table_rows(sr), numeric_from=3))
    notes = []
    for c in s.cells:
        if c.note and (c.name, c.note) not in notes:
            notes.append((c.name, c.note))
    if notes:
        parts.append("<ul class='legend'>" + "".join(f"<li><i>{e(n)}</i>: {e(t)}</li>" for n, t in notes) + "</ul>")
    ah, ar = auc_rows(sr)
    if ar:
        parts.append("<p class='legend'>Area under accuracy versus memory (trapezoid rule over MB; byte-budget cells "
                     "where the suite has them, so every method is measured at the same memory points):</p>")
        parts.append(html_table(ah, ar, numeric_from=1))
    for p in plots:
        parts.append(f'<img src="{e(_relpath_to(p, out_dir))}" alt="{e(p.stem)}">')
    if sr.warnings:
        parts.append("<details><summary>Runs left out</summary><ul>" + "".join(f"<li>{e(w)}</li>" for w in sr.warnings)
                     + "</ul></details>")
    parts.append(f"<details><summary>The clzoo-run command of each cell (seed {s.seeds[0]}; add "
                 "<code>data.root=DIR</code> for real datasets)</summary><ul>"
                 + "".join(f"<li><code>{e(c.id)}</code> (<code>{config_hash_of(sr, c)}</code>): "
                           f"<code>{e(cell_command(s, c))}</code></li>" for c in s.cells) + "</ul></details>")
    return "\n".join(parts)


class RunsLeftOutError(RuntimeError):
    """``build --strict``: some runs were left out (unreadable, edited, partial, stale, or of no cell)."""


def build(suite_paths: list[str | Path], runs_root: str | Path = DEFAULT_RUNS, out_dir: str | Path = "leaderboard",
          echo=print, strict: bool = False) -> list[SuiteResult]:
    """Regenerate ``out_dir`` (README.md, results.csv, summary.csv, plots/, index.html) from the runs. With
    ``strict``, raise :class:`RunsLeftOutError` listing them, before writing anything, when a run is left out."""
    from .suite import load_suite

    out_dir = Path(out_dir)
    results = [collect(load_suite(p), runs_root) for p in suite_paths]
    left_out = [f"{sr.suite.name}: {w}" for sr in results for w in sr.warnings]
    if strict and left_out:
        raise RunsLeftOutError(f"{len(left_out)} run(s) left out (--strict):\n" + "\n".join(f"  {w}" for w in left_out))
    out_dir.mkdir(parents=True, exist_ok=True)
    plots_dir = out_dir / "plots"
    md = ["# clzoo leaderboard", "",
          "Generated by `clzoo-leaderboard build` from the runs under "
          f"`{_relpath(runs_root)}/<suite>/<cell>/seed<k>/results.json`; do not edit by hand. Suites live in "
          "`experiments/`; `clzoo-leaderboard run experiments/<suite>.yaml` fills missing runs. Machine-readable: "
          "[results.csv](results.csv) (one row per run) and [summary.csv](summary.csv) (one row per cell and "
          "setting); the same tables with plots: [index.html](index.html).", "",
          LEGEND.format(seed0="the first"), ""]
    body_html = []
    toc = []
    results = sorted(results, key=lambda sr: sr.n_runs == 0)  # suites with runs first, then the others
    for sr in results:
        for w in sr.warnings:
            echo(f"warning: {sr.suite.name}: {w}")
        if not sr.n_runs:
            md += [f"## {sr.suite.title or sr.suite.name}", "",
                   f"Not run yet: `clzoo-leaderboard run {_relpath(sr.suite.path)}`.", ""]
            body_html.append(f'<h2 id="{html.escape(sr.suite.name)}">{html.escape(sr.suite.title or sr.suite.name)}'
                             f"</h2><p>Not run yet: <code>clzoo-leaderboard run {html.escape(_relpath(sr.suite.path))}"
                             "</code></p>")
            continue
        plots = plot_suite(sr, plots_dir)
        toc.append(sr)
        md.append(suite_markdown(sr, plots, out_dir))
        body_html.append(suite_html(sr, plots, out_dir))
        echo(f"{sr.suite.name}: {sr.n_runs} runs in {sum(1 for c in sr.cells if c.n)} cells, hash {sr.hash}")
    atomic_write_text(out_dir / "README.md", "\n".join(md).rstrip() + "\n")
    atomic_write_text(out_dir / "results.csv", results_csv(results))
    atomic_write_text(out_dir / "summary.csv", summary_csv(results))
    nav = " · ".join(f'<a href="#{html.escape(sr.suite.name)}">{html.escape(sr.suite.title or sr.suite.name)}</a>'
                     for sr in toc)
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>clzoo leaderboard</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n<h1>clzoo leaderboard</h1>\n"
            f"<p>{nav}</p>\n<p class='legend'>{_md_to_html(LEGEND.format(seed0='the first'))}</p>\n"
            "<p class='legend'>Machine-readable: <a href='results.csv'>results.csv</a> (one row per run), "
            "<a href='summary.csv'>summary.csv</a> (one row per cell and setting). Generated by "
            "<code>clzoo-leaderboard build</code>.</p>\n" + "\n".join(body_html) + "\n</body></html>\n")
    atomic_write_text(out_dir / "index.html", page)
    return results


def _md_to_html(text: str) -> str:
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\*(.+?)\*", r"<i>\1</i>", text)
