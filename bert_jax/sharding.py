"""Device mesh, logical-axis rules, and multi-host start-up.

One code path from one CPU to a multi-host mesh: a `Mesh` with axes
(data, fsdp, tensor). Parameters and activations carry logical axis names (see
model.py) and the rules map them onto mesh axes. `RULES`, the default (a config's
`mesh.rules`): batch over data x fsdp, the embedding dim of the weights over fsdp
(ZeRO-3 style parameter and optimizer-state sharding), heads, mlp and vocab over tensor
(Megatron-style model parallelism); the activations' embedding dim (`act_embed`) stays
whole. A pmap-style pure data-parallel run is the mesh (n, 1, 1); one device is (1, 1, 1).

The steps are traced under `in_mesh(mesh, rules)`: the mesh's abstract mesh (what
`with_sharding_constraint` and `shard_map` read; `jax.set_mesh` would set it too, but
refuses to run inside a trace, and `with mesh:` no longer sets it) plus the rules, so
the model's `constrain` calls take effect.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bert_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, Any], ...]

# logical axis name -> mesh axes (None: replicated). As flax reads them: in order, each
# rule taking its dimension if the dimension and the mesh axes are still free. So a
# weight with a tensor-parallel dim (heads, mlp, vocab) shards its embed dim over fsdp
# alone, and one without (LayerNorm, position embeddings, the pooler) over fsdp x
# tensor: no parameter is whole on a tensor-parallel device (ZeRO-style, gathered for
# use; they are 1.5% of bert-base).
RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", ("fsdp", "tensor")),
    ("embed", "fsdp"),
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


def normalize_rules(rules: Sequence[Sequence[Any]]) -> Rules:
    """Rules as tuples (a config read back from JSON holds lists); checks the mesh axes."""
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise UserError(f"a sharding rule is (logical name, mesh axes), got {rule!r}")
        name, axes = rule
        axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
        for axis in (axes if isinstance(axes, tuple) else (axes,)):
            if axis is not None and axis not in MESH_AXES:
                raise UserError(f"sharding rule {name!r} names mesh axis {axis!r}; the mesh "
                                f"axes are {MESH_AXES}")
        out.append((str(name), axes))
    return tuple(out)


def config_rules(mesh_config: Any) -> Rules:
    """The rules of a config's `mesh` section (`RULES` for configs saved before it had any)."""
    return normalize_rules(mesh_config.get("rules", RULES))


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Any, name: str,
         warn: bool = True) -> PartitionSpec:
    """Replicates a dimension whose size the mesh axes do not divide (e.g. 12 heads over
    8 tensor shards) instead of failing, and drops manual axes (inside a `shard_map`)."""
    manual = set(getattr(mesh, "manual_axes", ()))
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ())
                     if a not in manual)
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % size:
            if warn:
                logging.warning("replicating dim %d of %s: %d does not divide over %s", dim,
                                name, dim, axes)
            axes = ()
        fitted.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*fitted)


def logical_to_shardings(logical_specs: Any, shapes: Any, mesh: Mesh,
                         rules: Rules = RULES) -> Any:
    """NamedShardings for a pytree, from its logical PartitionSpecs and shapes."""
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)

    def one(path, spec, shape):
        spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec()
        return NamedSharding(mesh, _fit(spec, shape.shape, mesh, jax.tree_util.keystr(path)))

    return jax.tree_util.tree_map_with_path(
        one, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


@contextlib.contextmanager
def in_mesh(mesh: Mesh, rules: Rules = RULES) -> Iterator[None]:
    """The context to trace under (inside `jax.jit` too): the mesh as jax's current
    abstract mesh, and the logical-axis rules that `constrain` reads."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Lays out an activation by its logical axis names under the current mesh and rules
    (see `in_mesh`); a dimension that does not divide over its mesh axes stays whole, and
    without a mesh this is the identity."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = nn.logical_to_mesh_axes(names, nn.get_logical_axis_rules())
    return jax.lax.with_sharding_constraint(x, _fit(spec, x.shape, mesh, "", warn=False))


def manual_row_offset(rows: int) -> jax.Array | int:
    """Inside a `shard_map` that is manual over `data` (the train step's gradient), the
    global index of this shard's first row of a batch-leading array of `rows` local rows
    (the batch is split over data, major); 0 elsewhere."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "data" not in mesh.manual_axes:
        return 0
    return jax.lax.axis_index("data") * rows


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
