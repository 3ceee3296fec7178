"""The FLOP formula of bert_jax/flops.py against the matmuls the model really runs."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import flops
from bert_jax.config import preset
from bert_jax.model import build, init_params

CFG = preset("tiny")
B, S, P = 2, 16, 3


def matmul_flops(fn, *args) -> int:
    """2 x multiply-adds of every dot_general in fn's jaxpr, sub-jaxprs included."""

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (lhs_contract, _), _ = eqn.params["dimension_numbers"]
                lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
                k = np.prod([lhs.shape[d] for d in lhs_contract], dtype=np.int64)
                total += 2 * int(np.prod(out.shape, dtype=np.int64)) * int(k)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                total += count(sub)
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("head,masked", [("pretraining", True), ("pretraining", False),
                                         ("mlm", True), ("encoder", False)])
def test_formula_counts_the_models_matmuls(head, masked):
    net = build(CFG, head)
    params = init_params(net, jax.random.key(0))
    ids = jnp.ones((B, S), jnp.int32)
    positions = jnp.tile(jnp.arange(1, P + 1, dtype=jnp.int32), (B, 1))
    args = (ids, None, None, positions) if masked else (ids,)
    counted = matmul_flops(lambda p: net.apply({"params": p}, *args), params)
    if head == "encoder":
        # The bare encoder also has its pooler: 2*H*H per sequence.
        expected = flops.encoder_flops(CFG, S) + 2 * CFG.hidden_size ** 2
    else:
        expected = flops.forward_flops(CFG, S, P if masked else None, nsp=head == "pretraining")
    assert counted == B * expected
