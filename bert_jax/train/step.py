"""The one train-step builder (pre-training and fine-tuning) and the eval step.

`make_train_step(objective, optimizer, ...)` returns a pure function
`(state, batch) -> (state, metrics)`; `jit_step` compiles it with explicit in/out
shardings over the mesh and donates the old state. Features:
- gradient accumulation over `accum_steps` micro-batches inside the step (a
  `lax.scan`), exactly equal to one batch `accum_steps` times larger (see objectives.py
  for why the split into numerators and denominators makes it exact);
- one gradient reduction over the `data` axis per step: the gradient runs inside
  `shard_map`, manual over `data` (fsdp and tensor stay with the partitioner), so each
  data shard sums its gradients locally, over its rows and micro-batches, and the
  shards reduce once, after the scan. Left to the partitioner, the reduction runs inside
  the loop (once per micro-batch) and twice for the tied word embeddings. Dropout masks
  are the same as without the shard_map (`sharding.manual_row_offset`);
- a non-finite loss or gradient never reaches the parameters: the step keeps the old
  params and optimizer state and reports `finite=0`; the loop decides to stop or go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from bert_jax import sharding
from bert_jax.train.objectives import Objective
from bert_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _loss(objective: Objective, params: Any, batch: Batch, rng: jax.Array,
          dens: Metrics) -> tuple[jax.Array, Metrics]:
    nums = objective.numerators(params, batch, rng, train=True)
    loss = sum(nums[k] / jnp.maximum(dens[k], 1e-9) for k in objective.loss_names())
    return loss, nums


def make_train_step(objective: Objective, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None, *, accum_steps: int = 1
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The train step for any objective (objectives.PreTraining, .Classification)."""
    grad_fn = jax.value_and_grad(_loss, argnums=1, has_aux=True)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        dens = objective.denominators(batch)
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        loss, nums, grads = _gradients(grad_fn, objective, accum_steps, state.params, batch,
                                       rng, dens)

        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(params_and_opt):
            params, opt_state = params_and_opt
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        # A cond, not a select between old and new: with the state donated, XLA updates
        # the parameters and moments in place instead of copying all of them (~8% of a
        # bert-base step on CPU).
        params, opt_state = jax.lax.cond(finite, update, lambda p_o: p_o,
                                         (state.params, state.opt_state))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {k: nums[k] / jnp.maximum(dens[k], 1e-9) for k in nums}
        metrics |= {"loss": loss, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32)}
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new_state, metrics

    return step


def _gradients(grad_fn: Callable, objective: Objective, accum_steps: int, params: Any,
               batch: Batch, rng: jax.Array, dens: dict[str, jax.Array]) -> tuple:
    """Loss, numerators and gradients of the batch, summed over `accum_steps`
    micro-batches and reduced over the data axis once."""
    mesh = jax.sharding.get_abstract_mesh()
    shape = {} if mesh.empty else dict(mesh.shape)
    data = shape.get("data", 1)
    if shape.get("fsdp", 1) > 1 and shape.get("tensor", 1) > 1:
        # XLA (jax 0.10.2) fails a CHECK partitioning a shard_map manual over `data` with
        # both other axes auto, e.g. mesh (2, 2, 2): there the partitioner places the
        # reduction (correct values; more traffic, see the README's Sharding section).
        data = 1

    def local(params, batch, rng, dens):
        if accum_steps == 1:
            (loss, nums), grads = grad_fn(objective, params, batch, rng, dens)
            sums = (loss, nums, grads)
        else:
            def split(x):
                # Row r of micro-batch i is row r * k + i of the (local) batch: every
                # micro-batch takes an equal share of each device's rows, so no data moves.
                b = x.shape[0]
                if b % accum_steps:
                    raise ValueError(f"batch {b} does not split into {accum_steps} "
                                     "micro-batches")
                return jnp.moveaxis(x.reshape(b // accum_steps, accum_steps, *x.shape[1:]),
                                    1, 0)

            def body(carry, xs):
                i, mb = xs
                (loss, nums), grads = grad_fn(objective, params, mb,
                                              jax.random.fold_in(rng, i), dens)
                return jax.tree.map(jnp.add, carry, (loss, nums, grads)), None

            zeros = (jnp.zeros((), jnp.float32),
                     {k: jnp.zeros((), jnp.float32) for k in dens},
                     jax.tree.map(jnp.zeros_like, params))
            sums, _ = jax.lax.scan(body, zeros,
                                   (jnp.arange(accum_steps), jax.tree.map(split, batch)))
        return jax.lax.psum(sums, "data") if data > 1 else sums

    if data == 1:
        return local(params, batch, rng, dens)
    # Manual over `data` only: fsdp and tensor stay with the partitioner inside.
    rep, rows = PartitionSpec(), PartitionSpec("data")
    return jax.shard_map(local, in_specs=(rep, rows, rep, rep), out_specs=rep,
                         axis_names={"data"}, check_vma=False)(params, batch, rng, dens)


def make_eval_step(objective: Objective) -> Callable[[Any, Batch], Metrics]:
    """`(params, batch) -> sums`: numerators and denominators, summed exactly over batches.

    Keys are `<metric>/num` and `<metric>/den`; `finish_eval` divides them.
    """

    def step(params: Any, batch: Batch) -> Metrics:
        nums = objective.numerators(params, batch, None, train=False)
        dens = objective.denominators(batch)
        return {**{f"{k}/num": v for k, v in nums.items()},
                **{f"{k}/den": v for k, v in dens.items()}}

    return step


def finish_eval(sums: dict[str, float]) -> dict[str, float]:
    names = {k.rsplit("/", 1)[0] for k in sums}
    return {k: float(sums[f"{k}/num"]) / max(float(sums[f"{k}/den"]), 1e-9) for k in names}


def run_eval(eval_step: Callable, params: Any, batches: Iterable[dict[str, np.ndarray]],
             mesh: Mesh) -> dict[str, float]:
    """The metrics of a jitted eval step over host-local `batches`, summed exactly."""
    sums: dict[str, float] = {}
    for batch in batches:
        out = jax.device_get(eval_step(params, sharding.global_batch(batch, mesh)))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return finish_eval(sums) if sums else {}


def _in_mesh(fn: Callable, mesh: Mesh, rules: sharding.Rules) -> Callable:
    """Traces `fn` under the mesh and the logical-axis rules (`sharding.in_mesh`), so the
    model's activation constraints take effect."""

    def wrapped(*args):
        with sharding.in_mesh(mesh, rules):
            return fn(*args)

    return wrapped


def jit_train_step(step: Callable, state_shardings: Any, mesh: Mesh,
                   rules: sharding.Rules = sharding.RULES) -> Callable:
    """Compiles a train step with explicit shardings; the input state is donated."""
    return jax.jit(_in_mesh(step, mesh, rules),
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=0)


def jit_eval_step(step: Callable, param_shardings: Any, mesh: Mesh,
                  rules: sharding.Rules = sharding.RULES) -> Callable:
    return jax.jit(_in_mesh(step, mesh, rules),
                   in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))
