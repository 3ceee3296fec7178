"""A sweep's summary and its reports: the per-task summary, markdown, CSV and plot.

    s = reports.summarize_task("RTE", runs, lrs=(2e-5, 3e-5))  # best lr on dev, mean ± std
    reports.write_reports(summary, "runs/glue")  # summary.json, results.md/.csv/.png

The learning rate of a task is chosen on dev by the mean over seeds of its main metric
(`metrics.main_metric`); mean ± std (sample std, ddof=1) and the best seed are reported at
that lr. The summary's layout is described in `sweep`'s docstring.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_jax import files
from bert_jax.glue.tasks import TaskSpec, get_task


def main_metric_name(task: str | TaskSpec) -> str:
    """What `mean`/`best` measure: `accuracy`, or `mean(f1,accuracy)` for two metrics."""
    metrics = get_task(task).metrics
    return metrics[0] if len(metrics) == 1 else f"mean({','.join(metrics)})"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


def summarize_task(task: str, runs: Sequence[dict[str, Any]],
                   lrs: Sequence[float]) -> dict[str, Any]:
    """One task's summary: the lr with the best mean main metric over seeds, and its runs."""
    by_lr = {}
    for lr in lrs:
        values = [r["main_metric"] for r in runs if r["lr"] == lr]
        mean, std = _mean_std(values)
        by_lr[f"{lr:g}"] = {"lr": lr, "mean": mean, "std": std, "n": len(values)}
    # max() keeps the first of equal means: ties go to the lr listed first.
    best_lr = max(lrs, key=lambda lr: by_lr[f"{lr:g}"]["mean"])
    chosen = [r for r in runs if r["lr"] == best_lr]
    best_run = max(chosen, key=lambda r: r["main_metric"])
    metrics = {}
    for m in get_task(task).metrics:
        mean, std = _mean_std([r["metrics"][m] for r in chosen])
        metrics[m] = {"mean": mean, "std": std}
    keep = ("lr", "seed", "main_metric", "metrics", "steps", "train_examples",
            "train_seconds", "wall_seconds", "nonfinite_steps", "dir")
    return {
        "main_metric": main_metric_name(task), "best_lr": best_lr,
        "mean": by_lr[f"{best_lr:g}"]["mean"], "std": by_lr[f"{best_lr:g}"]["std"],
        "best": best_run["main_metric"], "best_seed": best_run["seed"],
        "best_run": best_run["dir"], "n_seeds": len(chosen), "metrics": metrics,
        "by_lr": by_lr, "seconds": float(sum(r["wall_seconds"] for r in runs)),
        "runs": [{k: r[k] for k in keep if k in r} for r in runs]}


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())


def markdown(summary: dict[str, Any]) -> str:
    """The results table (one row per task, at its chosen lr) and the per-lr means."""
    lines = ["| task | metric | best lr | seeds | mean ± std | best | metrics (mean ± std) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in summary["tasks"].items():
        parts = ", ".join(f"{m} {v['mean']:.2f} ± {v['std']:.2f}" for m, v in s["metrics"].items())
        lines.append(f"| {name} | {s['main_metric']} | {s['best_lr']:g} | {s['n_seeds']} | "
                     f"{s['mean']:.2f} ± {s['std']:.2f} | {s['best']:.2f} | {parts} |")
    if summary.get("glue_score") is not None:
        lines += ["", f"GLUE score (dev, mean over seeds at each task's best lr): "
                      f"{summary['glue_score']:.2f}"]
    lines += ["", "| task | lr | seeds | mean ± std | runs |", "|---|---|---|---|---|"]
    for name, s in summary["tasks"].items():
        for key, v in s["by_lr"].items():
            runs = " ".join(f"{r['main_metric']:.2f}" for r in s["runs"] if f"{r['lr']:g}" == key)
            lines.append(f"| {name} | {key} | {v['n']} | {v['mean']:.2f} ± {v['std']:.2f} | "
                         f"{runs} |")
    return "\n".join(lines) + "\n"


def write_reports(summary: dict[str, Any], workdir: str | Path) -> None:
    """summary.json (atomically), results.md, results.csv and results.png in `workdir`."""
    workdir = Path(workdir)
    files.write_json_atomic(workdir / "summary.json", summary)
    files.write_text_atomic(workdir / "results.md", markdown(summary))
    files.write_text_atomic(workdir / "results.csv", to_csv(summary))
    plot(summary, workdir / "results.png")


def to_csv(summary: dict[str, Any]) -> str:
    """One row per run: task, lr, seed, main metric, each official metric, timings."""
    names = sorted({m for s in summary["tasks"].values() for r in s["runs"] for m in r["metrics"]})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["task", "lr", "seed", "main_metric", *names, "steps", "train_seconds",
                     "wall_seconds", "chosen_lr"])
    for task, s in summary["tasks"].items():
        for r in s["runs"]:
            writer.writerow([task, f"{r['lr']:g}", r["seed"], f"{r['main_metric']:.4f}",
                             *(f"{r['metrics'][m]:.4f}" if m in r["metrics"] else ""
                               for m in names),
                             r["steps"], f"{r['train_seconds']:.1f}", f"{r['wall_seconds']:.1f}",
                             int(r["lr"] == s["best_lr"])])
    return out.getvalue()


def plot(summary: dict[str, Any], path: str | Path) -> None:
    """Dev main metric of every run against lr (seeds as points, the mean as a line)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    tasks = list(summary["tasks"].items())
    cols = min(len(tasks), 3)
    rows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, s) in zip(axes.flat, tasks):
        lrs = sorted(v["lr"] for v in s["by_lr"].values())
        for seed in sorted({r["seed"] for r in s["runs"]}):
            points = sorted((r["lr"], r["main_metric"]) for r in s["runs"] if r["seed"] == seed)
            ax.scatter(*zip(*points), s=22, alpha=0.8, label=f"seed {seed}")
        ax.plot(lrs, [s["by_lr"][f"{lr:g}"]["mean"] for lr in lrs], color="0.3", lw=1,
                marker="_", markersize=16, label="mean")  # the marker shows a single lr's
        ax.axvline(s["best_lr"], color="0.6", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], minor=False)
        ax.minorticks_off()
        ax.set_title(f"{name}: {s['mean']:.1f} ± {s['std']:.1f} at lr {s['best_lr']:g}",
                     fontsize=9)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"dev {s['main_metric']}")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
