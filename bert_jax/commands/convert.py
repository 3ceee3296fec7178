"""`bert-jax convert`: any checkpoint bert-jax reads -> the HuggingFace layout.

    bert-jax convert --from /path/to/cased_L-12_H-768_A-12 --to out/bert-base-cased
    bert-jax convert --from bert-base-cased --to out/ --head encoder --json

Sources: a TF checkpoint (directory or `bert_model.ckpt` prefix), an HF directory, a
single weights file or a hub name. The output (config.json, model.safetensors,
vocab.txt, tokenizer.json) loads in `transformers` with no missing or unexpected keys.
"""

from __future__ import annotations

import argparse
import json

from bert_jax import cli, heads


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a TF/HF checkpoint to the HF layout (safetensors)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # --from is what a conversion reads naturally; --model is the spelling every other
    # subcommand uses for the same thing, so both work.
    p.add_argument("--from", "--model", dest="model", required=True, metavar="MODEL",
                   help="hub name, HF directory, weights file, or TF checkpoint dir/prefix")
    p.add_argument("--to", required=True, metavar="DIR", help="output directory")
    p.add_argument("--head", default="auto",
                   choices=("auto", *heads.HEADS),
                   help="which model to export (default: the one the checkpoint holds)")
    cli.add_common(p, json=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bert_jax import weights

    loaded = weights.load_pretrained(args.model, head=args.head)
    out = weights.save_pretrained(args.to, loaded.config, loaded.params, loaded.tokenizer,
                                  loaded.head)
    report = loaded.report
    if args.json:
        print(json.dumps({**report.to_dict(), "to": str(out),
                          "architecture": heads.HEADS[loaded.head].architecture}))
        return 0
    print(f"wrote {out} ({heads.HEADS[loaded.head].architecture}, {report.loaded} tensors "
          f"from {report.format})")
    for label, names in (("initialised randomly", report.initialized),
                         ("ignored", report.ignored)):
        if names:
            print(f"{label}: {', '.join(names)}")
    for note in report.notes:
        print(f"note: {note}")
    return 0
