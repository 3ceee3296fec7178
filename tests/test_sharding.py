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
def test_gradient_accumulation_equals_one_large_batch(sharded_results):
    got, ref = sharded_results["(1, 1, 1)x4"], sharded_results["reference_losses"]
    assert got["losses"] == pytest.approx(ref, abs=2e-5)
    assert got["max_param_diff"] < 2e-5


def test_mesh_that_does_not_match_the_devices():
    n = jax.device_count()
    with pytest.raises(UserError, match="needs"):
        sharding.make_mesh((n + 1, 1, 1))
    with pytest.raises(UserError, match="does not divide"):
        sharding.make_mesh((-1, n + 1, 1))


def test_batch_that_does_not_divide_over_devices():
    mesh = sharding.make_mesh((-1, 1, 1))
    sharding.check_batch(8 * jax.device_count(), mesh)
    if jax.device_count() > 1:
        with pytest.raises(UserError, match="does not divide"):
            sharding.check_batch(jax.device_count() + 1, mesh)
