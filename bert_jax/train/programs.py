"""The one program factory: model -> optimizer -> mesh -> shardings -> state -> jitted steps.

    mesh, rules = programs.mesh_from_config(config.mesh)
    optimizer, schedule = optim.build(config.optimizer, total_steps)
    p = programs.build(model_config, "pretraining", objectives.PreTraining, optimizer,
                       schedule, mesh, rules, accum_steps=4)
    state = p.init_state(seed=0)                       # created in its sharded layout
    state, metrics = p.train_step(state, sharding.global_batch(batch, p.mesh))
    sums = p.eval_step(state.params, sharding.global_batch(batch, p.mesh))

Pre-training, fine-tuning, the training benchmark and the sharding tests all set up their
programs here, so a change to how a run is laid out on the devices (the rules, the
donation, the state's shardings) is made once. Nothing is compiled until a step is first
called; the jitted functions compile once per batch shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import optax
from jax.sharding import Mesh

from bert_jax import model as model_lib
from bert_jax import sharding
from bert_jax.config import BertConfig
from bert_jax.train import state as state_lib
from bert_jax.train import step as step_lib
from bert_jax.train.objectives import Objective
from bert_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class Programs:
    """Everything a training loop runs, laid out over one mesh."""

    mesh: Mesh
    rules: sharding.Rules
    module: nn.Module
    objective: Objective
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule | None
    state_shardings: Any  # a TrainState of NamedShardings
    train_step: Callable[[TrainState, Any], tuple[TrainState, dict]]  # donates the state
    eval_step: Callable[[Any, Any], dict]  # (params, batch) -> metric sums (run_eval)

    def init_state(self, seed: int, params: Any | None = None) -> TrainState:
        """A fresh state in its sharded layout; `params` (e.g. released weights) replace
        the random initialisation drawn from `seed`."""
        return state_lib.init_state(self.module, self.optimizer, self.mesh, seed,
                                    params=params, rules=self.rules)

    def abstract_state(self) -> TrainState:
        """The state's shapes and shardings, allocating nothing: a checkpoint's restore
        target."""
        return state_lib.abstract_state(self.module, self.optimizer, self.mesh, self.rules)


def mesh_from_config(mesh_config: Any) -> tuple[Mesh, sharding.Rules]:
    """The mesh and logical-axis rules of a config's `mesh` section (shape, dcn_shape,
    rules), as configs/pretrain.py and configs/glue.py have it."""
    mesh = sharding.make_mesh(tuple(mesh_config.shape),
                              dcn_shape=tuple(mesh_config.get("dcn_shape", (1, 1, 1))))
    return mesh, sharding.config_rules(mesh_config)


def build(model_config: BertConfig, head: str, make_objective: Callable[[nn.Module], Objective],
          optimizer: optax.GradientTransformation, schedule: optax.Schedule | None,
          mesh: Mesh, rules: sharding.Rules = sharding.RULES, *,
          accum_steps: int = 1) -> Programs:
    """The programs of a run of `model_config` with `head` (a key of heads.HEADS) trained on
    `make_objective(module)` (e.g. objectives.PreTraining, objectives.Classification,
    or a heads.Objective's `make`) by `optimizer`."""
    module = model_lib.build(model_config, head)
    objective = make_objective(module)
    shardings = state_lib.state_shardings(module, optimizer, mesh, rules)
    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(objective, optimizer, schedule, accum_steps=accum_steps),
        shardings, mesh, rules)
    eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(objective), shardings.params,
                                       mesh, rules)
    return Programs(mesh=mesh, rules=rules, module=module, objective=objective,
                    optimizer=optimizer, schedule=schedule, state_shardings=shardings,
                    train_step=train_step, eval_step=eval_step)
