"""Sharded training equals single-device training; mesh and batch errors are clear."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from bert_jax import sharding
from bert_jax.errors import UserError

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def sharded_results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(HERE / "sharded_equivalence.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["(8, 1, 1)x1", "(2, 4, 1)x1", "(2, 2, 2)x1"])
def test_sharded_step_equals_single_device(sharded_results, mesh):
    got, ref = sharded_results[mesh], sharded_results["reference_losses"]
    assert got["losses"] == pytest.approx(ref, abs=2e-5)
    assert got["max_param_diff"] < 2e-5
    assert got["max_opt_diff"] < 2e-5


@pytest.mark.slow
def test_meshes_really_shard_the_parameters(sharded_results):
    # "specs": the PartitionSpecs of the parameters that are not fully replicated.
    # (2, 4, 1): fsdp shards the embed dim; (2, 2, 2): tensor shards heads/mlp/vocab too;
    # (8, 1, 1) is pure data parallelism: every parameter whole on every device.
    assert any("fsdp" in s for s in sharded_results["(2, 4, 1)x1"]["specs"])
    assert any("tensor" in s for s in sharded_results["(2, 2, 2)x1"]["specs"])
    assert sharded_results["(8, 1, 1)x1"]["specs"] == []


@pytest.mark.slow
@pytest.mark.parametrize("run", ["(1, 1, 1)x4", "(8, 1, 1)x2"])
def test_gradient_accumulation_equals_one_large_batch(sharded_results, run):
    got, ref = sharded_results[run], sharded_results["reference_losses"]
    assert got["losses"] == pytest.approx(ref, abs=2e-5)
    assert got["max_param_diff"] < 2e-5


@pytest.mark.slow
def test_data_parallel_dropout_draws_the_single_device_masks(sharded_results):
    # Dropout 0.1 on mesh (8, 1, 1): each data shard of the gradient's shard_map counts
    # its masks from its first row's global index, so the step is the one-device step.
    got = sharded_results["dropout"]
    assert got["losses"] != pytest.approx(sharded_results["reference_losses"], abs=1e-3)
    assert got["losses"] == pytest.approx(got["reference_losses"], abs=2e-5)
    assert got["max_param_diff"] < 2e-5


def test_mesh_that_does_not_match_the_devices():
    n = jax.device_count()
    with pytest.raises(UserError, match="needs"):
        sharding.make_mesh((n + 1, 1, 1))
    with pytest.raises(UserError, match="does not divide"):
        sharding.make_mesh((-1, n + 1, 1))


CHECK_BATCH = """
from bert_jax import sharding
from bert_jax.errors import UserError
for shape in [(8, 1, 1), (2, 4, 1), (1, 1, 8)]:
    mesh = sharding.make_mesh(shape)
    for batch in (8, 12, 16):
        try:
            sharding.check_batch(batch, mesh)
            print(shape, batch, "ok")
        except UserError as e:
            print(shape, batch, e)
"""


def test_batch_that_does_not_divide_over_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", CHECK_BATCH], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    # The batch splits over data x fsdp (8 devices, then 8, then 1); tensor holds copies.
    assert lines[:3] == ["(8, 1, 1) 8 ok",
                         "(8, 1, 1) 12 batch size 12 does not divide over 8 data-parallel "
                         "devices (mesh {'data': 8, 'fsdp': 1, 'tensor': 1})",
                         "(8, 1, 1) 16 ok"]
    assert lines[3:6] == ["(2, 4, 1) 8 ok",
                          "(2, 4, 1) 12 batch size 12 does not divide over 8 data-parallel "
                          "devices (mesh {'data': 2, 'fsdp': 4, 'tensor': 1})",
                          "(2, 4, 1) 16 ok"]
    assert lines[6:] == ["(1, 1, 8) 8 ok", "(1, 1, 8) 12 ok", "(1, 1, 8) 16 ok"]
