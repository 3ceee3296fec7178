"""`bert-jax glue` (fine-tune and evaluate on GLUE) and `bert-jax predict` (use the result).

    bert-jax glue --task RTE,MRPC --model bert-base-cased --data-dir glue_data \\
        --workdir runs/glue --lrs 2e-5,3e-5 --seeds 1,2,3
    bert-jax glue --task all --model runs/pretrain --data-dir glue_data --workdir runs/glue \\
        --predict-test --export runs/glue/export
    bert-jax predict --model runs/glue/export/RTE "A man is playing." "Somebody plays."
    bert-jax predict --model runs/glue/RTE/lr2e-05_seed1 --input pairs.tsv --json

`glue` runs every task x lr x seed in <workdir>/<task>/lr<lr>_seed<seed>/ (a rerun skips
finished runs), picks each task's lr on dev, and writes summary.json, results.md/.csv/.png;
it prints the table (the summary with --json). `predict` takes a fine-tuned model (an
exported directory or a run kept with --config.save_checkpoint=True) and prints the label
and probabilities (the score for STS-B) of each text or pair; --input reads a TSV file, one
example a line (`A` or `A<TAB>B`).

`--config.packing=True` (glue) and `--packing` (predict) put several examples in each row
instead of one padded row each (bert_jax/glue/packed.py): the same recipe, steps and
predictions on fewer computed tokens.

Both keep every compiled program in the persistent compilation cache (bert_jax/runtime.py;
$BERT_JAX_CACHE, else ~/.cache/bert-jax/xla): a sweep run again, with more seeds or on the
same model, and a repeated `predict` compile nothing. JAX_ENABLE_COMPILATION_CACHE=false
turns it off.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bert_jax.cli import add_common
from bert_jax.errors import UserError

DEFAULT_CONFIG = "configs/glue.py:default"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("glue", help="fine-tune and evaluate on GLUE tasks (lr x seed sweeps)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, config=DEFAULT_CONFIG, model=True, json=True,
               workdir="directory for the runs (<task>/lr<lr>_seed<seed>/) and the reports; "
                       "finished runs there are kept, unfinished ones start over")
    p.add_argument("--task", required=True,
                   help="a GLUE task (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI), "
                        "a comma list, or all")
    p.add_argument("--data-dir", required=True,
                   help="the GLUE data in its original layout (CoLA/train.tsv, ...)")
    p.add_argument("--lrs", help="comma list of learning rates (default: the config's, "
                                 "5e-5,4e-5,3e-5,2e-5)")
    p.add_argument("--seeds", help="comma list of seeds (default: the config's, 1)")
    p.add_argument("--predict-test", action="store_true",
                   help="predict the test sets with each task's best run: <workdir>/submission/ "
                        "and submission.zip for gluebenchmark.com (AX by the MNLI model)")
    p.add_argument("--export", metavar="DIR",
                   help="write each task's best run to DIR/<task>/ as HF safetensors "
                        "(BertForSequenceClassification); keeps the runs' checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_glue)

    p = sub.add_parser("predict", help="label new text with a fine-tuned GLUE model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, model=True, json=True)
    p.add_argument("--task", help="the task (default: the one the model was fine-tuned on)")
    p.add_argument("texts", nargs="*", metavar="TEXT",
                   help="one text per example; a pair task takes TEXT TEXT_B")
    p.add_argument("--input", metavar="FILE",
                   help="a TSV file: one example a line, `A` or `A<TAB>B`")
    p.add_argument("--max-length", type=int, default=128,
                   help="tokens per example, longer ones truncated (default 128)")
    p.add_argument("--packing", action="store_true",
                   help="several examples per row of --max-length tokens (the same "
                        "predictions; less padding computed for many short examples)")
    p.set_defaults(func=run_predict)


def run_glue(args: argparse.Namespace) -> int:
    from bert_jax import configlib, files, runtime
    from bert_jax.glue import reports, sweep

    # Everything the command line says is checked before a model is loaded.
    tasks = sweep.parse_tasks(args.task)
    lrs = sweep.parse_lrs(args.lrs) if args.lrs is not None else None
    seeds = sweep.parse_seeds(args.seeds) if args.seeds is not None else None
    if not Path(args.data_dir).is_dir():
        raise UserError(f"--data-dir {args.data_dir} is not a directory (expected the GLUE "
                        "layout: CoLA/, SST-2/, ...)")
    files.check_writable_dir(args.workdir, "--workdir", create=False)
    config = configlib.load(args.config, args.config_overrides, like=DEFAULT_CONFIG)
    sweep.check_config(config)
    runtime.enable_compilation_cache()
    summary = sweep.sweep(config, tasks, args.model, args.data_dir, args.workdir, lrs=lrs,
                               seeds=seeds, predict_test=args.predict_test, export=args.export,
                               progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(reports.markdown(summary), end="")
    return 0


def read_examples(args: argparse.Namespace, paired: bool) -> list[tuple[str, str | None]]:
    """The examples of `predict`: TEXT arguments, then the lines of --input."""
    examples: list[tuple[str, str | None]] = []
    if args.texts:
        if paired and len(args.texts) != 2:
            raise UserError(f"this task takes sentence pairs: give TEXT TEXT_B (got "
                            f"{len(args.texts)} texts), or --input FILE with A<TAB>B lines")
        examples += [(args.texts[0], args.texts[1])] if paired else [(t, None) for t in args.texts]
    if args.input:
        from bert_jax import files

        path = Path(args.input)
        width = 2 if paired else 1
        for lineno, line in enumerate(files.read_text(path, "--input file").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != width:
                raise UserError(f"{path}:{lineno}: expected {width} tab-separated column"
                                f"{'s (A, B)' if paired else ' (the text)'}, found {len(fields)}")
            examples.append((fields[0], fields[1] if paired else None))
    if not examples:
        raise UserError("no input: give TEXT arguments or --input FILE")
    return examples


def run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from bert_jax import runtime
    from bert_jax.glue import classifier
    from bert_jax.glue.features import featurize
    from bert_jax.glue.tasks import Example

    if args.max_length < 3:  # before the model loads
        raise UserError(f"--max-length {args.max_length}: must be at least 3 ([CLS] x [SEP])")
    runtime.enable_compilation_cache()
    task, model = classifier.load_classifier(args.model, args.task)
    paired = next(iter(task.layouts.values())).text_b is not None
    examples = read_examples(args, paired)
    rows = [Example(str(i), a, b, None) for i, (a, b) in enumerate(examples)]
    features = featurize(rows, model.tokenizer, max_length=args.max_length)
    logits = classifier.classify(model, features, packing=args.packing)
    if task.is_regression:
        scores = classifier.to_predictions(task, logits)
        probs = None
    else:
        z = logits - logits.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    if not args.json:
        head = "score" if probs is None else "label".ljust(16) + " ".join(
            f"{'p(' + name + ')':>10}" for name in task.labels)
        print(f"{head}  text")
    for i, (a, b) in enumerate(examples):
        shown = a if b is None else f"{a} ||| {b}"
        if probs is None:
            out = {"text": a, "text_b": b, "task": task.name, "score": float(scores[i])}
            line = f"{scores[i]:5.3f}  {shown}"
        else:
            label = task.labels[int(probs[i].argmax())]
            out = {"text": a, "text_b": b, "task": task.name, "label": label,
                   "probabilities": {n: float(p) for n, p in zip(task.labels, probs[i])}}
            line = label.ljust(16) + " ".join(f"{p:10.4f}" for p in probs[i]) + f"  {shown}"
        print(json.dumps(out, ensure_ascii=False) if args.json else line)
    sys.stdout.flush()
    return 0
