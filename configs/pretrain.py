r"""Pre-training configs: the original BERT recipe and the offline demo.

  bert-jax pretrain --config configs/pretrain.py:demo --workdir runs/demo
  bert-jax pretrain --config configs/pretrain.py:base --workdir runs/base \
      --config.data.train=DATA128 --config.data.eval=EVAL128 \
      --config.data.train_phase2=DATA512 --config.data.eval_phase2=EVAL512

Presets:
  demo        a small BERT on the packaged demo corpus (data and vocab are built in the
              workdir on first run); ~3 minutes on a 2-core CPU, MLM accuracy rises from
              chance (~0.1%) to well above it.
  base        bert-base-cased as released: batch 256, 1M steps, seq 128 for the first
              900k steps then seq 512 (phase 2, its own data), BERT Adam lr 1e-4, 10k
              warmup, linear decay from step 0, weight decay 0.01, clip 1.0.
  base_128    phase 1 only (seq 128 for all 1M steps), as an ablation.
  large       bert-large, the same recipe.
  lamb        bert-base with the large-batch recipe of You et al.: LAMB, batch 64k/32k
              (via gradient accumulation), 7,038 + 1,563 steps, bf16 compute.
  tiny        the test preset: two short phases on data a test supplies.
Any field can be overridden: --config.optimizer.lr=2e-5 --config.train.batch_size=512.
"""

import ml_collections

from bert_jax import configlib, optim, sharding


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = arg
    c.seed = 0
    c.model = configlib.model_section("base")
    # What pre-training minimises (bert_jax/heads.py OBJECTIVES): mlm_nsp (the original),
    # mlm (MLM alone), mlm_sop (ALBERT's sentence order; needs --pair-objective sop data).
    c.objective = "mlm_nsp"
    c.nsp = True  # False: an alias of objective="mlm" (no NSP head, NSP labels ignored)
    c.init_from = ""  # released weights / bert-jax workdir to continue pre-training from

    c.data = ml_collections.ConfigDict(dict(
        demo=False,  # build vocab + data from the packaged demo corpus into <workdir>/data
        vocab="",  # the vocab.txt the data was made with (exported beside the weights)
        train="",  # directory made by `bert-jax create-data` at max_seq_length 128
        eval="",
        train_phase2="",  # the same at 512, for phase 2
        eval_phase2="",
        masking="",  # "" = as the data was made; "dynamic" re-draws masks in the loader
        masked_lm_prob=0.15,
        whole_word_masking=False,
        workers=0,  # loader processes making batches (0: the prefetch thread makes them)
        # demo only: how the demo data is made
        demo_vocab_size=1024,  # the demo corpus yields ~1,020 WordPieces
        demo_dupe_factor=5,
        demo_max_seq_length=128,
        demo_max_predictions=20,
    ))

    c.train = ml_collections.ConfigDict(dict(
        total_steps=1_000_000,
        batch_size=256,  # global, in sequences
        phase2_start=900_000,  # step where seq 512 begins; 0 = no phase 2
        phase2_batch_size=256,
        accum_steps=1,  # gradient accumulation: micro-batch = batch_size / accum_steps
        log_every=100,
        eval_every=10_000,
        eval_batches=100,
        checkpoint_every=10_000,
        keep_checkpoints=3,
        on_nonfinite="stop",  # or "skip": drop the step and go on
        peak_tflops=0.0,  # per-device peak for MFU; 0 = look the device up
        tensorboard=True,
        prefetch=2,  # batches a background thread puts on the devices ahead of the step
        profile="",  # "START,STEPS": a jax.profiler trace of steps START+1..START+STEPS
    ))

    c.optimizer = optim.default_config()
    c.mesh = ml_collections.ConfigDict(dict(
        shape=(-1, 1, 1),  # (data, fsdp, tensor), over all devices
        # multi-slice TPU: how many slices (joined by the data-center network) along each
        # axis, e.g. (2, 1, 1) = data parallel across 2 slices; shape / dcn_shape per slice
        dcn_shape=(1, 1, 1),
        # logical axis name -> mesh axes, for parameters and activations (see
        # bert_jax/sharding.py and the README's Sharding section)
        rules=sharding.RULES,
    ))
    c.distributed = ml_collections.ConfigDict(dict(
        coordinator_address="", num_processes=0, process_id=-1))
    c.runtime = ml_collections.ConfigDict(dict(  # applied before JAX starts; runtime.py
        compilation_cache=True,  # persistent: a restarted run compiles nothing
        cache_dir="",  # "" = $BERT_JAX_CACHE, else ~/.cache/bert-jax/xla
        xla_flags="",  # appended to XLA_FLAGS, e.g. "--xla_dump_to=/tmp/hlo"
        libtpu_flags="",  # appended to LIBTPU_INIT_ARGS
    ))

    if arg == "base":
        pass
    elif arg == "base_128":
        c.train.phase2_start = 0
    elif arg == "large":
        c.model = configlib.model_section("large")
    elif arg == "lamb":
        c.model = configlib.model_section("base", dtype="bfloat16")
        c.optimizer.name = "lamb"
        c.optimizer.lr = 6e-3
        c.optimizer.b2 = 0.99
        c.optimizer.eps = 1e-6
        c.optimizer.warmup_steps = 2000
        c.optimizer.decay_from_warmup = True
        # 7,038 steps at 128 then 1,563 at 512 (You et al.), one schedule across both.
        c.train.total_steps = 7038 + 1563
        c.train.phase2_start = 7038
        c.train.batch_size = 65536
        c.train.phase2_batch_size = 32768
        c.train.accum_steps = 64
        c.train.eval_every = 500
        c.train.checkpoint_every = 200
    elif arg == "demo":
        c.model = configlib.model_section(
            "mini", vocab_size=c.data.demo_vocab_size, hidden_size=128, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=512, max_position_embeddings=128)
        c.data.demo = True
        c.train.total_steps = 600
        c.train.batch_size = 32
        c.train.phase2_start = 0
        c.train.log_every = 25
        c.train.eval_every = 200
        c.train.eval_batches = 10
        c.train.checkpoint_every = 200
        c.optimizer.lr = 1e-3
        c.optimizer.warmup_steps = 60
    elif arg == "tiny":
        c.model = configlib.model_section("tiny")
        c.train.total_steps = 8
        c.train.batch_size = 8
        c.train.phase2_start = 6
        c.train.phase2_batch_size = 4
        c.train.log_every = 2
        c.train.eval_every = 4
        c.train.eval_batches = 2
        c.train.checkpoint_every = 2
        c.train.tensorboard = False
        c.optimizer.lr = 1e-3
        c.optimizer.warmup_steps = 2
    else:
        raise ValueError(f"unknown preset {arg!r}: demo, base, base_128, large, lamb, tiny")
    return c
