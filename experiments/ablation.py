r"""The ablation study config: one base pre-training config, the corpus, GLUE, a budget.

  python -m experiments.run_ablation --config experiments/ablation.py:cpu \
      --study-dir runs/ablation-cpu --results experiments/results

Presets:
  cpu    the CPU study of experiments/README.md: a WordPiece vocab of 4,096 trained on
         the pre-training text, a 2-layer, 128-wide BERT, pre-trained on WikiText-2
         (test split; held-out: valid) plus the unlabelled training text of five GLUE
         tasks, sequences of 64, for `budget.steps` of batch 64, 3 pre-training seeds
         per variant; then SST-2 (a subset), RTE and STS-B, one recipe, 3 seeds, packed.
  base   bert-base-cased with the paper's step count and the released vocab; set
         corpus.train / corpus.eval to your text (one sentence per line, blank line
         between documents).
Sections:
  seeds     pre-training seeds: every variant is trained once per seed (init, data order)
  vocab     size > 0: a WordPiece vocab of that size trained on corpus.train with
            `bert-jax train-vocab`, once, into <study>/vocab (0: pretrain.data.vocab)
  pretrain  the base config every variant overrides (configs/pretrain.py:base, resized)
  budget    steps (or minutes: steps sized by timing the base variant); warmup, evals and
            checkpoints as fractions/counts of the steps
  corpus    text files, GLUE tasks whose training text joins them (glue_text), and how
            the data is made (create_pretraining_data's knobs)
  eval      the held-out set every variant is scored on: static 15% sub-word masks
  glue      tasks, lrs, seeds and config overrides for `bert-jax glue`
Override any field: --config.budget.steps=600 --config.seeds=(0,1,2,3,4).
"""

import os
from pathlib import Path

import ml_collections

from bert_jax import configlib

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("BERT_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = arg
    # comma-separated names (variants.py); random_init is the no-pre-training floor
    c.variants = ("mlm_nsp,mlm_only,mlm_sop,mask_40,dynamic_masking,whole_word,random_init")
    c.seeds = (0, 1, 2)  # pre-training seeds (config.seed of each run)
    c.vocab = ml_collections.ConfigDict(dict(size=0, min_frequency=2))

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
        glue_text="",  # GLUE tasks whose unlabelled training text joins train (corpus.py)
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
        seeds=(1, 2, 3),  # fine-tuning seeds per pre-trained model (a task score: their mean)
        overrides=(),  # e.g. ("--config.train_limit=1000",)
    ))

    if arg == "cpu":
        c.vocab.size = 4096  # trained on corpus.train: the released 29k vocab is too sparse
        c.pretrain.data.vocab = ""  # <study>/vocab/vocab.txt, made by the study
        c.pretrain.model = configlib.model_section(
            "mini", vocab_size=c.vocab.size, hidden_size=128, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=512, max_position_embeddings=128)
        # Sequences of 64, batch 64, lr 2e-3 held up for long: the models sit at a
        # bag-of-words level (~13% held-out MLM, attention uniform over positions) for
        # ~2,500 steps, learn word order between steps ~2,500 and ~4,000, and only then
        # pull ahead of random_init downstream. At seq 128, batch 32, lr 5e-4 to 5e-3 no
        # pilot left that level in 2,000 steps (experiments/README.md, Word order). BERT
        # Adam (the base's optimizer) crosses it ~500 steps after AdamW at this lr.
        c.pretrain.train.batch_size = 64
        c.pretrain.train.phase2_batch_size = 64
        c.pretrain.optimizer.lr = 2e-3
        c.pretrain.train.log_every = 25
        c.pretrain.train.eval_batches = 20
        c.pretrain.train.keep_checkpoints = 1
        c.pretrain.train.tensorboard = False
        c.budget.steps = 24_000  # ~45 min per model at 0.11 s/step (2 cores)
        c.budget.warmup_fraction = 0.05
        c.budget.evals = 24
        c.budget.checkpoints = 12  # a killed study loses at most ~4 minutes of a run
        wikitext = SHARED_DATA / "corpus" / "wikitext-2-raw"
        # The shared copy of WikiText-2 has no train split: train on test, hold out valid.
        c.corpus.train = str(wikitext / "test.txt")
        c.corpus.eval = str(wikitext / "valid.txt")
        c.corpus.input_format = "wikitext"
        # WikiText-2 test alone (241k words) is used up by step ~1,200 and its models do
        # not beat random_init downstream; the downstream tasks' own training text, labels
        # dropped (plus CoLA's and RTE's), brings it to 1.32M words (corpus.py).
        c.corpus.glue_text = "SST-2,MRPC,STS-B,CoLA,RTE"
        c.corpus.max_seq_length = 64
        c.corpus.max_seq_length_phase2 = 128  # two_phase: 64, then 128 (the paper: 128, 512)
        # 10 dupes (545k sequences of 64 with the GLUE text): 24,000 steps of 64 go over
        # them 2.8 times (the paper: 40 epochs over 10 dupes, each mask seen 4 times).
        c.corpus.dupe_factor = 10
        c.eval.batches = 0  # all of valid: 5,104 sequences, 50,819 masked positions
        # CoLA and MRPC stay at the majority class for every model, pre-trained or not
        # (experiments/README.md): they cannot rank objectives at this scale.
        c.glue.tasks = "SST-2,RTE,STS-B"
        # The lr is chosen per variant on dev (the GLUE way; a task's score is its best
        # lr's mean): random_init needs 3e-4 (at 1e-4 it stays at SST-2's majority
        # class with 1k labels), mlm_nsp prefers 1e-4 on STS-B; one fixed lr would
        # favour one of them (experiments/README.md, separation pilot).
        c.glue.lrs = (1e-4, 3e-4)
        c.glue.seeds = (1, 2, 3)
        # SST-2: its first 6,000 sentences; RTE (2,490) and STS-B (5,749) in full, cut to
        # the 64 positions the models have. Packed rows (the same steps and examples,
        # ~3x fewer token positions on SST-2).
        c.glue.overrides = ("--config.train_limit=6000", "--config.batch_size=32",
                            "--config.epochs=3", "--config.packing=True",
                            "--config.max_seq_length=64")
    elif arg != "base":
        raise ValueError(f"unknown preset {arg!r}: cpu, base")
    return c
