"""What a run leaves behind besides results.json: metrics.csv, PNG plots, and the console summary."""
from __future__ import annotations

import csv
import time
import io
from pathlib import Path

from . import metrics as M
from .checkpoint import atomic_write_text


def write_metrics_csv(path: Path, R: list[list[float]], R_til: list[list[float]], per_task_s: list[float],
                      memory_bytes: list[int]) -> None:
    """One row per completed task: average accuracies so far, time, memory, and the accuracy on every task."""
    T = len(R[0]) if R else 0
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["after_task", "avg_acc", "avg_acc_task_il", "train_s", "memory_bytes"]
                    + [f"acc_task_{j}" for j in range(T)] + [f"acc_task_il_{j}" for j in range(T)])
    for i, (row, row_til) in enumerate(zip(R, R_til)):
        writer.writerow([i, f"{sum(row[: i + 1]) / (i + 1):.6f}", f"{sum(row_til[: i + 1]) / (i + 1):.6f}",
                         f"{per_task_s[i]:.3f}", memory_bytes[i]]
                        + [f"{a:.6f}" for a in row] + [f"{a:.6f}" for a in row_til])
    atomic_write_text(path, buf.getvalue())


#: how each scenario names its two views: (task-agnostic matrix R, task-id-given matrix R_til)
VIEW_LABELS = {"class_il": ("class-IL", "task-IL"), "task_il": ("class-IL", "task-IL"),
               "domain_il": ("domain-IL", "task-IL")}


def views(scenario: str) -> list[tuple[str, str, str]]:
    """The two accuracy views of a run, headline first: (label, results key of the matrix, metrics suffix).

    The headline follows the scenario: task-IL streams lead with the task-IL matrix (the task id is part of the
    protocol); class-IL and domain-IL streams lead with the task-agnostic one (domain-IL: every task has every
    class, so task-agnostic prediction is the domain-IL accuracy)."""
    agnostic, given = VIEW_LABELS.get(scenario, VIEW_LABELS["class_il"])
    pair = [(agnostic, "acc_matrix", ""), (given, "acc_matrix_task_il", "_task_il")]
    return pair[::-1] if scenario == "task_il" else pair


def write_plots(run_dir: Path, R: list[list[float]], R_til: list[list[float]], title: str,
                scenario: str = "class_il") -> list[Path]:
    """accuracy_curve.png, acc_matrix.png (task-agnostic), acc_matrix_task_il.png, forgetting.png.

    Tasks are numbered from 0 everywhere (as in the summary, metrics.csv and checkpoints); every title names the
    run (``title``, e.g. "er on split_digits")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    agnostic, given = VIEW_LABELS.get(scenario, VIEW_LABELS["class_il"])
    order = [(agnostic, R, "o-"), (given, R_til, "s--")]
    if scenario == "task_il":
        order.reverse()
    steps = list(range(len(R)))
    paths = []

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, matrix, style in order:
        ax.plot(steps, [100 * sum(matrix[i][: i + 1]) / (i + 1) for i in range(len(matrix))], style, label=label)
    ax.set(xlabel="after training task i", ylabel="average accuracy on tasks 0..i (%)", ylim=(0, 101),
           title=f"{title}\naverage accuracy on the tasks seen")
    ax.set_xticks(steps)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(run_dir / "accuracy_curve.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    T = len(R[0])
    for name, label, matrix in [("acc_matrix.png", agnostic, R), ("acc_matrix_task_il.png", given, R_til)]:
        fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + 0.55 * T), 1.4 + 0.5 * len(matrix)))
        im = ax.imshow([[100 * a for a in row] for row in matrix], vmin=0, vmax=100, cmap="viridis", aspect="auto")
        if T <= 12:
            for i, row in enumerate(matrix):
                for j, a in enumerate(row):
                    ax.text(j, i, f"{100 * a:.0f}", ha="center", va="center", fontsize=8,
                            color="white" if a < 0.6 else "black")
        ax.set(xlabel="evaluated on task j", ylabel="after training task i",
               title=f"{title}\n{label} accuracy R[i][j] (%)")
        if T <= 25:
            ax.set_xticks(range(T))
            ax.set_yticks(range(len(matrix)))
        fig.colorbar(im, ax=ax, fraction=0.05)
        fig.tight_layout()
        paths.append(run_dir / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    width = 0.4
    xs = list(range(len(R)))
    for k, (label, matrix, _) in enumerate(order):
        f = [100 * v for v in M.forgetting_per_task(matrix)]
        ax.bar([x + (k - 0.5) * width for x in xs], f, width, label=label)
    ax.set(xlabel="task j", ylabel="forgetting: best - final accuracy (pp)",
           title=f"{title}\nforgetting per task")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    paths.append(run_dir / "forgetting.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _fmt(value) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}"


def trained_metrics(results: dict) -> dict:
    """Metrics over the tasks trained so far only (a partial run: the first ``completed_tasks`` rows and columns)."""
    n = len(results["acc_matrix"])
    out = {}
    for _, key, suffix in views(results["stream"].get("scenario", "class_il")):
        R = [row[:n] for row in results[key]]
        init_key = "acc_init" + suffix
        R0 = (results.get(init_key) or [0.0] * n)[:n]
        out.update(M.all_metrics(R, R0, suffix))
    return out


METRIC_LABELS = [("final_acc", "final accuracy"), ("avg_incremental_acc", "avg incremental acc"),
                 ("forgetting", "forgetting"), ("bwt", "BWT"), ("fwt", "FWT")]


def summary(results: dict) -> str:
    """The table printed at the end of a run (and kept in the run's log).

    The headline matrix and the first metrics column follow the stream's scenario (see :func:`views`). A partial
    run (``trainer.max_tasks``, or interrupted) says so and reports its metrics over the trained tasks; the
    metrics over every task of the stream (untrained ones included) are in results.json."""
    stream = results["stream"]
    scenario = stream.get("scenario", "class_il")
    shown = views(scenario)
    R_head = results[shown[0][1]] if shown[0][1] in results else results["acc_matrix"]
    n_done, T = len(R_head), stream["n_tasks"]
    partial = n_done < T
    m = trained_metrics(results) if partial and "acc_matrix_task_il" in results else results["metrics"]
    cols = n_done if partial else len(R_head[0])
    lines = [f"\n{results['method']} on {stream['name']} ({scenario}, {T} tasks, seed {results['seed']})"]
    if partial:
        lines.append(f"PARTIAL RUN: {n_done} of {T} tasks trained; metrics below are over the {n_done} trained "
                     f"tasks only (continue with resume=true and the same hydra.run.dir)")
    lines += [f"{shown[0][0]} accuracy (%), row = after task i, column = task j"
              + (f" (trained tasks 0..{n_done - 1})" if partial else "") + ":",
              "      " + "".join(f"{j:>7}" for j in range(cols))]
    for i, row in enumerate(R_head):
        lines.append(f"{i:>5} " + "".join(f"{100 * a:7.1f}" for a in row[:cols]))
    lines.append(f"{'':<22}" + "".join(f"{label:>10}" for label, _, _ in shown)
                 + (f"   (over tasks 0..{n_done - 1})" if partial else ""))
    for key, label in METRIC_LABELS:
        lines.append(f"{label:<22}" + "".join(f"{_fmt(m.get(key + suffix)):>10}" for _, _, suffix in shown))
    sizes = stream.get("test_sizes") or []
    if m.get("avg_incremental_acc_seen") is not None and len(set(sizes)) > 1:  # tasks of different sizes
        lines.append(f"{'avg incr. (seen samples)':<22}{_fmt(m['avg_incremental_acc_seen']):>10}")
    mem = results["memory"]
    line = f"memory kept: {mem['total_bytes']:,} bytes ({mem['total_bytes'] / 2**20:.3f} MB)"
    if mem.get("budget_bytes"):
        line += (f"; counted against the budget: {mem['budgeted_bytes']:,} of {mem['budget_bytes']:,} bytes"
                 f"{'' if mem.get('count_model') else ' (model not counted)'}")
    line += "  [" + ", ".join(f"{k} {v:,}" for k, v in mem["by_category"].items() if v) + "]"
    lines.append(line)
    budget = mem.get("budget_bytes")
    counted = [lg.get("budgeted_bytes", 0) for lg in mem.get("per_task") or []] + [mem.get("budgeted_bytes", 0)]
    if budget and (mem.get("violations") or max(counted) > budget):
        worst = max(counted)
        lines.append(f"OVER BUDGET: up to {worst:,} bytes counted against a budget of {budget:,} "
                     f"({worst / budget:.2f}x; budget.enforce=false recorded it instead of stopping; "
                     f"{len(mem.get('violations') or [])} violation(s) in results.json memory.violations)")
    for buf in mem.get("buffers") or []:
        lines.append(f"exemplar slots: {buf['filled']:,} filled of {buf['capacity']:,} allocated"
                     + (f" ({buf['capacity'] - buf['filled']:,} empty slots are allocated and paid for)"
                        if buf["filled"] < buf["capacity"] else "")
                     + (f" [{buf['name']}]" if buf.get("name") else ""))
    t = results["time"]
    lines.append(f"time: train {t['train_s']:.1f}s, eval {t['eval_s']:.1f}s")
    return "\n".join(lines)


class ProgressLines:
    """Progress when no bar can be drawn (output piped or logged): a line every ``every_s`` seconds, e.g.
    ``task 3: epoch 1/5, step 1,200/6,000 (20%), loss 0.412, 850 samples/s, ETA 1m 34s``."""

    def __init__(self, task_id: int, epochs: int, total_steps: int, every_s: float = 30.0, echo=print):
        self.task_id, self.epochs, self.total = task_id, epochs, max(total_steps, 1)
        self.every_s, self.echo = float(every_s), echo
        self.started = self.last = time.perf_counter()

    def update(self, steps_done: int, samples: int, epoch: int, loss: float) -> bool:
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return False
        self.last = now
        elapsed = now - self.started
        eta = elapsed * (self.total - steps_done) / max(steps_done, 1)
        self.echo(f"task {self.task_id}: epoch {epoch + 1}/{self.epochs}, step {steps_done:,}/{self.total:,} "
                  f"({100 * steps_done / self.total:.0f}%), loss {loss:.3f}, {samples / elapsed:.0f} samples/s, "
                  f"ETA {_duration(eta)}", flush=True)
        return True


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
