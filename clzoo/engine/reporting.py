"""What a run leaves behind besides results.json: metrics.csv, PNG plots, and the console summary."""
from __future__ import annotations

import csv
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


def write_plots(run_dir: Path, R: list[list[float]], R_til: list[list[float]], title: str) -> list[Path]:
    """accuracy_curve.png, acc_matrix.png, forgetting.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    steps = list(range(1, len(R) + 1))
    avg = [100 * sum(R[i][: i + 1]) / (i + 1) for i in range(len(R))]
    avg_til = [100 * sum(R_til[i][: i + 1]) / (i + 1) for i in range(len(R_til))]
    paths = []

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(steps, avg, "o-", label="class-IL")
    ax.plot(steps, avg_til, "s--", label="task-IL")
    ax.set(xlabel="tasks trained", ylabel="average accuracy on seen tasks (%)", ylim=(0, 101), title=title)
    ax.set_xticks(steps)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(run_dir / "accuracy_curve.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    T = len(R[0])
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * T, 1.0 + 0.5 * len(R)))
    im = ax.imshow([[100 * a for a in row] for row in R], vmin=0, vmax=100, cmap="viridis", aspect="auto")
    if T <= 12:
        for i, row in enumerate(R):
            for j, a in enumerate(row):
                ax.text(j, i, f"{100 * a:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if a < 0.6 else "black")
    ax.set(xlabel="evaluated on task j", ylabel="after training task i", title="class-IL accuracy R[i][j] (%)")
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    paths.append(run_dir / "acc_matrix.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    width = 0.4
    f_cil = [100 * f for f in M.forgetting_per_task(R)]
    f_til = [100 * f for f in M.forgetting_per_task(R_til)]
    xs = list(range(len(f_cil)))
    ax.bar([x - width / 2 for x in xs], f_cil, width, label="class-IL")
    ax.bar([x + width / 2 for x in xs], f_til, width, label="task-IL")
    ax.set(xlabel="task", ylabel="forgetting: best - final accuracy (pp)", title="forgetting per task")
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


def summary(results: dict) -> str:
    """The table printed at the end of a run."""
    R = results["acc_matrix"]
    T = len(R[0])
    m = results["metrics"]
    lines = [f"\n{results['method']} on {results['stream']['name']} ({results['stream']['scenario']}, "
             f"{results['stream']['n_tasks']} tasks, seed {results['seed']})",
             "class-IL accuracy (%), row = after task i, column = task j:",
             "      " + "".join(f"{j:>7}" for j in range(T))]
    for i, row in enumerate(R):
        lines.append(f"{i:>5} " + "".join(f"{100 * a:7.1f}" for a in row))
    lines.append(f"{'':<22}{'class-IL':>10}{'task-IL':>10}")
    for key, label in [("final_acc", "final accuracy"), ("avg_incremental_acc", "avg incremental acc"),
                       ("forgetting", "forgetting"), ("bwt", "BWT"), ("fwt", "FWT")]:
        lines.append(f"{label:<22}{_fmt(m.get(key)):>10}{_fmt(m.get(key + '_task_il')):>10}")
    if m.get("avg_incremental_acc_seen") is not None and results["stream"].get("test_sizes") and \
            len(set(results["stream"]["test_sizes"])) > 1:
        lines.append(f"{'avg incr. (seen samples)':<22}{_fmt(m['avg_incremental_acc_seen']):>10}")
    mem = results["memory"]
    lines.append(f"memory kept: {mem['total_bytes']:,} bytes ({mem['total_bytes'] / 2**20:.3f} MB)"
                 + (f"; counted against the budget: {mem['budgeted_bytes']:,} of {mem['budget_bytes']:,} bytes"
                    f"{'' if mem['count_model'] else ' (model not counted)'}" if mem.get("budget_bytes") else "")
                 + "  [" + ", ".join(f"{k} {v:,}" for k, v in mem["by_category"].items() if v) + "]")
    t = results["time"]
    lines.append(f"time: train {t['train_s']:.1f}s, eval {t['eval_s']:.1f}s")
    return "\n".join(lines)
