"""The pre-training loop: MLM (+ NSP or SOP), one or two sequence-length phases, resumable.

`run(config, workdir)` is what `bert-jax pretrain` calls. In order:
1. start jax.distributed if asked, build the (data, fsdp, tensor) mesh;
2. resolve the data (building the demo vocab and data in the workdir when
   `config.data.demo`), plan the phases (seq 128, then 512 from `phase2_start`);
3. restore the latest checkpoint in `<workdir>/checkpoints` if there is one, else
   initialise (randomly, or from released weights with `config.init_from`);
4. run the jit-compiled, sharded train step; every `log_every` steps log metrics,
   throughput and MFU; evaluate every `eval_every`; checkpoint every
   `checkpoint_every` steps, at the end, and on SIGTERM (preemption).
The learning-rate schedule spans both phases; the checkpoint stores the phase and the
loader position, so a run killed at any moment resumes with exactly the same batches.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from bert_jax import checkpoint, configlib, flops, heads, optim, sharding
from bert_jax import model as model_lib
from bert_jax.errors import UserError
from bert_jax.train import state as state_lib
from bert_jax.train import step as step_lib
from bert_jax.train.writer import MetricWriter

log = logging.getLogger(__name__)


class DivergedError(UserError):
    """A non-finite loss or gradient with `on_nonfinite="stop"`."""


@dataclasses.dataclass(frozen=True)
class Phase:
    index: int
    start: int  # first step (inclusive)
    end: int  # last step (exclusive)
    batch_size: int  # global
    train: str
    eval: str


def plan_phases(config: ml_collections.ConfigDict) -> list[Phase]:
    """Phase 1 (the 128 data) and, if `phase2_start` is set, phase 2 (the 512 data)."""
    t, d = config.train, config.data
    total, split = int(t.total_steps), int(t.phase2_start)
    if not d.train:
        raise UserError("no training data: set --config.data.train=DIR (made by `bert-jax "
                        "create-data`), or use --config configs/pretrain.py:demo")
    if split <= 0 or split >= total:
        return [Phase(0, 0, total, int(t.batch_size), d.train, d.eval)]
    if not d.train_phase2:
        raise UserError(f"phase 2 starts at step {split} but --config.data.train_phase2 is "
                        "not set (data made with --max-seq-length 512); set it, or "
                        "--config.train.phase2_start=0 for a single phase")
    return [Phase(0, 0, split, int(t.batch_size), d.train, d.eval),
            Phase(1, split, total, int(t.phase2_batch_size), d.train_phase2, d.eval_phase2)]


# ---- data -------------------------------------------------------------------------------

def prepare_demo_data(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Builds the demo vocab and data under <workdir>/data (once; a rerun reuses them)."""
    from bert_jax import data
    from bert_jax.tokenizer import Tokenizer

    d = config.data
    root = workdir / "data"
    if jax.process_index() == 0:
        root.mkdir(parents=True, exist_ok=True)
        train_txt, eval_txt = root / "demo_train.txt", root / "demo_eval.txt"
        if not eval_txt.exists():
            # Hold out every 20th document for evaluation.
            docs = data.demo_corpus_path().read_text(encoding="utf-8").strip().split("\n\n")
            train_txt.write_text("\n\n".join(x for i, x in enumerate(docs) if i % 20) + "\n")
            eval_txt.write_text("\n\n".join(x for i, x in enumerate(docs) if i % 20 == 0) + "\n")
        vocab = root / "vocab" / "vocab.txt"
        if not vocab.exists():
            data.train_vocab([str(train_txt)], root / "vocab", vocab_size=d.demo_vocab_size)
        tokenizer = Tokenizer.from_vocab(vocab)
        if tokenizer.vocab_size > config.model.vocab_size:
            raise UserError(f"demo vocab has {tokenizer.vocab_size} tokens but the model "
                            f"{config.model.vocab_size}")
        # The objective's pair task; MLM alone reads any data, and gets the original pairs.
        pair = heads.objective(heads.config_objective(config)).pair
        common = dict(max_seq_length=d.demo_max_seq_length,
                      max_predictions_per_seq=d.demo_max_predictions, progress=False,
                      pair_objective="nsp" if pair == "none" else pair)
        data.create_pretraining_data([str(train_txt)], str(root / "train"), tokenizer,
                                     dupe_factor=d.demo_dupe_factor, **common)
        data.create_pretraining_data([str(eval_txt)], str(root / "eval"), tokenizer,
                                     dupe_factor=1, **common)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("demo data ready")
    d.train, d.eval = str(root / "train"), str(root / "eval")
    d.vocab = str(root / "vocab" / "vocab.txt")


def make_loader(config: ml_collections.ConfigDict, directory: str, batch_size: int, *,
                seed: int, train: bool):
    from bert_jax import data

    if not Path(directory).exists():
        raise UserError(f"data directory not found: {directory}")
    loader = data.PretrainingLoader(
        directory, batch_size // jax.process_count(), seed=seed,
        shuffle=train, repeat=train, drop_remainder=train,
        process_index=jax.process_index(), process_count=jax.process_count(),
        masking=config.data.masking or None, masked_lm_prob=config.data.masked_lm_prob,
        whole_word_masking=config.data.whole_word_masking)
    name = heads.config_objective(config)
    pair = heads.objective(name).pair
    if pair != "none" and loader.pair_objective != pair:
        raise UserError(f"{directory} was made with --pair-objective {loader.pair_objective}, "
                        f"but the objective {name} needs --pair-objective {pair} data")
    return loader


def eval_batches(loader, count: int):
    """Exactly `count` batches on every host (so multi-host collectives line up): the
    loader's batches, then zero-weight copies of the last one if it runs out."""
    last = None
    it = iter(loader)
    exhausted = False  # a loader called again after its last batch starts a new epoch
    for _ in range(count):
        batch = None if exhausted else next(it, None)
        if batch is None:
            exhausted = True
            if last is None:
                return
            batch = {k: np.zeros_like(v) if k in ("masked_lm_weights", "example_weight")
                     else v for k, v in last.items()}
            batch.setdefault("example_weight", np.zeros(len(batch["input_ids"]), np.float32))
        else:
            batch = dict(batch)
            batch.setdefault("example_weight", np.ones(len(batch["input_ids"]), np.float32))
        last = batch
        yield batch


# ---- the loop ---------------------------------------------------------------------------

def _initial_params(config: ml_collections.ConfigDict, head: str) -> Any:
    """Released weights (or another run's checkpoint) for continued pre-training."""
    from bert_jax import weights

    loaded = weights.load_pretrained(config.init_from, head=head)
    mcfg = configlib.model_config(config.model)
    if dataclasses.replace(loaded.config, dtype=mcfg.dtype, param_dtype=mcfg.param_dtype,
                           remat=mcfg.remat, hidden_dropout_prob=mcfg.hidden_dropout_prob,
                           attention_probs_dropout_prob=mcfg.attention_probs_dropout_prob,
                           num_labels=mcfg.num_labels) != mcfg:
        raise UserError(f"--config.init_from={config.init_from}: its architecture differs "
                        "from config.model; set the model fields to match the weights")
    return loaded.params


def run(config: ml_collections.ConfigDict, workdir: str | Path, *,
        progress: bool = True) -> dict[str, Any]:
    """Pre-trains (or resumes) the run in `workdir`; returns the last train/eval metrics."""
    dist = config.distributed
    sharding.initialize_distributed(dist.coordinator_address or None,
                                    dist.num_processes or None,
                                    dist.process_id if dist.process_id >= 0 else None)
    workdir = Path(workdir)
    t = config.train
    if config.data.demo:
        prepare_demo_data(config, workdir)
    phases = plan_phases(config)
    total = int(t.total_steps)

    mcfg = configlib.model_config(config.model)
    spec = heads.objective(heads.config_objective(config))
    head = spec.head
    module = model_lib.build(mcfg, head)
    objective = spec.make(module)
    optimizer, schedule = optim.build(config.optimizer, total)
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
    for phase in phases:
        sharding.check_batch(phase.batch_size, mesh)
        if phase.batch_size % (int(t.accum_steps) * sharding.data_parallel_size(mesh)):
            raise UserError(f"batch size {phase.batch_size} does not split into "
                            f"{t.accum_steps} micro-batches over "
                            f"{sharding.data_parallel_size(mesh)} data-parallel devices")
    if jax.process_index() == 0:
        configlib.save(config, workdir)

    shardings = state_lib.state_shardings(module, optimizer, mesh)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=int(t.keep_checkpoints))
    extra: dict[str, Any] = {}
    if ckpt.latest_step() is not None:
        state, extra = ckpt.restore(state_lib.abstract_state(module, optimizer, mesh))
        log.info("resumed from step %d", int(state.step))
    else:
        init = _initial_params(config, head) if config.init_from else None
        state = state_lib.init_state(module, optimizer, mesh, int(config.seed), params=init)
    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(objective, optimizer, schedule,
                                 accum_steps=int(t.accum_steps)), shardings, mesh)
    eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(objective),
                                       shardings.params, mesh)

    writer = MetricWriter(workdir, tensorboard=bool(t.tensorboard))
    stop = {"requested": False}
    previous_handler = signal.signal(
        signal.SIGTERM, lambda *_: stop.__setitem__("requested", True))
    peak = flops.peak_flops(jax.devices()[0].device_kind, float(t.peak_tflops))
    step = int(jax.device_get(state.step))
    last: dict[str, Any] = {}
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", dynamic_ncols=True,
               disable=not progress or jax.process_index() != 0)
    try:
        for phase in phases:
            if step >= phase.end:
                continue
            loader = make_loader(config, phase.train, phase.batch_size,
                                 seed=int(config.seed) + 1000 * phase.index, train=True)
            if extra.get("phase") == phase.index and extra.get("loader"):
                loader.set_state(extra["loader"])
            seq_len = int(loader.metadata["max_seq_length"])
            if seq_len > mcfg.max_position_embeddings:
                raise UserError(f"phase {phase.index + 1} data has sequences of {seq_len} "
                                f"tokens; the model has {mcfg.max_position_embeddings} positions")
            step_flops = phase.batch_size * flops.train_flops(
                mcfg, seq_len, int(loader.metadata["max_predictions_per_seq"]),
                heads.head(head).pair)
            batches = iter(loader)
            pending: list[tuple[int, dict]] = []
            window_start, window_steps = time.perf_counter(), 0
            while step < phase.end:
                state, metrics = train_step(state, sharding.global_batch(next(batches), mesh))
                step += 1
                window_steps += 1
                pending.append((step, metrics))
                bar.update(1)
                if step % int(t.log_every) == 0 or step == phase.end:
                    records = jax.device_get(pending)
                    pending = []
                    elapsed = time.perf_counter() - window_start
                    bad = [s for s, m in records if not m["finite"]]
                    if bad and t.on_nonfinite == "stop":
                        raise DivergedError(
                            f"non-finite loss or gradients at step {bad[0]}; the update was "
                            f"not applied and the last good checkpoint (step "
                            f"{ckpt.latest_step()}) is kept. Lower the lr, or pass "
                            "--config.train.on_nonfinite=skip to skip such steps")
                    good = [m for _, m in records if m["finite"]] or [records[-1][1]]
                    last = {k: float(np.mean([m[k] for m in good])) for k in good[0]}
                    last["skipped_steps"] = float(len(bad))
                    seqs = window_steps * phase.batch_size / elapsed
                    last |= {"seq_per_s": seqs, "tokens_per_s": seqs * seq_len,
                             "seq_len": float(seq_len)}
                    if peak:
                        last["mfu"] = step_flops * window_steps / elapsed / (
                            peak * jax.device_count())
                    writer.write(step, "train", last)
                    bar.set_postfix(loss=f"{last['loss']:.3f}",
                                    mlm_acc=f"{last['masked_lm_accuracy']:.3f}",
                                    seq_s=f"{seqs:.1f}")
                    window_start, window_steps = time.perf_counter(), 0
                if phase.eval and (step % int(t.eval_every) == 0 or step == total):
                    evaluated = evaluate(config, eval_step, state.params, phase, mesh)
                    writer.write(step, "eval", evaluated)
                    last |= {f"eval_{k}": v for k, v in evaluated.items()}
                    bar.write(f"step {step} eval: " + ", ".join(
                        f"{k} {v:.4f}" for k, v in sorted(evaluated.items())))
                    window_start, window_steps = time.perf_counter(), 0
                if step % int(t.checkpoint_every) == 0 or step == total or stop["requested"]:
                    ckpt.save(step, state, {"phase": phase.index, "loader": loader.get_state()})
                if stop["requested"]:
                    log.warning("SIGTERM: saved step %d, stopping", step)
                    ckpt.close()
                    return last
    finally:
        bar.close()
        writer.close()
        ckpt.close()
        signal.signal(signal.SIGTERM, previous_handler)
    return last


def evaluate(config: ml_collections.ConfigDict, eval_step, params: Any, phase: Phase,
             mesh) -> dict[str, float]:
    """The train metrics on `eval_batches` batches of the phase's held-out data."""
    loader = make_loader(config, phase.eval, phase.batch_size, seed=0, train=False)
    return step_lib.run_eval(eval_step, params,
                             eval_batches(loader, int(config.train.eval_batches)), mesh)
