r"""Runs (or resumes) an ablation study of the pre-training recipe.

  python -m experiments.run_ablation --config experiments/ablation.py:cpu \
      --study-dir runs/ablation-cpu --results experiments/results

Pre-trains every variant once per pre-training seed with the same budget, scores it on
held-out MLM, fine-tunes it on GLUE with `bert-jax glue`, and writes the tables (means,
95% intervals, tests against mlm_nsp) and plots to <study-dir>/results after each seed
and to --results at the end. Rerun the same command after a kill: finished stages are skipped and an
unfinished pre-training resumes from its checkpoint. Any study field can be overridden
with --config.FIELD=VALUE (e.g. --config.glue.seeds=(1,2,3,4,5)); see
experiments/ablation.py for the fields and experiments/variants.py for the variants.
Each finished run's record goes to <results>/runs/ (experiments/records.py) and the table
and plots are rewritten from the records after each run: commit them as they land. On a
fresh checkout (the study directory gone) the same command makes the shared data again,
checks it against the records and runs only what they lack. The report shows the
config's variants (and any other run) with every recorded seed, so a session may run some
variants or seeds ahead (--variants mlm_nsp,random_init --config.seeds=(0,1,2,3,4)).
--report-only writes the table and plots from the records alone and runs nothing;
with --readme README.md it also copies ablation.md into the README's report block.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bert_jax import configlib, files
from bert_jax.errors import EXIT_RESUMABLE, Stopped, UserError
from experiments import report, variants
from experiments import study as study_lib


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="python -m experiments.run_ablation", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/ablation.py:cpu",
                   help="study config, FILE[:ARG]")
    p.add_argument("--study-dir", default=None,
                   help="where data, runs and state.json go (outside the repo or in runs/); "
                        "not needed with --report-only")
    p.add_argument("--results", default=None,
                   help="where the run records (runs/), the table and the plots go "
                        "(default <study-dir>/results)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated, from: {', '.join(variants.VARIANTS)} "
                        "(default: the config's `variants`)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None,
                        help="pre-training steps per variant (budget.steps)")
    budget.add_argument("--minutes", type=float, default=None,
                        help="pre-training minutes of the base variant, turned into a step "
                             "count every variant gets (budget.minutes)")
    p.add_argument("--no-glue", action="store_true",
                   help="stop before GLUE (rerun without it later to add GLUE)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true",
                   help="write the table and plots from the records in --results; run nothing")
    p.add_argument("--readme", default=None,
                   help="with --report-only: copy ablation.md into this file's report block")
    overrides = [a for a in argv if a.startswith("--config.")]
    args = p.parse_args([a for a in argv if not a.startswith("--config.")])
    if args.study_dir is None and not (args.report_only and args.results):
        p.error("--study-dir is required (with --report-only: --study-dir or --results)")
    if args.readme and not args.report_only:
        p.error("--readme goes with --report-only (a running study leaves the README alone)")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("experiments").setLevel(logging.INFO)
    try:
        study = configlib.load(args.config, overrides)
        if args.steps is not None:
            study.budget.steps, study.budget.minutes = args.steps, 0.0
        if args.minutes is not None:
            study.budget.minutes = args.minutes
        # --variants runs some variants (ahead of the others); the report shows the
        # config's variants whatever runs
        names = variants.names(args.variants or study.variants)
        if args.report_only:
            results = Path(args.results or f"{args.study_dir}/results")
            rows = study_lib.write_report(study, names, results)
            if args.readme:
                readme = Path(args.readme)
                try:
                    text = report.embed(readme.read_text(), (results / "ablation.md").read_text())
                except (OSError, ValueError) as e:
                    raise UserError(f"--readme {readme}: {e}") from e
                files.write_text_atomic(readme, text)
        else:
            rows = study_lib.run_study(study, args.study_dir, names, args.results,
                                       glue=not args.no_glue, progress=not args.no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stopped as stopped:  # SIGTERM / Ctrl-C during a pre-training: it saved a step
        print(f"stopped ({stopped}); rerun the same command to resume", file=sys.stderr)
        return EXIT_RESUMABLE
    for row in rows:
        acc = [r["eval_mlm_accuracy"] for r in row["runs"].values()]
        mean = f"{sum(acc) / len(acc):.4f}" if acc else "–"
        print(f"{row['variant']:>16}  {len(acc)} seeds  mean held-out MLM acc {mean}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
