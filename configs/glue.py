r"""GLUE fine-tuning configs: the run_classifier recipe and a quick CPU variant.

  bert-jax glue --task RTE --model bert-base-cased --data-dir glue_data --workdir runs/glue
  bert-jax glue --task all --model runs/pretrain --data-dir glue_data --workdir runs/glue \
      --lrs 2e-5,3e-5,4e-5,5e-5 --seeds 1,2,3 --predict-test

Presets:
  default  the original recipe: max length 128, batch 32, 3 epochs, 10% warmup, BERT Adam
           (as in pre-training), lr chosen per task on dev from {5e-5, 4e-5, 3e-5, 2e-5},
           dropout 0.1 on the pooled output; batches padded to length buckets for speed.
  fixed    the same, every batch padded to 128 (the original's fixed shapes).
Any field can be overridden: --config.batch_size=16 --config.optimizer.name=adamw.
"""

import ml_collections

from bert_jax import optim


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = arg
    c.max_seq_length = 128
    c.batch_size = 32
    c.eval_batch_size = 64
    c.epochs = 3.0
    c.warmup_proportion = 0.1
    c.lrs = (5e-5, 4e-5, 3e-5, 2e-5)
    c.seeds = (1,)
    # Pad each batch to the smallest of these covering its longest example: a few
    # compilations, much less padding. () pads every batch to max_seq_length.
    c.length_buckets = (32, 64, 128)
    c.train_limit = 0  # > 0: use the first N training examples (e.g. an SST-2 subset)
    c.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
    c.dropout = 0.1
    c.optimizer = optim.default_config()
    c.optimizer.warmup_steps = 0  # set from warmup_proportion once the step count is known
    c.log_every = 50
    c.save_checkpoint = False  # keep the fine-tuned weights (orbax) in each run's workdir
    if arg == "fixed":
        c.length_buckets = ()
    elif arg != "default":
        raise ValueError(f"unknown preset {arg!r}: default, fixed")
    return c
