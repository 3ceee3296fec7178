r"""GLUE fine-tuning configs: the run_classifier recipe and a quick CPU variant.

  bert-jax glue --task RTE --model bert-base-cased --data-dir glue_data --workdir runs/glue
  bert-jax glue --task all --model runs/pretrain --data-dir glue_data --workdir runs/glue \
      --lrs 2e-5,3e-5,4e-5,5e-5 --seeds 1,2,3 --predict-test

Presets:
  default  the original recipe: max length 128, batch 32, 3 epochs, 10% warmup, BERT Adam
           (as in pre-training), lr chosen per task on dev from {5e-5, 4e-5, 3e-5, 2e-5},
           dropout 0.1 on the pooled output; batches padded to length buckets for speed.
  fixed    the same, every batch padded to 128 (the original's fixed shapes).
Any field can be overridden: --config.batch_size=16 --config.optimizer.name=adamw
--config.model.dtype=bfloat16 --config.mesh.shape=(2,1,4).

Packing (`--config.packing=True`, bert_jax/glue/packed.py): several examples in each row of
max_seq_length tokens instead of one padded row each, kept apart in the model (segment ids,
per-example positions, one pooled [CLS] each). The recipe is unchanged: each step takes the
same batch_size examples in the same seeded order, so steps, warmup, schedule and the loss
(a mean over the batch's examples) are those of the padded run, and at dropout 0 so is the
gradient, to float rounding. A row holds at most `packing_slots` examples; a step's row
count is padded up to a multiple of batch_size / 8, so a run compiles a few shapes.
Evaluation and test prediction pack each whole split (batches of eval_batch_size rows).
`length_buckets` then applies to nothing. Dropout draws differ from a padded run's.

`model` and `mesh` are shaped like configs/pretrain.py's: `model` holds the BertConfig
fields a fine-tuning run sets on the pre-trained model (its numerics and the classifier's
dropout; the architecture is the pre-trained model's), `mesh` the (data, fsdp, tensor)
mesh and the logical-axis rules, so fine-tuning shards as pre-training does.
"""

import ml_collections

from bert_jax import optim, sharding
from bert_jax.glue import packed

# The BertConfig fields fine-tuning sets on the loaded model, with their defaults.
MODEL_FIELDS = dict(
    dtype="float32",  # compute dtype; "bfloat16" on accelerators
    param_dtype="float32",
    hidden_dropout_prob=0.1,  # dropout on the pooled output (and in the encoder)
    remat=False,
    attention="xla",
    dropout_impl="auto",
    matmul_impl="auto",
)


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
    # Several examples per row of max_seq_length tokens (see the docstring): the same
    # steps on fewer tokens; at most packing_slots examples a row.
    c.packing = False
    c.packing_slots = packed.DEFAULT_SLOTS
    c.model = ml_collections.ConfigDict(MODEL_FIELDS)
    c.mesh = ml_collections.ConfigDict(dict(
        shape=(-1, 1, 1),  # (data, fsdp, tensor), over all devices
        dcn_shape=(1, 1, 1),  # multi-slice: slices along each axis (configs/pretrain.py)
        rules=sharding.RULES,  # logical axis name -> mesh axes (bert_jax/sharding.py)
    ))
    c.optimizer = optim.default_config()
    c.optimizer.warmup_steps = 0  # set from warmup_proportion once the step count is known
    c.log_every = 50
    c.save_checkpoint = False  # keep the fine-tuned weights (orbax) in each run's workdir
    if arg == "fixed":
        c.length_buckets = ()
    elif arg != "default":
        raise ValueError(f"unknown preset {arg!r}: default, fixed")
    return c
