"""The pre-training loop: MLM (+ NSP or SOP), one or two sequence-length phases, resumable.

`run(config, workdir)` is what `bert-jax pretrain` calls. In order:
1. apply the runtime settings (XLA flags, the compilation cache; runtime.py), start
   jax.distributed if asked, build the (data, fsdp, tensor) mesh and check that each
   host's loader feeds exactly the batch rows the mesh gives its devices;
2. resolve the data (building the demo vocab and data in the workdir when
   `config.data.demo`), plan the phases (seq 128, then 512 from `phase2_start`);
3. restore the latest checkpoint in `<workdir>/checkpoints` if there is one, else
   initialise (randomly, or from released weights with `config.init_from`);
4. run the jit-compiled, sharded train step on batches a background thread prepares
   and puts on the devices `train.prefetch` steps ahead; every `log_every` steps log
   metrics, throughput, MFU and the step time split into data wait and device time;
   evaluate every `eval_every`; checkpoint every `checkpoint_every` steps and at the end;
   trace a profiler window if `train.profile` asks.
5. On Ctrl-C or SIGTERM (on any host) every host saves the same step and `run` raises
   `errors.Stopped` (the CLI exits with `EXIT_RESUMABLE`); see stopping.py.
The learning-rate schedule spans both phases; the checkpoint stores the phase and the
position of the last batch consumed (not of those read ahead), so a run killed at any
moment resumes with exactly the same batches. The workdir may be a URL (gs://...).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from bert_jax import checkpoint, configlib, files, flops, heads, optim, runtime, sharding
from bert_jax.data.prefetch import Prefetcher
from bert_jax.errors import Stopped, UserError
from bert_jax.paths import as_path, is_local
from bert_jax.runs import RunDir
from bert_jax.train import programs as programs_lib
from bert_jax.train import step as step_lib
from bert_jax.train.profile import ProfileWindow, parse_window
from bert_jax.train.stopping import StopRequest
from bert_jax.train.writer import MetricWriter, read_metrics

log = logging.getLogger(__name__)


# Steps the loop dispatches ahead of the device: enough to keep it busy, few enough that
# Ctrl-C / SIGTERM (seen by the loop between steps) stop within a few steps.
RUN_AHEAD = 2


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


def check_train(config: ml_collections.ConfigDict) -> None:
    """The train and optimizer sections (and the fp32 parameters the optimizer needs),
    before any work: a step count of 0 would divide by zero after the first (slow) step,
    a batch of 0 fail after the data is built."""
    t = config.train
    for field in ("total_steps", "batch_size", "log_every", "eval_every", "eval_batches",
                  "checkpoint_every", "keep_checkpoints", "accum_steps"):
        if not int(t[field]) > 0:
            raise UserError(f"--config.train.{field}={t[field]}: must be greater than 0")
    if int(t.phase2_start) > 0 and not int(t.phase2_batch_size) > 0:
        raise UserError(f"--config.train.phase2_batch_size={t.phase2_batch_size}: must be "
                        "greater than 0")
    if t.on_nonfinite not in ("stop", "skip"):
        raise UserError(f"--config.train.on_nonfinite={t.on_nonfinite!r}: choose stop or skip")
    optim.build(config.optimizer, int(t.total_steps))  # its own checks (lr, warmup, decay)
    optim.check_param_dtype(config.model.param_dtype)


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

def prepare_demo_data(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, str]:
    """Builds the demo vocab and data under <workdir>/data (once; a rerun reuses them).

    Returns the `data` fields that point at them (train, eval, vocab); `config` is read,
    never written."""
    from bert_jax import data
    from bert_jax.tokenizer import Tokenizer

    d = config.data
    root = workdir / "data"
    if jax.process_index() == 0:
        root.mkdir(parents=True, exist_ok=True)
        train_txt, eval_txt = root / "demo_train.txt", root / "demo_eval.txt"
        # Hold out every 20th document for evaluation. Written atomically, and rewritten
        # whenever they differ from the packaged corpus's split (never trusted for existing).
        docs = data.demo_corpus_path().read_text(encoding="utf-8").strip().split("\n\n")
        for path, keep in ((train_txt, lambda i: i % 20 != 0), (eval_txt, lambda i: i % 20 == 0)):
            text = "\n\n".join(x for i, x in enumerate(docs) if keep(i)) + "\n"
            if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
                files.write_text_atomic(path, text)
        vocab = root / "vocab" / "vocab.txt"
        if not vocab.exists():  # written atomically: present means complete
            data.train_vocab([str(train_txt)], root / "vocab", vocab_size=d.demo_vocab_size)
        tokenizer = Tokenizer.from_vocab(vocab)
        if tokenizer.vocab_size > config.model.vocab_size:
            raise UserError(f"demo vocab has {tokenizer.vocab_size} tokens but the model "
                            f"{config.model.vocab_size}")
        # The objective's pair task; MLM alone reads any data, and gets the original pairs.
        pair = heads.config_spec(config).pair
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
    return {"train": str(root / "train"), "eval": str(root / "eval"),
            "vocab": str(root / "vocab" / "vocab.txt")}


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
                           attention=mcfg.attention, dropout_impl=mcfg.dropout_impl,
                           matmul_impl=mcfg.matmul_impl,
                           attention_probs_dropout_prob=mcfg.attention_probs_dropout_prob,
                           num_labels=mcfg.num_labels) != mcfg:
        raise UserError(f"--config.init_from={config.init_from}: its architecture differs "
                        "from config.model; set the model fields to match the weights")
    return loaded.params


def run(config: ml_collections.ConfigDict, workdir: str | Path, *,
        progress: bool = True) -> dict[str, Any]:
    """Pre-trains (or resumes) the run in `workdir`; returns the last train/eval metrics."""
    runtime.configure(config.runtime)  # XLA flags, compilation cache: before JAX starts
    dist = config.distributed
    sharding.initialize_distributed(dist.coordinator_address or None,
                                    dist.num_processes or None,
                                    dist.process_id if dist.process_id >= 0 else None)
    with StopRequest() as stop:  # from here on Ctrl-C / SIGTERM save a step and stop
        return _pretrain(config, workdir, stop, progress=progress)


def _pretrain(config: ml_collections.ConfigDict, workdir: str | Path, stop: StopRequest, *,
              progress: bool) -> dict[str, Any]:
    local = is_local(workdir)
    workdir = as_path(workdir)  # gs://bucket/run stays a URL (see paths.py)
    t = config.train
    check_train(config)  # before any work, the demo data included
    if config.data.demo:
        if not local:
            raise UserError(f"the demo builds its vocab and data with local tools: use a local "
                            f"--workdir, not {workdir}")
        # The run's config (saved, and read from here on) names the data it built; the
        # caller's config is left as it was given.
        config = config.copy_and_resolve_references()
        config.data.update(prepare_demo_data(config, Path(workdir)))
    phases = plan_phases(config)
    total = int(t.total_steps)

    mcfg = configlib.model_config(config.model)
    spec = heads.config_spec(config)
    head = spec.head
    mesh, rules = programs_lib.mesh_from_config(config.mesh)
    sharding.check_host_batches(mesh)
    for phase in phases:
        sharding.check_batch(phase.batch_size, mesh)
        if phase.batch_size % (int(t.accum_steps) * sharding.data_parallel_size(mesh)):
            raise UserError(f"batch size {phase.batch_size} does not split into "
                            f"{t.accum_steps} micro-batches over "
                            f"{sharding.data_parallel_size(mesh)} data-parallel devices")
    if jax.process_index() == 0:
        configlib.save(config, workdir)

    optimizer, schedule = optim.build(config.optimizer, total)
    programs = programs_lib.build(mcfg, head, spec.make, optimizer, schedule, mesh, rules,
                                  accum_steps=int(t.accum_steps))
    train_step, eval_step = programs.train_step, programs.eval_step
    run = RunDir(workdir)
    ckpt = checkpoint.Checkpointer(run.checkpoints, keep=int(t.keep_checkpoints))
    extra: dict[str, Any] = {}
    if ckpt.latest_step() is not None:
        state, extra = ckpt.restore(programs.abstract_state())
        log.info("resumed from step %d", int(state.step))
    else:
        init = _initial_params(config, head) if config.init_from else None
        state = programs.init_state(int(config.seed), params=init)

    writer = MetricWriter(workdir, tensorboard=bool(t.tensorboard))
    profile = ProfileWindow(parse_window(t.profile), str(run.tensorboard))
    peak = flops.peak_flops(jax.devices()[0].device_kind, float(t.peak_tflops))
    step = int(jax.device_get(state.step))
    last: dict[str, Any] = {}
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", dynamic_ncols=True,
               disable=not progress or jax.process_index() != 0)
    put = functools.partial(sharding.global_batch, mesh=mesh)
    batches: Prefetcher | None = None
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
            # The batches come from a background thread, `prefetch` ahead, already on
            # the devices; `batches.state` is the loader state of the batches consumed.
            if batches is not None:
                batches.close()
            batches = Prefetcher(loader, put, depth=int(t.prefetch),
                                 workers=int(config.data.workers))
            pending: list[tuple[int, dict]] = []
            inflight: collections.deque = collections.deque()
            window_start, window_steps = time.perf_counter(), 0
            window_wait = batches.wait_s
            while step < phase.end:
                profile.at(step, state)
                state, metrics = train_step(state, next(batches))
                step += 1
                window_steps += 1
                pending.append((step, metrics))
                inflight.append(metrics["loss"])
                if len(inflight) > RUN_AHEAD:
                    inflight.popleft().block_until_ready()
                bar.update(1)
                if step % int(t.log_every) == 0 or step == phase.end:
                    records = jax.device_get(pending)
                    pending = []
                    elapsed = time.perf_counter() - window_start
                    bad = [s for s, m in records if not m["finite"]]
                    if bad and t.on_nonfinite == "stop":
                        raise DivergedError(
                            f"non-finite loss or gradients at step {bad[0]}; the update was "
                            f"not applied and {_last_good(ckpt)}. Lower the lr, or pass "
                            "--config.train.on_nonfinite=skip to skip such steps")
                    good = [m for _, m in records if m["finite"]] or [records[-1][1]]
                    last = {k: float(np.mean([m[k] for m in good])) for k in good[0]}
                    last["skipped_steps"] = float(len(bad))
                    seqs = window_steps * phase.batch_size / elapsed
                    last |= {"seq_per_s": seqs, "tokens_per_s": seqs * seq_len,
                             "seq_len": float(seq_len)}
                    last |= step_times(elapsed, batches.wait_s - window_wait, window_steps)
                    if peak:
                        last["mfu"] = step_flops * window_steps / elapsed / (
                            peak * jax.device_count())
                    writer.write(step, "train", last)
                    bar.set_postfix(loss=f"{last['loss']:.3f}",
                                    mlm_acc=f"{last['masked_lm_accuracy']:.3f}",
                                    seq_s=f"{seqs:.1f}")
                    window_start, window_steps = time.perf_counter(), 0
                    window_wait = batches.wait_s
                if phase.eval and (step % int(t.eval_every) == 0 or step == total):
                    evaluated = evaluate(config, eval_step, state.params, phase, mesh)
                    writer.write(step, "eval", evaluated)
                    last |= {f"eval_{k}": v for k, v in evaluated.items()}
                    bar.write(f"step {step} eval: " + ", ".join(
                        f"{k} {v:.4f}" for k, v in sorted(evaluated.items())))
                    window_start, window_steps = time.perf_counter(), 0
                    window_wait = batches.wait_s
                # Every host asks at every step: they agree on where to stop.
                stopping = stop.should_stop(step) and step < total
                if step % int(t.checkpoint_every) == 0 or step == total or stopping:
                    ckpt.save(step, state, {"phase": phase.index, "loader": batches.state})
                if stopping:
                    ckpt.wait()
                    raise Stopped(step, stop.reason or "stop requested", str(ckpt.directory))
    finally:
        if batches is not None:
            batches.close()
        profile.stop()
        bar.close()
        writer.close()
        ckpt.close()
    # A run resumed after its last step trains nothing: report what it logged last.
    return last or logged_result(workdir)


def logged_result(workdir: str | Path) -> dict[str, Any]:
    """The last train record of a run's metrics.jsonl, with its last eval's as eval_*."""
    result: dict[str, Any] = {}
    for record in read_metrics(workdir):
        values = {k: v for k, v in record.items()
                  if k not in ("step", "split", "time") and v is not None}
        if record["split"] == "train":
            result |= values
        elif record["split"] == "eval":
            result |= {f"eval_{k}": v for k, v in values.items()}
    return result


def step_times(elapsed: float, data_wait: float, steps: int) -> dict[str, float]:
    """Mean seconds per step of a logging window, split into the wait for the next batch
    and the rest, the device's share: the loop dispatches steps ahead of the device and
    waits for it when it fetches the window's metrics."""
    step_s = elapsed / steps
    data_wait_s = min(data_wait / steps, step_s)
    return {"step_s": step_s, "data_wait_s": data_wait_s, "device_s": step_s - data_wait_s}


def _last_good(ckpt: checkpoint.Checkpointer) -> str:
    step = ckpt.latest_step()
    if step is None:
        return "no checkpoint was saved yet (rerunning starts from step 0)"
    return f"the last good checkpoint (step {step}) is kept"


def evaluate(config: ml_collections.ConfigDict, eval_step, params: Any, phase: Phase,
             mesh) -> dict[str, float]:
    """The train metrics on `eval_batches` batches of the phase's held-out data."""
    loader = make_loader(config, phase.eval, phase.batch_size, seed=0, train=False)
    return step_lib.run_eval(eval_step, params,
                             eval_batches(loader, int(config.train.eval_batches)), mesh)
