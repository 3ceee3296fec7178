"""Multi-host pieces that need no second machine: the device layout (topology-aware and
multi-slice meshes, and the check that each host's loader feeds exactly its devices' batch
rows), and workdirs on cloud storage (gs:// through etils.epath, on a fake file system:
nothing here touches the network)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from bert_jax import checkpoint, configlib, sharding
from bert_jax.errors import UserError
from bert_jax.paths import as_path
from bert_jax.train.writer import MetricWriter, read_metrics


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    """What mesh_utils reads of a device (no TPU needed to lay one out)."""

    id: int
    process_index: int
    slice_index: int = 0
    platform: str = "cpu"
    device_kind: str = "fake"


def processes(array: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda d: d.process_index, otypes=[int])(array)


# ---- the mesh and the loader's host slices -------------------------------------------------

def test_hosts_along_data_are_served_by_their_loaders():
    # 2 hosts x 4 devices, data x tensor = (4, 1, 2): each host holds 2 whole blocks.
    devices = [FakeDevice(i, i // 4) for i in range(8)]
    array = sharding.device_array((4, 1, 2), devices)
    assert sharding.host_batch_blocks(processes(array)) == {0: [0, 1], 1: [2, 3]}
    # Blocks of a host need not be neighbours (TPU torus layouts interleave hosts):
    # jax.make_array_from_process_local_data lays each host's rows on its blocks in order.
    interleaved = np.array([0, 1, 0, 1]).reshape(4, 1, 1)
    assert sharding.host_batch_blocks(interleaved) == {0: [0, 2], 1: [1, 3]}


def test_tensor_axis_across_hosts_is_refused():
    # (2, 1, 2) over 2 hosts of 2 devices laid out host-minor: each batch block's two
    # tensor shards are on different hosts, whose loaders read different examples.
    devices = [FakeDevice(i, i % 2) for i in range(4)]
    array = sharding.device_array((2, 1, 2), devices)
    with pytest.raises(UserError, match=r"batch block 0 is on devices of hosts \[0, 1\], "
                                        r"because the tensor axis \(2\) spans hosts"):
        sharding.host_batch_blocks(processes(array))
    with pytest.raises(UserError, match="unequal shares"):
        sharding.host_batch_blocks(np.array([0, 0, 1]).reshape(3, 1, 1))


def test_check_host_batches_on_this_process():
    sharding.check_host_batches(sharding.make_mesh((-1, 1, 1)))  # one host: always fine


def test_multi_slice_mesh_keeps_each_slice_together():
    # 2 slices of 4 devices; data parallel across slices, (2, 2, 1) inside each.
    devices = [FakeDevice(i, i // 4, slice_index=i // 4) for i in range(8)]
    array = sharding.device_array((4, 2, 1), devices, dcn_shape=(2, 1, 1))
    slices = np.vectorize(lambda d: d.slice_index)(array)
    assert array.shape == (4, 2, 1)
    assert (slices[:2] == 0).all() and (slices[2:] == 1).all()
    assert sorted(d.id for d in array.ravel()) == list(range(8))
    with pytest.raises(UserError, match="must divide"):
        sharding.device_array((4, 2, 1), devices, dcn_shape=(3, 1, 1))


# ---- gs:// workdirs -------------------------------------------------------------------------

@pytest.fixture
def fake_gcs(tmp_path):
    """gs://BUCKET/... read and written under tmp_path/BUCKET/... through epath's backend
    (the calls a real gs:// path makes, with the local file system behind them)."""
    root = tmp_path / "gcs"
    seen: list[str] = []

    def local(path) -> str:
        path = os.fspath(path)
        assert path.startswith("gs://"), path  # a mangled gs:/ path would fail here
        seen.append(path)
        return str(root / path.removeprefix("gs://"))

    os_backend = epath.backend.os_backend

    def fwd(name):
        def fn(_original, path, *args, **kwargs):
            if name in ("rename", "replace"):  # the second argument is a path too
                args = (local(args[0]),)
            return getattr(os_backend, name)(local(path), *args, **kwargs)
        return fn

    names = ("open", "exists", "isdir", "listdir", "glob", "makedirs", "mkdir", "remove",
             "rename", "replace", "rmtree", "stat")
    with epath_testing.mock_epath(**{n: fwd(n) for n in names}):
        yield root, seen


def test_gs_paths_stay_urls():
    assert str(as_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
    assert str(as_path("relative/dir")) == os.path.abspath("relative/dir")


def test_config_and_metrics_reach_gs_unmangled(fake_gcs):
    root, seen = fake_gcs
    config = configlib.load("configs/pretrain.py:tiny")
    configlib.save(config, "gs://bucket/run")
    assert (root / "bucket" / "run" / "config.json").is_file()
    assert configlib.load_saved("gs://bucket/run").train.total_steps == 8

    writer = MetricWriter("gs://bucket/run", tensorboard=False)
    writer.write(1, "train", {"loss": 2.0})
    writer.close()
    # A resumed run goes on in the same file (an object store cannot append: the writer
    # rewrites it whole).
    writer = MetricWriter("gs://bucket/run", tensorboard=False)
    writer.write(2, "train", {"loss": 1.5})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics("gs://bucket/run")] == [(1, 2.0),
                                                                                 (2, 1.5)]
    assert (root / "bucket" / "run" / "metrics.jsonl").read_text().count("\n") == 2
    assert "gs://bucket/run/metrics.jsonl" in seen


def test_checkpoint_manager_gets_the_gs_url(monkeypatch):
    """Orbax writes arrays to gs:// with tensorstore's GCS driver (network), so the manager
    is replaced by a recorder: what matters is the directory it is handed."""
    got = {}

    class Recorder:
        def __init__(self, directory, options=None):
            got["directory"] = directory

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", Recorder)
    checkpoint.Checkpointer("gs://bucket/run/checkpoints")
    assert os.fspath(got["directory"]) == "gs://bucket/run/checkpoints"
