"""`bert-jax create-data` (text -> pre-training shards) and `bert-jax train-vocab`."""

from __future__ import annotations

import argparse
import json

from bert_jax.cli import add_common

RELEASED_VOCAB = "bert-base-cased"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "create-data", help="make sharded MLM+NSP pre-training data from text",
        description="Turn text files into shards of pre-training instances "
                    "(google-research/bert's create_pretraining_data, parallel and "
                    "resumable). Re-running the same command continues an interrupted run.")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB",
                   help="text files or globs (quote globs)")
    p.add_argument("--output", required=True,
                   help="output directory for the dataset (re-running continues it)")
    p.add_argument("--vocab", default=None,
                   help="vocab.txt, or a model directory with tokenizer.json/vocab.txt "
                        f"(default: the released {RELEASED_VOCAB} vocab, from the HF cache "
                        "or the hub)")
    p.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="lower-case the text (default: inferred from the vocab)")
    p.add_argument("--max-seq-length", type=int, default=128,
                   help="tokens per instance, [CLS] and [SEP]s included (default 128)")
    p.add_argument("--max-predictions", type=int, default=20,
                   help="max masked positions per sequence (default 20; use 80 with 512)")
    p.add_argument("--masked-lm-prob", type=float, default=0.15,
                   help="fraction of tokens masked (default 0.15)")
    p.add_argument("--dupe-factor", type=int, default=10,
                   help="passes over the data, each with new masks and pairs (default 10)")
    p.add_argument("--short-seq-prob", type=float, default=0.1,
                   help="fraction of instances made shorter than the maximum (default 0.1)")
    p.add_argument("--seed", type=int, default=12345,
                   help="random seed: the same seed and input give the same data "
                        "(default 12345)")
    p.add_argument("--whole-word", action="store_true",
                   help="whole-word masking (default: mask word pieces independently)")
    p.add_argument("--masking", choices=("static", "dynamic"), default="static",
                   help="static: masks fixed now (the original); dynamic: the loader draws "
                        "masks each time it sees an example (default static)")
    p.add_argument("--pair-objective", choices=("nsp", "sop", "none"), default="nsp",
                   help="sentence pairs for: nsp (B follows A or is from a random document, "
                        "the original), sop (A and B in or out of order, one document), "
                        "none (single segments that fill the length) (default nsp)")
    p.add_argument("--no-nsp", dest="pair_objective", action="store_const", const="none",
                   help="the same as --pair-objective none")
    p.add_argument("--input-format", choices=("sentences", "documents", "wikitext"),
                   default="sentences",
                   help="sentences: one per line, blank line between documents; "
                        "documents: one per line; wikitext: ' = Title = ' starts a document "
                        "(default sentences)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--instances-per-shard", type=int, default=None,
                   help="about this many instances per shard (default 16384)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar on stderr)")
    add_common(p, json=True)
    p.set_defaults(func=run_create_data)

    p = sub.add_parser("train-vocab", help="train a WordPiece vocab on text",
                       description="Learn a BERT WordPiece vocab.txt (with [PAD], [UNK], "
                                   "[CLS], [SEP], [MASK]) with the tokenizers trainer.")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB",
                   help="UTF-8 text files or globs (quote globs)")
    p.add_argument("--output", required=True,
                   help="directory for vocab.txt and tokenizer_config.json (made if missing)")
    p.add_argument("--vocab-size", type=int, default=8000,
                   help="at most this many tokens, the 5 special ones included (default 8000)")
    p.add_argument("--lowercase", action="store_true",
                   help="an uncased vocab (default: cased)")
    p.add_argument("--min-frequency", type=int, default=2,
                   help="a piece must occur this often to be learnt (default 2)")
    add_common(p, json=True)
    p.set_defaults(func=run_train_vocab)


def load_tokenizer(vocab: str | None, lowercase: bool | None = None):
    """A vocab.txt, a model directory, or (None) the released bert-base-cased vocab."""
    from pathlib import Path

    from bert_jax.errors import UserError
    from bert_jax.tokenizer import Tokenizer

    if vocab is None:
        vocab = _released_vocab()
        if vocab is None:
            raise UserError(f"no --vocab given and the released {RELEASED_VOCAB} vocab is "
                            "neither in the HF cache nor reachable; pass --vocab VOCAB.txt, "
                            "or train one with `bert-jax train-vocab`")
    path = Path(vocab)
    if path.is_dir():
        return Tokenizer.from_dir(path)
    if not path.exists():
        raise UserError(f"vocab not found: {path}")
    return Tokenizer.from_vocab(path, lowercase=lowercase)


def _released_vocab() -> str | None:
    """The released vocab from the HF cache, else from the hub if it answers quickly."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, hf_hub_download

    try:
        return hf_hub_download(RELEASED_VOCAB, "vocab.txt", local_files_only=True)
    except Exception:  # not cached
        pass
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE"):
        return None
    # Probe first: the hub client retries a dead network for half a minute.
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return hf_hub_download(RELEASED_VOCAB, "vocab.txt")
    except Exception:  # no network, or the hub refused: not available
        return None


def run_create_data(args: argparse.Namespace) -> int:
    from bert_jax.data import create, documents

    documents.expand_inputs(args.input)  # a missing input fails before the vocab loads
    tokenizer = load_tokenizer(args.vocab, args.lowercase)
    stats = create.create_pretraining_data(
        args.input, args.output, tokenizer, max_seq_length=args.max_seq_length,
        max_predictions_per_seq=args.max_predictions, masked_lm_prob=args.masked_lm_prob,
        dupe_factor=args.dupe_factor, short_seq_prob=args.short_seq_prob,
        random_seed=args.seed, whole_word_masking=args.whole_word, masking=args.masking,
        pair_objective=args.pair_objective, input_format=args.input_format,
        num_workers=args.workers,
        instances_per_shard=args.instances_per_shard or create.DEFAULT_INSTANCES_PER_SHARD,
        progress=not args.no_progress and not args.json)
    if args.json:
        print(json.dumps({"output": args.output, **stats}, sort_keys=True))
    else:
        keys = ("num_instances", "num_shards", "documents", "sentences", "tokens",
                "random_next", "swapped_order", "empty_files", "invalid_utf8_lines",
                "split_documents",
                "single_sentence_documents", "seconds", "instances_per_second")
        print(f"wrote {args.output}")
        for k in keys:
            if k in stats:
                v = stats[k]
                print(f"  {k:28s} {v:,.1f}" if isinstance(v, float) else f"  {k:28s} {v:,}")
    return 0


def run_train_vocab(args: argparse.Namespace) -> int:
    from bert_jax.data.vocab import train_vocab
    from bert_jax.tokenizer import Tokenizer

    path = train_vocab(args.input, args.output, vocab_size=args.vocab_size,
                       lowercase=args.lowercase, min_frequency=args.min_frequency)
    size = Tokenizer.from_vocab(path).vocab_size
    if args.json:
        print(json.dumps({"vocab": str(path), "vocab_size": size, "lowercase": args.lowercase}))
    else:
        print(f"wrote {path} ({size:,} tokens, {'uncased' if args.lowercase else 'cased'})")
    return 0
