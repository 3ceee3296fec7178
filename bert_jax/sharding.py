"""Device mesh, logical-axis rules, and multi-host start-up.

One code path from one CPU to a multi-host mesh: a `Mesh` with axes
(data, fsdp, tensor). Parameters carry logical axis names (see model.py) and
`RULES` maps them onto mesh axes: batch over data x fsdp, the embedding dim of the
weights over fsdp (ZeRO-3 style parameter and optimizer-state sharding), heads, mlp
and vocab over tensor (Megatron-style model parallelism). A pmap-style pure
data-parallel run is the mesh (n, 1, 1); one device is (1, 1, 1).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bert_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axes (None: replicated)
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("length", None),
    ("act_embed", None),
)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Starts jax.distributed when asked (config or environment); a no-op for one process.

    On TPU pods and SLURM/GPU clusters `jax.distributed.initialize()` finds everything
    itself: set BERT_JAX_DISTRIBUTED=1. For local multi-process runs (tests, CPU),
    pass the coordinator address, the process count and this process's id.
    """
    if coordinator_address or num_processes:
        # Cross-process collectives on CPU devices (it only affects the CPU client; the
        # backend must not be touched before initialize, so no platform check here).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    elif os.environ.get("BERT_JAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one -1 entry takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise UserError(f"mesh shape {tuple(shape)} needs {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise UserError(f"mesh shape {tuple(shape)} has more than one -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if len(devices) % known:
            raise UserError(f"mesh shape {tuple(shape)} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise UserError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, "
                        f"but there are {len(devices)}")
    if len(devices) > 1 and jax.process_count() == 1:
        array = mesh_utils.create_device_mesh(shape, devices)
    else:
        # Multi-host: keep each host's devices together along the data axis.
        array = np.asarray(devices).reshape(shape)
    return Mesh(array, MESH_AXES)


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, name: str) -> PartitionSpec:
    """Replicates a dimension whose size the mesh axes do not divide (e.g. vocab 28996
    over 8 tensor shards) instead of failing; logged once per parameter."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            fitted.append(None)
            continue
        size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
        if dim % size:
            logging.info("replicating dim %d of %s: %d does not divide over %s", dim, name,
                         dim, axes)
            fitted.append(None)
        else:
            fitted.append(axes)
    return PartitionSpec(*fitted)


def logical_to_shardings(logical_specs: Any, shapes: Any, mesh: Mesh,
                         rules: Sequence[tuple[str, Any]] = RULES) -> Any:
    """NamedShardings for a pytree, from its logical PartitionSpecs and shapes."""
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)

    def one(path, spec, shape):
        spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec()
        return NamedSharding(mesh, _fit(spec, shape.shape, mesh, jax.tree_util.keystr(path)))

    return jax.tree_util.tree_map_with_path(
        one, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Examples split over data x fsdp; every other dimension whole."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(global_batch: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the data-parallel devices and hosts."""
    dp = data_parallel_size(mesh)
    if global_batch % dp:
        raise UserError(f"batch size {global_batch} does not divide over {dp} data-parallel "
                        f"devices (mesh {dict(mesh.shape)})")
    if global_batch % jax.process_count():
        raise UserError(f"batch size {global_batch} does not divide over "
                        f"{jax.process_count()} hosts")


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's slice of the batch into global arrays sharded over the mesh."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
