"""`bert-jax fill-mask | embed | nsp | attention`: use a model from the command line.

    bert-jax fill-mask --model bert-base-cased "Hello I'm a [MASK] model." --top-k 5
    bert-jax embed --model DIR --layer -1 --pooling mean --json --input sentences.txt
    bert-jax embed --model DIR --pooling mean --packing --input many_short_sentences.txt
    bert-jax nsp --model DIR --pair "The man went out." "He bought milk."
    echo "A sentence. ||| The next one." | bert-jax nsp --model DIR -
    bert-jax attention --model DIR "The cat sat on the mat." --layer 3 --plot attn.png

`--packing` (fill-mask, embed, nsp) puts several texts in each row of the model's input
instead of padding each to its own: faster for many short texts, the same results.

Texts come from the arguments, from `--input FILE` (one per line, blank lines skipped)
and from stdin when an argument is `-`. `--json` prints one JSON object per text.
Compiled programs go to the persistent compilation cache (bert_jax/runtime.py), so running
a command again compiles nothing; JAX_ENABLE_COMPILATION_CACHE=false turns it off.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any

from bert_jax import cli
from bert_jax.errors import UserError

PAIR_SEPARATOR = "|||"


def register(subparsers: argparse._SubParsersAction) -> None:
    def add(name: str, help_: str, run: Callable[[argparse.Namespace], int],
            texts: bool = True) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_, description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        cli.add_common(p, model=True, json=True)
        p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                       help="compute dtype (default float32; scores are always float32)")
        p.add_argument("--strict", action="store_true",
                       help="fail on a text longer than the model instead of truncating it")
        if texts:
            p.add_argument("texts", nargs="*", metavar="TEXT", help="input texts; - reads stdin")
            p.add_argument("--input", metavar="FILE", help="a file of texts, one per line")
            p.add_argument("--packing", action="store_true",
                           help="pack several texts into each row (fewer padded tokens; "
                                "the same results)")
        p.set_defaults(func=run)
        return p

    p = add("fill-mask", "predict the [MASK] tokens of texts", run_fill_mask)
    p.add_argument("--top-k", type=int, default=5, help="predictions per [MASK] (default 5)")

    p = add("embed", "hidden states of any layer, pooled", run_embed)
    p.add_argument("--layer", type=int, default=-1,
                   help="0 = embeddings output, N = after block N, -1 = last (default)")
    p.add_argument("--pooling", default="cls", choices=("cls", "mean", "tokens"),
                   help="cls vector, mean over tokens, or every token (default cls)")

    p = add("nsp", "probability that sentence B follows sentence A", run_nsp)
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help=f"a sentence pair (repeatable); a TEXT may also be 'A {PAIR_SEPARATOR} B'")

    p = add("attention", "attention maps of one text", run_attention, texts=False)
    p.add_argument("text", metavar="TEXT", help="the text (segment A)")
    p.add_argument("--pair", metavar="B", help="a second segment")
    p.add_argument("--layer", type=int, default=-1,
                   help="transformer block 1..num_layers, or -1 for the last (default)")
    p.add_argument("--average", action="store_true", help="average the heads into one map")
    p.add_argument("--plot", metavar="PNG", help="write a heat map per head (or the average)")


# ---- shared helpers ---------------------------------------------------------------------

def read_texts(args: argparse.Namespace) -> list[str]:
    """TEXT arguments (`-` = stdin lines) then --input FILE lines; blank lines skipped."""
    texts: list[str] = []
    for t in args.texts:
        if t == "-":
            texts += [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
        else:
            texts.append(t)
    if getattr(args, "input", None):
        from bert_jax import files

        texts += [line.rstrip("\r\n") for line in
                  files.read_text(args.input, "--input file").splitlines() if line.strip()]
    return texts


def load_predictor(args: argparse.Namespace):
    """The model `--model` names, as a `Predictor` (its programs cached on disk)."""
    from bert_jax import runtime, weights
    from bert_jax.inference import Predictor

    runtime.enable_compilation_cache()  # before the loading compiles anything
    loaded = weights.load_pretrained(args.model, head="auto")
    if loaded.tokenizer is None:
        raise UserError(f"{args.model} has no vocab.txt or tokenizer.json: put the model's "
                        "vocabulary next to its weights")
    return Predictor(loaded.config, loaded.params, loaded.tokenizer, dtype=args.dtype)


def run_quietly(fn: Callable[[], Any]) -> Any:
    """Calls fn; its warnings (e.g. truncation) become one `warning: ...` line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return result


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, ensure_ascii=False))


# ---- subcommands ------------------------------------------------------------------------

def run_fill_mask(args: argparse.Namespace) -> int:
    texts = read_texts(args)
    if not texts:
        raise UserError("no input: give TEXT arguments with [MASK], --input FILE, or - for stdin")
    predictor = load_predictor(args)
    results = run_quietly(lambda: predictor.fill_mask(texts, args.top_k, strict=args.strict,
                                                       packing=args.packing))
    for n, (text, masks) in enumerate(zip(texts, results), 1):
        if args.json:
            emit({"text": text, "masks": masks})
            continue
        print(f"{'' if n == 1 else chr(10)}{text}")
        print(f"  {'mask':>4} {'rank':>4}  {'token':<16} {'score':>8} {'id':>7}")
        for m, top in enumerate(masks, 1):
            for rank, r in enumerate(top, 1):
                print(f"  {m:>4} {rank:>4}  {r['token_str']:<16} {r['score']:8.4f} "
                      f"{r['token_id']:>7}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    texts = read_texts(args)
    if not texts:
        raise UserError("no input: give TEXT arguments, --input FILE, or - for stdin")
    predictor = load_predictor(args)
    out = run_quietly(lambda: predictor.embed(texts, args.layer, args.pooling,
                                              strict=args.strict, packing=args.packing))
    for text, vectors in zip(texts, out):
        if args.pooling == "tokens":
            ids = predictor.tokenizer.encode(text, max_length=predictor.buckets.max_length).ids
            tokens = [predictor.tokenizer.id_to_token(i) for i in ids]
            if args.json:
                emit({"text": text, "layer": args.layer, "pooling": "tokens", "tokens": tokens,
                      "embeddings": vectors.tolist()})
                continue
            print(text)
            for token, v in zip(tokens, vectors):
                print(f"  {token:<16} {_preview(v)}")
        elif args.json:
            emit({"text": text, "layer": args.layer, "pooling": args.pooling,
                  "embedding": vectors.tolist()})
        else:
            print(f"{_preview(vectors)}  {text}")
    return 0


def _preview(v) -> str:
    import numpy as np

    head = " ".join(f"{x:+.4f}" for x in v[:4])
    return f"dim {len(v)}  norm {float(np.linalg.norm(v)):8.4f}  [{head} ...]"


def read_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    pairs = [tuple(p) for p in args.pair]
    for t in read_texts(args):
        if t.count(PAIR_SEPARATOR) != 1:
            raise UserError(f"not a sentence pair: {t!r}; write 'A {PAIR_SEPARATOR} B' "
                            "or use --pair A B")
        a, b = (s.strip() for s in t.split(PAIR_SEPARATOR))
        pairs.append((a, b))
    if not pairs:
        raise UserError("no input: give --pair A B, 'A ||| B' texts, --input FILE, or -")
    return pairs


def run_nsp(args: argparse.Namespace) -> int:
    pairs = read_pairs(args)
    predictor = load_predictor(args)
    probs = run_quietly(lambda: predictor.nsp(pairs, strict=args.strict,
                                              packing=args.packing))
    if not args.json:
        print(f"{'P(IsNext)':>9}  A {PAIR_SEPARATOR} B")
    for (a, b), p in zip(pairs, probs):
        if args.json:
            emit({"a": a, "b": b, "is_next": float(p)})
        else:
            print(f"{p:9.4f}  {a} {PAIR_SEPARATOR} {b}")
    return 0


def run_attention(args: argparse.Namespace) -> int:
    if not args.text.strip():
        raise UserError("no input: give the TEXT whose attention to show")
    predictor = load_predictor(args)
    layers = predictor.config.num_hidden_layers
    if args.layer == 0 or not -layers <= args.layer <= layers:
        raise UserError(f"layer {args.layer} does not exist: choose 1..{layers} or -1 for the "
                        "last")
    layer = args.layer - 1 if args.layer > 0 else layers + args.layer
    probs, tokens = run_quietly(lambda: predictor.attention(args.text, args.pair,
                                                            strict=args.strict))
    maps = probs[layer]  # [heads, n, n]
    if args.average:
        maps = maps.mean(0, keepdims=True)
    if args.plot:
        plot_attention(maps, tokens, args.plot, title=f"layer {layer + 1}", average=args.average)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        emit({"text": args.text, "pair": args.pair, "tokens": tokens, "layer": layer + 1,
              "heads": "average" if args.average else list(range(len(maps))),
              "attentions": maps.round(6).tolist()})
    elif not args.plot:
        # The head average as a table: row = query token, columns = attended tokens.
        mean = maps.mean(0)
        width = max(6, *(len(t) for t in tokens))
        print(f"layer {layer + 1}, mean over heads; row attends to column")
        print(" " * width + " " + " ".join(f"{t[:6]:>6}" for t in tokens))
        for token, row in zip(tokens, mean):
            print(f"{token:<{width}} " + " ".join(f"{x:6.2f}" for x in row))
    return 0


def plot_attention(maps, tokens: list[str], path: str, *, title: str, average: bool) -> None:
    """A heat map per head (or one for the average), tokens on both axes, to a PNG."""
    import math

    from matplotlib.figure import Figure  # no pyplot: no global figure state

    heads = len(maps)
    cols = min(heads, 4)
    rows = math.ceil(heads / cols)
    side = max(3.0, 0.25 * len(tokens))
    fig = Figure(figsize=(cols * side, rows * side + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= heads:
            ax.axis("off")
            continue
        ax.imshow(maps[h], cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title("mean over heads" if average else f"head {h + 1}", fontsize=9)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    fig.suptitle(f"attention, {title} (row attends to column)")
    from bert_jax import files

    try:
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
