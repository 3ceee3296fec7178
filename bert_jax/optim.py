"""Optimizers and learning-rate schedules: the original BERT recipe and its options.

The default reproduces google-research/bert `optimization.py` exactly:
  lr(t)  = peak * t / warmup                  for t < warmup
         = peak * (1 - t / total)             after (power-1 polynomial decay counted
                                              from step 0, not from the end of warmup)
  g      = clip_by_global_norm(grad, 1.0)
  m, v   = Adam moments (b1 0.9, b2 0.999), NO bias correction
  update = m / (sqrt(v) + 1e-6) + 0.01 * param   (no decay on LayerNorm/bias params)
  param -= lr(t) * update
Options, each one config field away: AdamW with bias correction, LAMB, other
schedules (cosine, constant, power != 1, a floor). Built from optax pieces; two small
transforms are written here: Adam without bias correction, which optax does not have, and
clipping by the original's formula (see `clip_by_global_norm`).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bert_jax.errors import UserError

# The original excludes parameters whose name contains one of these from weight decay.
NO_DECAY_PATTERN = re.compile(r"LayerNorm|layer_norm|bias")


def path_name(path: tuple) -> str:
    """A pytree key path as a slash-joined name: ('bert', 'pooler_dense', 'bias') -> ..."""
    parts = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        parts.append(str(name))
    return "/".join(parts)


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: every parameter but LayerNorm and bias ones."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: NO_DECAY_PATTERN.search(path_name(path)) is None, params)


# ---- schedules --------------------------------------------------------------------------

def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then `cfg.decay` counted from step 0 (the original) or from
    the end of warmup (`cfg.decay_from_warmup=True`, as most later recipes)."""
    peak, warmup = float(cfg.lr), int(cfg.warmup_steps)
    end = float(cfg.get("end_lr", 0.0))
    power = float(cfg.get("decay_power", 1.0))
    decay = cfg.get("decay", "linear")
    from_warmup = bool(cfg.get("decay_from_warmup", False))
    if total_steps <= 0:
        raise UserError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup <= total_steps:
        raise UserError(f"warmup_steps {warmup} must be in [0, total_steps={total_steps}]")
    if peak < 0:  # ascends the loss: never what a run wants (0 is: frozen weights)
        raise UserError(f"--config.optimizer.lr={peak}: must be 0 or more")
    if decay not in ("linear", "cosine", "constant"):  # checked now, not at the first step
        raise UserError(f"unknown decay {decay!r}; choose linear, cosine or constant")

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        start = warmup if from_warmup else 0
        frac = jnp.clip((t - start) / max(total_steps - start, 1), 0.0, 1.0)
        if decay == "linear":
            decayed = (peak - end) * (1.0 - frac) ** power + end
        elif decay == "cosine":
            decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        else:  # constant
            decayed = jnp.asarray(peak, jnp.float32)
        if warmup == 0:
            return decayed
        return jnp.where(t < warmup, peak * t / warmup, decayed)

    return schedule


# ---- Adam without bias correction -------------------------------------------------------

class ScaleByBertAdamState(NamedTuple):
    mu: Any
    nu: Any


def scale_by_adam_no_bias_correction(b1: float = 0.9, b2: float = 0.999,
                                     eps: float = 1e-6) -> optax.GradientTransformation:
    """m / (sqrt(v) + eps) with raw (not bias-corrected) moments, as BERT's optimizer."""

    def init(params):
        zeros = jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)
        return ScaleByBertAdamState(mu=zeros, nu=jax.tree.map(jnp.copy, zeros))

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return out, ScaleByBertAdamState(mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


# ---- clipping ---------------------------------------------------------------------------

def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Every gradient times max_norm / max(global_norm, max_norm), as
    `tf.clip_by_global_norm` in the original.

    optax's transform instead selects between g and g / norm * max_norm. XLA treats that
    per-element divide as too expensive to recompute in each consumer, so the clipped
    gradients were written out and read back by the moment and parameter updates: a
    multiply by one scalar fuses into them, and bert-base's optimizer update on CPU
    took ~2.5x less time (measured on the update alone).
    """

    def update(updates, state, params=None):
        del params
        scale = max_norm / jnp.maximum(optax.tree.norm(updates), max_norm)
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


# ---- parameter dtype ------------------------------------------------------------------

def check_param_dtype(param_dtype: str) -> None:
    """Training keeps float32 parameters (the master weights) and float32 moments.

    The optimizer updates the parameters in their storage dtype, so bf16 ones would drop
    every update below 2^-8 of a weight (lr 1e-4 steps vanish), and optax's Adam keeps
    its moments in the parameters' dtype. bf16 compute needs no bf16 storage: with
    `dtype="bfloat16"` each step casts the fp32 parameters to bf16 where they are used,
    and the gradients flow back to them in fp32. That is the mixed precision MaxText
    (weight_dtype float32, dtype bfloat16), levanter (mp "p=f32,c=bfloat16") and t5x
    (fp32 params, bf16 activations) train with; a second, bf16 copy of the weights would
    only duplicate state, so bf16 parameters are refused rather than shadowed.
    """
    if jnp.dtype(param_dtype) != jnp.float32:
        raise UserError(f"model.param_dtype={param_dtype} cannot be trained (the optimizer "
                        "would update bf16 weights and lose small steps); set "
                        "param_dtype=float32 with dtype=bfloat16 for fp32 master weights "
                        "and bf16 compute")


# ---- the optimizer ----------------------------------------------------------------------

def build(cfg: ml_collections.ConfigDict, total_steps: int
          ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer a config's `optimizer` section describes, and its lr schedule.

    `cfg.name`: "bert_adam" (the original), "adamw" (bias-corrected), or "lamb".
    """
    schedule = learning_rate_schedule(cfg, total_steps)
    b1, b2, eps = float(cfg.b1), float(cfg.b2), float(cfg.eps)
    name = cfg.name
    if name == "bert_adam":
        scale = scale_by_adam_no_bias_correction(b1, b2, eps)
    elif name in ("adamw", "lamb"):
        scale = optax.scale_by_adam(b1, b2, eps)
    else:
        raise UserError(f"unknown optimizer {name!r}; choose bert_adam, adamw or lamb")
    parts = []
    if cfg.get("clip_norm"):
        parts.append(clip_by_global_norm(float(cfg.clip_norm)))
    parts.append(scale)
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(float(cfg.weight_decay), mask=decay_mask))
    if name == "lamb":
        parts.append(optax.scale_by_trust_ratio())
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule


def default_config() -> ml_collections.ConfigDict:
    """The original pre-training optimizer: BERT Adam, lr 1e-4, 10k warmup, linear decay."""
    return ml_collections.ConfigDict(dict(
        name="bert_adam", lr=1e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
        clip_norm=1.0, warmup_steps=10_000, decay="linear", decay_power=1.0, end_lr=0.0,
        decay_from_warmup=False,
    ))
