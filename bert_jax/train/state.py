"""The train state and its shardings over a mesh.

`TrainState` is a pytree: step, params, optimizer state, and the base dropout key
(step t uses `fold_in(rng, t)`, so a resumed run draws the same dropout masks).
Shardings come from the parameters' logical axis names: the optimizer's moments are
initialised from the *boxed* (logically annotated) parameters under `eval_shape`, so
they inherit the same names and shard exactly like the parameters they track.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from bert_jax import model as model_lib
from bert_jax import optim, sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # typed PRNG key data (uint32[2]) for dropout


def _boxed_state(module: nn.Module, optimizer: optax.GradientTransformation) -> TrainState:
    boxed = module.init(jax.random.key(0), *model_lib._dummy_inputs(module.config))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=boxed,
                      opt_state=optimizer.init(boxed),
                      rng=jax.random.key_data(jax.random.key(0)))


def state_shardings(module: nn.Module, optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules: sharding.Rules = sharding.RULES) -> Any:
    """NamedShardings of every leaf of the TrainState, without allocating anything.
    Every train state is laid out here first, so this refuses non-fp32 parameters."""
    optim.check_param_dtype(module.config.param_dtype)
    boxed = jax.eval_shape(lambda: _boxed_state(module, optimizer))
    logical = nn.get_partition_spec(boxed)
    shapes = nn.meta.unbox(boxed)
    return sharding.logical_to_shardings(logical, shapes, mesh, rules)


def abstract_state(module: nn.Module, optimizer: optax.GradientTransformation,
                   mesh: Mesh, rules: sharding.Rules = sharding.RULES) -> TrainState:
    """ShapeDtypeStructs with shardings: the restore target of a checkpoint."""
    shapes = nn.meta.unbox(jax.eval_shape(lambda: _boxed_state(module, optimizer)))
    shardings = state_shardings(module, optimizer, mesh, rules)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def init_state(module: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh,
               seed: int, params: Any | None = None,
               param_transform: Callable[[Any], Any] | None = None,
               rules: sharding.Rules = sharding.RULES) -> TrainState:
    """A fresh TrainState, created directly in its sharded layout.

    `params` (e.g. released weights) replaces the random initialisation; the optimizer
    state always starts fresh (the original advice for continued pre-training).
    """
    shardings = state_shardings(module, optimizer, mesh, rules)
    init_key, dropout_key = jax.random.split(jax.random.key(seed))

    def create(given):
        if given is None:
            fresh = module.init(init_key, *model_lib._dummy_inputs(module.config))["params"]
            given = nn.meta.unbox(fresh)
        if param_transform is not None:
            given = param_transform(given)
        return TrainState(step=jnp.zeros((), jnp.int32), params=given,
                          opt_state=optimizer.init(given),
                          rng=jax.random.key_data(dropout_key))

    with sharding.in_mesh(mesh, rules):
        return jax.jit(create, out_shardings=shardings)(params)
