"""The study's results: one table (markdown + CSV) and two plots, read from the workdirs.

Every number comes from a file under the study directory: the pre-training
`metrics.jsonl` (last train record; curves), `<variant>/eval.json` (held-out MLM/NSP),
`<variant>/glue/summary.json` (GLUE dev scores over seeds), and `state.json` (steps,
wall-clock). Written to `results_dir`:
  ablation.md, ablation.csv   a row per variant
  curves.png                  pre-training curves of every variant, overlaid
  glue.png                    GLUE dev score per task and variant, seed spread as error bars
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from bert_jax import files
from bert_jax.train.writer import read_metrics
from experiments import variants


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def glue_tasks(summary: dict[str, Any]) -> dict[str, Any]:
    """Per-task entries of a `bert-jax glue` summary.json (`{"tasks": {...}, ...}`)."""
    return summary.get("tasks", summary) if isinstance(summary.get("tasks"), dict) else summary


def collect(study_dir: Path, names: list[str], state: Any) -> list[dict[str, Any]]:
    """One dict per variant: what the table shows, and where it came from."""
    rows = []
    for name in names:
        workdir = study_dir / name / "pretrain"
        train = read_metrics(workdir, "train")
        last = train[-1] if train else {}
        ev = _read_json(study_dir / name / "eval.json")
        summary = _read_json(study_dir / name / "glue" / "summary.json")
        glue = {task: {"metric": s["main_metric"], "mean": s["mean"], "std": s["std"],
                       "n": s["n_seeds"],
                       "values": [r["main_metric"] for r in s.get("runs", [])
                                  if r.get("lr") == s.get("best_lr")]}
                for task, s in glue_tasks(summary).items()}
        done = state.done(f"pretrain/{name}")
        rows.append({
            "variant": name,
            "overrides": variants.describe(name),
            "steps": state.result(f"pretrain/{name}")["steps"] if done else last.get("step"),
            "train_loss": last.get("loss"),
            "train_mlm_loss": last.get("masked_lm_loss"),
            "eval_mlm_loss": ev.get("masked_lm_loss"),
            "eval_mlm_accuracy": ev.get("masked_lm_accuracy"),
            "eval_nsp_accuracy": ev.get("next_sentence_accuracy"),
            "glue": glue,
            "glue_average": (sum(g["mean"] for g in glue.values()) / len(glue)
                             if glue else None),
            "pretrain_minutes": state.seconds(f"pretrain/{name}") / 60,
            "glue_minutes": state.seconds(f"glue/{name}") / 60,
            "workdir": str(workdir),
        })
    return rows


def _tasks(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(task, main metric) in first-seen order."""
    seen: dict[str, str] = {}
    for row in rows:
        for task, g in row["glue"].items():
            seen.setdefault(task, g["metric"])
    return list(seen.items())


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * scale:.{digits}f}"


def write(rows: list[dict[str, Any]], results_dir: Path, study_dir: Path) -> None:
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    tasks = _tasks(rows)
    write_csv(rows, tasks, results_dir / "ablation.csv")
    write_markdown(rows, tasks, results_dir / "ablation.md", study_dir)
    plot_curves(rows, results_dir / "curves.png")
    if tasks:
        plot_glue(rows, tasks, results_dir / "glue.png")


def write_csv(rows: list[dict[str, Any]], tasks: list[tuple[str, str]], path: Path) -> None:
    head = ["variant", "overrides", "steps", "train_loss", "train_mlm_loss", "eval_mlm_loss",
            "eval_mlm_accuracy", "eval_nsp_accuracy"]
    for task, metric in tasks:
        name = re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_")  # mean(f1,accuracy) -> ...
        head += [f"{task}_{name}_mean", f"{task}_{name}_std", f"{task}_seeds"]
    head += ["glue_average", "pretrain_minutes", "glue_minutes", "workdir"]
    with files.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(head)
        for r in rows:
            line = [r[k] for k in head[:8]]
            for task, _ in tasks:
                g = r["glue"].get(task, {})
                line += [g.get("mean"), g.get("std"), g.get("n")]
            line += [r["glue_average"], round(r["pretrain_minutes"], 2),
                     round(r["glue_minutes"], 2), r["workdir"]]
            out.writerow(["" if v is None else v for v in line])


def write_markdown(rows: list[dict[str, Any]], tasks: list[tuple[str, str]], path: Path,
                   study_dir: Path) -> None:
    head = ["variant", "overrides", "steps", "train MLM loss", "held-out MLM loss",
            "MLM acc %", "NSP acc %"]
    head += [f"{task} {metric}" for task, metric in tasks]
    head += ["GLUE avg", "pre-train min", "GLUE min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], f"`{r['overrides']}`", str(r["steps"] or "–"),
                 _fmt(r["train_mlm_loss"], digits=3), _fmt(r["eval_mlm_loss"], digits=3),
                 _fmt(r["eval_mlm_accuracy"], 100), _fmt(r["eval_nsp_accuracy"], 100)]
        for task, _ in tasks:
            g = r["glue"].get(task)
            cells.append(f"{g['mean']:.1f} ± {g['std']:.1f}" if g else "–")
        cells += [_fmt(r["glue_average"]), _fmt(r["pretrain_minutes"]),
                  _fmt(r["glue_minutes"])]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({g["n"] for r in rows for g in r["glue"].values()})
    notes = [
        "",
        "GLUE: dev-set score, mean ± std over "
        f"{'/'.join(map(str, seeds)) or '–'} fine-tuning seeds. Held-out MLM/NSP: the "
        "last checkpoint on the same held-out set for every variant (static 15% sub-word "
        "masks); NSP accuracy on its pairs (– for a model without an NSP head). Train MLM "
        "loss: on the variant's own training data, mean of the last logging window (the "
        "CSV also has the whole objective, `train_loss`).",
        f"Each row's files: `{study_dir}/<variant>/` (pretrain/config.json, "
        "pretrain/metrics.jsonl, eval.json, glue/summary.json).",
    ]
    files.write_text_atomic(path, "\n".join(lines + notes) + "\n")


def _colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Train MLM loss and held-out MLM loss, MLM accuracy, NSP accuracy against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train", "masked_lm_loss", "train MLM loss"),
              ("eval", "masked_lm_loss", "held-out MLM loss"),
              ("eval", "masked_lm_accuracy", "held-out MLM accuracy"),
              ("eval", "next_sentence_accuracy", "held-out NSP accuracy")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for row, color in zip(rows, _colors(len(rows))):
        for ax, (split, key, _) in zip(axes, panels):
            records = [r for r in read_metrics(row["workdir"], split) if r.get(key) is not None]
            if records:
                ax.plot([r["step"] for r in records], [r[key] for r in records],
                        label=row["variant"], color=color,
                        marker="o" if split == "eval" else None, markersize=3)
    for ax, (_, _, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_glue(rows: list[dict[str, Any]], tasks: list[tuple[str, str]], path: Path) -> None:
    """Grouped bars: a group per task, a bar per variant, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(2.2 * len(tasks) + 2, 4))
    for i, (row, color) in enumerate(zip(rows, _colors(len(rows)))):
        means = [row["glue"].get(t, {}).get("mean", math.nan) for t, _ in tasks]
        stds = [row["glue"].get(t, {}).get("std", 0.0) for t, _ in tasks]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=row["variant"], color=color,
               alpha=0.8)
        for x, (t, _) in zip(xs, tasks):  # the seeds themselves
            values = row["glue"].get(t, {}).get("values", [])
            ax.plot([x] * len(values), values, "k.", markersize=4)
    ax.set_xticks(range(len(tasks)), [f"{t}\n({m})" for t, m in tasks])
    ax.set_ylabel("dev score (mean ± std over seeds)")
    lows = [row["glue"][t]["mean"] - row["glue"][t]["std"] for row in rows
            for t, _ in tasks if t in row["glue"]]
    ax.set_ylim(max(0.0, min(lows, default=0.0) - 10), None)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
