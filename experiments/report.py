"""The study's results: tables (markdown + CSV) and two plots, read from the run records.

Every number comes from the study's records (experiments/records.py), which sit beside
the report in `runs/`: each run's (`<variant>/seed<k>.json`) train MLM loss per log,
periodic held-out evaluations (the pair-task accuracy of the last one), the reference
held-out evaluation, the GLUE summary (dev score per task: the mean over the fine-tuning
seeds), steps and seconds; `study.json` for the frequent-token baseline and the seconds
of every stage. The pre-training seed is the unit: each metric gets a mean and 95% t
interval over seeds, and each variant a test against the base variant
(experiments/stats.py). Written to `results_dir`:
  ablation.md    the summary table, the verdicts, the baseline, how to read them
  ablation.csv   one row per run (variant, seed): the raw numbers behind the summary
  curves.png     held-out and train MLM loss and held-out MLM accuracy against step:
                 mean over seeds, the band its 95% t interval
  glue.png       dev score per task and variant: mean, 95% interval, the seeds as dots
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from bert_jax import files
from experiments import records, stats, variants

PAIR_METRICS = ("next_sentence_accuracy", "sentence_order_accuracy")
# held-out MLM accuracy on masked word starts and on `##` pieces (experiments/mlm_by_piece.py)
PIECES = ("start_accuracy", "continuation_accuracy")
# (key in a run, label, higher is better, scale for display)
MLM_METRICS = [("eval_mlm_loss", "held-out MLM loss", False, 1.0),
               ("eval_mlm_accuracy", "MLM acc %", True, 100.0)]


def _run(record: dict[str, Any], path: str) -> dict[str, Any]:
    """The numbers of one run's record (at `path`, relative to the results)."""
    evals = record["evals"]
    pair = next((evals[-1][k] for k in PAIR_METRICS if evals and k in evals[-1]), None)
    tasks = records.glue_tasks(record["glue"] or {})
    return {
        "steps": record["steps"],
        "train_mlm_loss": record["train"][-1]["masked_lm_loss"] if record["train"] else None,
        "eval_mlm_loss": record["heldout"].get("masked_lm_loss"),
        "eval_mlm_accuracy": record["heldout"].get("masked_lm_accuracy"),
        "pair_accuracy": pair,
        **{f"eval_{k}": record["heldout"].get(f"masked_lm_{k}") for k in PIECES},
        "glue": {task: s["mean"] for task, s in tasks.items()},
        "glue_metric": {task: s["main_metric"] for task, s in tasks.items()},
        "pretrain_minutes": record["seconds"]["pretrain"] / 60,
        "glue_minutes": record["seconds"]["glue"] / 60,
        "curves": {"train": record["train"], "eval": evals},
        "record": path,
    }


def collect(recs: records.Records, names: list[str]) -> list[dict[str, Any]]:
    """One dict per variant: `runs` {seed: numbers} of every recorded run of it."""
    rows = []
    for name in names:
        runs = {seed: _run(recs.run(f"{name}/seed{seed}"),
                           f"{recs.root.name}/{name}/seed{seed}.json")
                for seed in recs.seeds(name)}
        rows.append({"variant": name, "overrides": variants.describe(name), "runs": runs})
    return rows


def tasks_of(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(task, main metric) in first-seen order."""
    seen: dict[str, str] = {}
    for row in rows:
        for r in row["runs"].values():
            for task, metric in r["glue_metric"].items():
                seen.setdefault(task, metric)
    return list(seen.items())


def values(row: dict[str, Any], key: str, task: str | None = None) -> dict[int, float]:
    """{seed: value} of a metric (or of a task's score) over a variant's runs."""
    out = {}
    for seed, r in row["runs"].items():
        v = r["glue"].get(task) if task else r.get(key)
        if v is not None:
            out[seed] = float(v)
    return out


def compare(row: dict[str, Any], base: dict[str, Any], key: str, higher_is_better: bool,
            task: str | None = None) -> dict[str, Any]:
    """The variant against the base on one metric: difference of means, Welch p, the
    paired sign-flip p over their common seeds, the verdict."""
    x, y = values(row, key, task), values(base, key, task)
    common = sorted(x.keys() & y.keys())
    test = stats.welch(list(x.values()), list(y.values())) if x and y else None
    return {"diff": test.diff if test else math.nan, "p": test.p if test else math.nan,
            "p_sign_flip": stats.sign_flip([x[s] - y[s] for s in common]),
            "verdict": stats.verdict(list(x.values()), list(y.values()),
                                     higher_is_better=higher_is_better) if x and y else "–"}


def _metrics(tasks: list[tuple[str, str]]) -> list[tuple[str, str | None, str, bool, float]]:
    """(key, task, label, higher is better, display scale) of every compared metric."""
    return ([(k, None, label, hib, scale) for k, label, hib, scale in MLM_METRICS]
            + [("glue", t, f"{t} {m}", True, 1.0) for t, m in tasks])


def _digits(task: str | None, scale: float) -> int:
    """3 decimals for a loss, 1 for percentages and task scores."""
    return 3 if task is None and scale == 1.0 else 1


def _p_text(p: float, name: str = "p") -> str:
    """A p-value as the table prints it: 3 decimals, or a bound where they would read 0.000."""
    return f"{name} < 0.001" if p < 0.001 else f"{name} {p:.3f}"


def _cell(xs: dict[int, float], scale: float, digits: int) -> str:
    if not xs:
        return "–"
    mean, lo, hi = stats.interval(list(xs.values()))
    if math.isnan(lo):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


def write(rows: list[dict[str, Any]], results_dir: Path, recs: records.Records) -> None:
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    tasks = tasks_of(rows)
    study = recs.study() or {"shared": {}, "seconds": {}}
    baseline = study["shared"].get("baseline")
    write_csv(rows, tasks, results_dir / "ablation.csv")
    write_markdown(rows, tasks, baseline, results_dir / "ablation.md",
                   records.hours_by_kind(study["seconds"]))
    plot_curves(rows, results_dir / "curves.png", baseline)
    if tasks:
        plot_glue(rows, tasks, results_dir / "glue.png")


def write_csv(rows: list[dict[str, Any]], tasks: list[tuple[str, str]], path: Path) -> None:
    head = ["variant", "seed", "steps", "train_mlm_loss", "eval_mlm_loss", "eval_mlm_accuracy",
            "pair_accuracy", *[f"eval_{k}" for k in PIECES], *[t for t, _ in tasks],
            "pretrain_minutes", "glue_minutes", "record"]
    with files.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(head)
        for row in rows:
            for seed, r in sorted(row["runs"].items()):
                line = [row["variant"], seed, *[r[k] for k in head[2:9]],
                        *[r["glue"].get(t) for t, _ in tasks],
                        round(r["pretrain_minutes"], 2), round(r["glue_minutes"], 2),
                        r["record"]]
                out.writerow(["" if v is None else v for v in line])


def write_markdown(rows: list[dict[str, Any]], tasks: list[tuple[str, str]],
                   baseline: dict[str, Any] | None, path: Path, hours: dict[str, float]
                   ) -> None:
    metrics = _metrics(tasks)
    head = ["variant", "overrides", "steps", "seeds", *[m[2] for m in metrics],
            "pair acc %", "pre-train min/run", "GLUE min/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        runs = row["runs"].values()
        steps = sorted({r["steps"] for r in runs})
        cells = [row["variant"], f"`{row['overrides']}`",
                 "/".join(map(str, steps)) or "–", str(len(row["runs"]))]
        for key, task, _, _, scale in metrics:
            cells.append(_cell(values(row, key, task), scale, _digits(task, scale)))
        cells.append(_cell(values(row, "pair_accuracy"), 100.0, 1))
        for k in ("pretrain_minutes", "glue_minutes"):
            cells.append(f"{np.mean([r[k] for r in runs]):.1f}" if runs else "–")
        lines.append("| " + " | ".join(cells) + " |")

    base = next((r for r in rows if r["variant"] == variants.BASELINE), None)
    verdicts = []
    if base is not None:
        verdicts = [f"Against `{variants.BASELINE}` (Welch's t-test over pre-training seeds, "
                    f"two-sided, α = {stats.ALPHA}, per comparison; Δ = variant − "
                    f"{variants.BASELINE}; Holm: the p-value adjusted (Holm–Bonferroni) over "
                    "the row's tested metrics, so a verdict whose Holm value is not below α "
                    "may be one of the row's chance rejections; p_flip: exact paired "
                    "sign-flip test over common seeds, shown for reference: with n seeds it "
                    "cannot go below 2/2^n):", "",
                    "| variant | " + " | ".join(m[2] for m in metrics) + " |",
                    "|" + "---|" * (len(metrics) + 1)]
        for row in rows:
            if row is base:
                continue
            cells = [row["variant"]]
            compared = [compare(row, base, key, hib, task) for key, task, _, hib, _ in metrics]
            adjusted = stats.holm([c["p"] for c in compared])  # nan where untested
            for c, p_holm, (_, task, _, _, scale) in zip(compared, adjusted, metrics):
                if c["verdict"] == "–":
                    cells.append("–")
                    continue
                cells.append(f"**{c['verdict']}** (Δ {c['diff'] * scale:+.{_digits(task, scale)}f}"
                             f", {_p_text(c['p'])}, {_p_text(p_holm, 'Holm')}, "
                             f"p_flip {c['p_sign_flip']:.2f})")
            verdicts.append("| " + " | ".join(cells) + " |")
    notes = [""]
    if baseline:
        notes.append(
            f"Frequent-token baseline on the same held-out positions "
            f"({baseline['eval_positions']:,}): always the commonest training token "
            f"{baseline['accuracy'] * 100:.1f}% accuracy; the training unigram distribution "
            f"{baseline['loss']:.3f} loss (nats).")
    notes += [
        "",
        "Cells: mean over pre-training seeds [95% t interval]. Held-out MLM: the last "
        "checkpoint on one reference set for every variant (the base objective's held-out "
        "data, static 15% sub-word masks). Tasks: dev score, for each seed the mean over "
        "the fine-tuning seeds. Pair acc: NSP or SOP accuracy on the variant's own "
        "held-out pairs at the last periodic evaluation (– without a pair head).",
        "",
        *verdicts,
        "",
        *_pieces_table(rows),
        _time_note(hours),
        "",
        "Each run's record: `runs/<variant>/seed<k>.json` beside ablation.md (its curves, "
        "held-out and GLUE results, resolved config, seconds); ablation.csv has every run.",
    ]
    files.write_text_atomic(path, "\n".join(lines + notes) + "\n")


# the README's copy of ablation.md sits between these lines (`--report-only --readme`)
README_BEGIN = ("<!-- ablation report: experiments/results/ablation.md, copied by "
                "`python -m experiments.run_ablation --report-only --readme README.md` -->")
README_END = "<!-- end of ablation report -->"


def _split(readme: str) -> tuple[str, str, str] | None:
    """(up to and including README_BEGIN's line, the report, README_END onwards)."""
    head, begin, rest = readme.partition(README_BEGIN + "\n")
    body, end, tail = rest.partition(README_END)
    return (head + begin, body, end + tail) if begin and end else None


def embed(readme: str, report_md: str) -> str:
    """`readme` with the text between README_BEGIN and README_END replaced by `report_md`."""
    parts = _split(readme)
    if parts is None:
        raise ValueError(f"no `{README_BEGIN}` ... `{README_END}` block to write the report into")
    return parts[0] + report_md + parts[2]


def embedded(readme: str) -> str:
    """The report text between README_BEGIN and README_END ('' without the block)."""
    parts = _split(readme)
    return "" if parts is None else parts[1]


def _pieces_table(rows: list[dict[str, Any]]) -> list[str]:
    """Held-out MLM accuracy on masked word starts and on `##` pieces, per variant: a
    model pre-trained with whole-word masks never had to predict a `##` piece whose
    word start it could see, which the reference set's sub-word masks ask of it."""
    if not any(values(row, f"eval_{PIECES[0]}") for row in rows):
        return []
    lines = ["Held-out MLM accuracy % by masked piece (the same positions as the table: "
             "word starts and `##` continuation pieces; mean over seeds [95% t interval]):",
             "", "| variant | word starts | `##` pieces |", "|---|---|---|"]
    for row in rows:
        cells = [_cell(values(row, f"eval_{k}"), 100.0, 1) for k in PIECES]
        lines.append(f"| {row['variant']} | {cells[0]} | {cells[1]} |")
    return [*lines, ""]


def _time_note(hours: dict[str, float]) -> str:
    """The study's wall-clock time as the records hold it (every attempt of every stage
    in every study directory, including runs of variants or seeds outside this table)."""
    rest = sorted(kind for kind in hours if kind not in ("pretrain", "glue"))
    return (f"Study time: {sum(hours.values()):.1f} hours of wall clock, summed over every "
            f"attempt of every stage in the records: pre-training "
            f"{hours.get('pretrain', 0.0):.1f} h, GLUE {hours.get('glue', 0.0):.1f} h, "
            f"the rest ({', '.join(rest) or 'none'}) {sum(hours[k] for k in rest):.1f} h.")


def _colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def seed_band(curves: list[list[dict[str, Any]]], key: str
              ) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps present in every seed's curve, with the mean and 95% t interval over seeds
    (the interval is the mean itself for one seed)."""
    by_seed = [{r["step"]: r[key] for r in c if r.get(key) is not None} for c in curves]
    steps = sorted(set.intersection(*(set(d) for d in by_seed))) if by_seed else []
    mean, lo, hi = [], [], []
    for s in steps:
        m, a, b = stats.interval([d[s] for d in by_seed])
        mean.append(m)
        lo.append(m if math.isnan(a) else a)
        hi.append(m if math.isnan(b) else b)
    return steps, mean, lo, hi


def trailing_mean(curve: list[dict[str, Any]], key: str, steps: int
                  ) -> list[dict[str, Any]]:
    """`curve` with `key` replaced at each record by the mean of the records in the last
    `steps` steps (those with step in (s - steps, s]): per-log train losses are too noisy
    to read a seed band from."""
    points = [(r["step"], r[key]) for r in curve if r.get(key) is not None]
    out, start, total = [], 0, 0.0
    for end, (step, value) in enumerate(points):
        total += value
        while points[start][0] <= step - steps:
            total -= points[start][1]
            start += 1
        out.append({"step": step, key: total / (end + 1 - start)})
    return out


def plot_curves(rows: list[dict[str, Any]], path: Path,
                baseline: dict[str, Any] | None = None) -> None:
    """Held-out MLM loss, train MLM loss and held-out MLM accuracy against step: the mean
    over seeds, the band its 95% t interval; the frequent-token baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    smooth = 500  # steps averaged into each point of the train curve
    panels = [("eval", "masked_lm_loss", "held-out MLM loss", "loss"),
              ("train", "masked_lm_loss", f"train MLM loss (trailing mean of {smooth} steps)",
               "loss"),
              ("eval", "masked_lm_accuracy", "held-out MLM accuracy", "accuracy")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for row, color in zip(rows, _colors(len(rows))):
        for ax, (split, key, _, _) in zip(axes, panels):
            curves = [r["curves"][split] for r in row["runs"].values()]
            if split == "train":
                curves = [trailing_mean(c, key, smooth) for c in curves]
            steps, mean, lo, hi = seed_band([c for c in curves if c], key)
            if steps:
                ax.plot(steps, mean, color=color, label=f"{row['variant']} (n={len(curves)})",
                        marker="o" if split == "eval" else None, markersize=3)
                ax.fill_between(steps, lo, hi, color=color, alpha=0.2)
    for ax, (_, _, title, kind) in zip(axes, panels):
        if baseline:
            ax.axhline(baseline[kind], color="k", linestyle="--", linewidth=1,
                       label="frequent-token baseline")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_glue(rows: list[dict[str, Any]], tasks: list[tuple[str, str]], path: Path) -> None:
    """A panel per task: a bar per variant (mean over pre-training seeds), its 95% t
    interval as the error bar, each seed's score as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4), squeeze=False)
    colors = _colors(len(rows))
    for ax, (task, metric) in zip(axes[0], tasks):
        lows = []  # the axis starts 5 below the lowest dot or interval end
        for i, row in enumerate(rows):
            xs = list(values(row, "glue", task).values())
            if not xs:
                continue
            mean, lo, hi = stats.interval(xs)
            err = [[0.0], [0.0]] if math.isnan(lo) else [[mean - lo], [hi - mean]]
            lows += [*xs] if math.isnan(lo) else [*xs, lo]
            ax.bar(i, mean, 0.7, yerr=err, capsize=3, color=colors[i], alpha=0.8)
            ax.plot([i] * len(xs), xs, "k.", markersize=4)
        ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=45,
                      ha="right", fontsize=8)
        ax.set_title(f"{task} ({metric})")
        ax.set_ylim(max(0.0, min(lows, default=0.0) - 5), None)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
