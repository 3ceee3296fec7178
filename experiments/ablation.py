r"""The ablation study config: one base pre-training config, the corpus, GLUE, a budget.

  python -m experiments.run_ablation --config experiments/ablation.py:small \
      --study-dir runs/ablation --results experiments/results \
      --variants mlm_nsp,mlm_only,dynamic_masking

Presets:
  small  the CPU study of experiments/README.md: a 4-layer, 256-wide BERT (4 heads,
         intermediate 1024) with the released bert-base-cased vocab, pre-trained on
         WikiText-2 (test split; held-out: valid) for `budget.steps` of batch 32; then
         GLUE RTE, MRPC and SST-2 on training subsets, 3 seeds, one lr.
  base   bert-base-cased with the paper's step count; set corpus.train / corpus.eval to
         your text (one sentence per line, blank line between documents).
Sections:
  pretrain  the base config every variant overrides (configs/pretrain.py:base, resized)
  budget    steps (or minutes: steps sized by timing the base variant); warmup, evals and
            checkpoints as fractions/counts of the steps
  corpus    text files and how the data is made (create_pretraining_data's knobs)
  eval      the held-out set every variant is scored on: static 15% sub-word masks
  glue      tasks, lrs, seeds and config overrides for `bert-jax glue`
Override any field: --config.budget.steps=600 --config.glue.seeds=(1,2,3,4,5).
"""

import os
from pathlib import Path

import ml_collections

from bert_jax import configlib

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("BERT_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = arg
    c.variants = "mlm_nsp,mlm_only,dynamic_masking"  # comma-separated names (variants.py)

    # The base: the original objective at seq 128 (two_phase adds the 512 phase).
    c.pretrain = configlib.load("configs/pretrain.py:base")
    c.pretrain.train.phase2_start = 0
    c.pretrain.data.masking = "static"
    c.pretrain.data.vocab = str(SHARED_DATA / "vocab" / "bert-base-cased" / "vocab.txt")

    c.budget = ml_collections.ConfigDict(dict(
        steps=1_000_000,
        minutes=0.0,  # > 0: size the steps so the base variant trains this long
        warmup_fraction=0.01,
        evals=100,  # held-out evaluations during pre-training
        checkpoints=100,
    ))
    c.corpus = ml_collections.ConfigDict(dict(
        train="",  # text files (comma-separated) for pre-training
        eval="",  # held-out text
        input_format="sentences",  # or "documents", "wikitext"
        max_seq_length=128,
        max_seq_length_phase2=512,
        dupe_factor=10,
        short_seq_prob=0.1,
        seed=12345,
        workers=1,
    ))
    c.eval = ml_collections.ConfigDict(dict(
        masked_lm_prob=0.15,
        whole_word_masking=False,
        batches=0,  # 0 = the whole held-out set
    ))
    c.glue = ml_collections.ConfigDict(dict(
        tasks="RTE,MRPC,SST-2",
        data_dir=str(SHARED_DATA / "glue"),
        lrs=(2e-5,),
        seeds=(1, 2, 3),
        overrides=(),  # e.g. ("--config.train_limit=1000",)
    ))

    if arg == "small":
        c.pretrain.model = configlib.model_section("mini")  # 4 layers, 256 wide, 4 heads
        c.pretrain.train.batch_size = 32
        c.pretrain.train.phase2_batch_size = 32
        c.pretrain.train.log_every = 10
        c.pretrain.train.eval_batches = 8
        c.pretrain.train.keep_checkpoints = 1
        c.pretrain.train.tensorboard = False
        c.pretrain.optimizer.lr = 1e-3  # small model, few steps
        c.budget.steps = 200
        c.budget.warmup_fraction = 0.1
        c.budget.evals = 5
        c.budget.checkpoints = 5
        wikitext = SHARED_DATA / "corpus" / "wikitext-2-raw"
        # The shared copy of WikiText-2 has no train split: train on test, hold out valid.
        c.corpus.train = str(wikitext / "test.txt")
        c.corpus.eval = str(wikitext / "valid.txt")
        c.corpus.input_format = "wikitext"
        # One dupe: over ~3 epochs each static mask is seen ~3 times, like the paper's
        # 40 epochs over 10 dupes; dynamic masking draws new masks every epoch.
        c.corpus.dupe_factor = 1
        c.eval.batches = 40
        c.glue.lrs = (1e-4,)  # small models fine-tune best with a larger lr
        c.glue.overrides = ("--config.train_limit=320", "--config.batch_size=16")
    elif arg != "base":
        raise ValueError(f"unknown preset {arg!r}: small, base")
    return c
