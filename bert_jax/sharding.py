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


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None,
              dcn_shape: Sequence[int] = (1, 1, 1)) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one -1 entry of `shape` takes the rest
    (the layout: `device_array`)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(device_array(shape, devices, dcn_shape), MESH_AXES)


def device_array(shape: Sequence[int], devices: Sequence[Any],
                 dcn_shape: Sequence[int] = (1, 1, 1)) -> np.ndarray:
    """The devices laid out as the mesh `shape` ([data, fsdp, tensor]).

    The layout follows the hardware: `mesh_utils.create_device_mesh` puts neighbouring
    devices of the TPU torus (or NVLink island) on the inner axes, on every backend and
    host count. For multi-slice TPU (or GPU hosts joined by a slower network),
    `dcn_shape` says how many slices span each axis, e.g. (2, 1, 1): data parallelism
    across 2 slices, everything else inside a slice
    (`mesh_utils.create_hybrid_device_mesh`); `shape` is still the whole mesh.
    """
    shape, dcn_shape = list(shape), list(dcn_shape)
    if len(shape) != len(MESH_AXES) or len(dcn_shape) != len(MESH_AXES):
        raise UserError(f"mesh shape {tuple(shape)} and dcn_shape {tuple(dcn_shape)} need "
                        f"{len(MESH_AXES)} entries {MESH_AXES}")
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
    if any(d < 1 or s % d for s, d in zip(shape, dcn_shape)):
        raise UserError(f"mesh dcn_shape {tuple(dcn_shape)} must divide the mesh shape "
                        f"{tuple(shape)} axis by axis")
    if math.prod(dcn_shape) > 1:
        ici_shape = [s // d for s, d in zip(shape, dcn_shape)]
        try:
            array = mesh_utils.create_hybrid_device_mesh(
                ici_shape, dcn_shape, devices,
                process_is_granule=not hasattr(devices[0], "slice_index"))
        except ValueError as e:
            raise UserError(f"mesh shape {tuple(shape)} with dcn_shape {tuple(dcn_shape)}: "
                            f"{e}") from None
    else:
        try:
            array = mesh_utils.create_device_mesh(shape, devices,
                                                  allow_split_physical_axes=True)
        except (ValueError, NotImplementedError) as e:
            raise UserError(f"mesh shape {tuple(shape)} does not fit the device topology: "
                            f"{e}") from None
    return array


def host_batch_blocks(process_of_device: np.ndarray) -> dict[int, list[int]]:
    """The batch blocks each host's devices hold, from the process index of each mesh
    position ([data, fsdp, tensor]); raises UserError where a loader could not feed them.

    The batch splits into data x fsdp blocks, block d * fsdp + f on the devices at mesh
    (d, f, :). Each host's loader reads its own examples (1 / hosts of the batch), and
    `jax.make_array_from_process_local_data` lays them on the host's blocks in order. That
    is right only when every block's devices are on one host (a tensor axis that spans
    hosts would give two hosts' different examples to rows that must be the same) and
    every host holds the same number of blocks.
    """
    data, fsdp, tensor = process_of_device.shape
    owners: dict[int, list[int]] = {}
    for d in range(data):
        for f in range(fsdp):
            hosts = sorted(set(process_of_device[d, f].tolist()))
            if len(hosts) > 1:
                raise UserError(
                    f"mesh (data, fsdp, tensor) = {process_of_device.shape}: batch block "
                    f"{d * fsdp + f} is on devices of hosts {hosts}, because the tensor axis "
                    f"({tensor}) spans hosts; each host's loader reads different examples, "
                    "so they would be mixed into rows that must be the same. Keep the "
                    "tensor axis inside a host and spread hosts over data or fsdp")
            owners.setdefault(hosts[0], []).append(d * fsdp + f)
    counts = {h: len(b) for h, b in sorted(owners.items())}
    if len(set(counts.values())) > 1:
        raise UserError(f"mesh (data, fsdp, tensor) = {process_of_device.shape} gives hosts "
                        f"unequal shares of the batch (blocks per host {counts}); every "
                        "host's loader reads the same number of examples")
    return owners


def check_host_batches(mesh: Mesh) -> None:
    """Start-up check that each host's loader slice is what the mesh gives its devices."""
    host_batch_blocks(np.vectorize(lambda d: d.process_index, otypes=[int])(mesh.devices))


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
