"""Basic model behaviour: shapes per head, masking, gathered MLM logits, bf16, remat, axes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.config import preset
from bert_jax.model import build, init_params, param_logical_axes, param_shapes

CFG = preset("tiny", num_labels=3)
B, L = 3, 16


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, CFG.vocab_size, (B, L)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)


@pytest.fixture(scope="module")
def params():
    return {head: init_params(build(CFG, head), jax.random.key(0))
            for head in ("encoder", "pretraining", "mlm", "classification")}


def test_output_shapes_of_every_head(params):
    ids, mask, types = inputs()
    H, V = CFG.hidden_size, CFG.vocab_size
    enc = build(CFG, "encoder").apply({"params": params["encoder"]}, ids, mask, types,
                                      output_hidden_states=True, output_attentions=True)
    assert enc.last_hidden_state.shape == (B, L, H) and enc.pooler_output.shape == (B, H)
    assert len(enc.hidden_states) == CFG.num_hidden_layers + 1
    assert all(h.shape == (B, L, H) for h in enc.hidden_states)
    assert len(enc.attentions) == CFG.num_hidden_layers
    assert all(a.shape == (B, CFG.num_attention_heads, L, L) for a in enc.attentions)
    np.testing.assert_allclose(np.asarray(enc.attentions[0]).sum(-1), 1.0, atol=1e-5)

    pre = build(CFG, "pretraining").apply({"params": params["pretraining"]}, ids, mask, types)
    assert pre.mlm_logits.shape == (B, L, V) and pre.nsp_logits.shape == (B, 2)
    assert pre.mlm_logits.dtype == jnp.float32
    mlm = build(CFG, "mlm").apply({"params": params["mlm"]}, ids, mask, types)
    assert mlm.mlm_logits.shape == (B, L, V) and mlm.nsp_logits is None
    assert "cls_seq_relationship" not in params["mlm"]
    logits = build(CFG, "classification").apply({"params": params["classification"]},
                                                ids, mask, types)
    assert logits.shape == (B, 3)


def test_attention_mask_really_masks(params):
    """Changing padded tokens changes nothing at the real positions."""
    ids, mask, types = inputs()
    other = jnp.where(mask == 0, 7, ids)  # new ids at the padding only
    net = build(CFG, "pretraining")
    a = net.apply({"params": params["pretraining"]}, ids, mask, types)
    b = net.apply({"params": params["pretraining"]}, other, mask, types)
    keep = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(a.encoder.last_hidden_state)[keep],
                               np.asarray(b.encoder.last_hidden_state)[keep], atol=1e-6)
    np.testing.assert_allclose(np.asarray(a.nsp_logits), np.asarray(b.nsp_logits), atol=1e-6)
    # ... whereas without the mask the same change does reach the real positions.
    c = net.apply({"params": params["pretraining"]}, other, jnp.ones_like(mask), types)
    d = net.apply({"params": params["pretraining"]}, ids, jnp.ones_like(mask), types)
    assert np.abs(np.asarray(c.encoder.last_hidden_state)[keep]
                  - np.asarray(d.encoder.last_hidden_state)[keep]).max() > 1e-3


@pytest.mark.slow
def test_masked_positions_gather_the_full_logits(params):
    ids, mask, types = inputs()
    positions = jnp.array([[1, 2, 15], [0, 9, 9], [3, 1, 0]], jnp.int32)
    net = build(CFG, "pretraining")
    full = net.apply({"params": params["pretraining"]}, ids, mask, types)
    part = net.apply({"params": params["pretraining"]}, ids, mask, types, positions)
    assert part.mlm_logits.shape == (B, 3, CFG.vocab_size)
    for b in range(B):
        for p in range(3):
            np.testing.assert_allclose(np.asarray(part.mlm_logits[b, p]),
                                       np.asarray(full.mlm_logits[b, int(positions[b, p])]),
                                       atol=1e-5)
    # The last layer ran only at [CLS] and the masked positions: the same states, the
    # same pooled [CLS], so the same NSP logits.
    assert part.encoder.last_hidden_state.shape == (B, 4, CFG.hidden_size)
    rows = np.concatenate([np.zeros((B, 1), int), np.asarray(positions)], axis=1)
    np.testing.assert_allclose(
        np.asarray(part.encoder.last_hidden_state),
        np.take_along_axis(np.asarray(full.encoder.last_hidden_state), rows[..., None], 1),
        atol=1e-5)
    np.testing.assert_allclose(np.asarray(part.nsp_logits), np.asarray(full.nsp_logits),
                               atol=1e-5)


@pytest.mark.slow
def test_masked_positions_give_the_full_models_gradients(params):
    """Computing the last layer at the masked positions only changes no gradient."""
    ids, mask, types = inputs()
    positions = jnp.array([[1, 2, 15], [0, 9, 9], [3, 1, 0]], jnp.int32)
    targets = jnp.asarray(np.random.default_rng(2).integers(0, CFG.vocab_size, (B, 3)))
    net = build(CFG, "pretraining")

    def loss(p, sparse: bool):
        out = net.apply({"params": p}, ids, mask, types, positions if sparse else None)
        logits = out.mlm_logits if sparse else jnp.take_along_axis(
            out.mlm_logits, positions[..., None], axis=1)
        mlm = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1).mean()
        return mlm + jax.nn.log_softmax(out.nsp_logits)[:, 0].mean()

    sparse = jax.grad(loss)(params["pretraining"], True)
    full = jax.grad(loss)(params["pretraining"], False)
    for a, b in zip(jax.tree.leaves(sparse), jax.tree.leaves(full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow
def test_bf16_compute_close_to_fp32_with_fp32_params(params):
    ids, mask, types = inputs()
    fp32 = build(CFG, "pretraining").apply({"params": params["pretraining"]}, ids, mask, types)
    bf16_net = build(CFG.replace(dtype="bfloat16"), "pretraining")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(param_shapes(bf16_net)))
    out = bf16_net.apply({"params": params["pretraining"]}, ids, mask, types)
    assert out.encoder.last_hidden_state.dtype == jnp.bfloat16
    a, b = np.asarray(out.mlm_logits), np.asarray(fp32.mlm_logits)
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max() + 0.02
    np.testing.assert_allclose(np.asarray(out.encoder.last_hidden_state, np.float32),
                               np.asarray(fp32.encoder.last_hidden_state), atol=0.1)


@pytest.mark.slow
def test_remat_gives_identical_gradients(params):
    ids, mask, types = inputs()
    labels = jnp.asarray(np.random.default_rng(1).integers(0, CFG.vocab_size, (B, L)))

    def grads(remat: bool):
        net = build(CFG.replace(remat=remat), "pretraining")

        def loss(p):
            out = net.apply({"params": p}, ids, mask, types)
            logp = jax.nn.log_softmax(out.mlm_logits)
            return -jnp.take_along_axis(logp, labels[..., None], -1).mean() + out.nsp_logits.sum()

        return jax.jit(jax.grad(loss))(params["pretraining"])

    plain, remat = grads(False), grads(True)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert jax.tree.structure(plain) == jax.tree.structure(remat)


@pytest.mark.parametrize("head", ["encoder", "pretraining", "mlm", "classification"])
def test_every_param_has_logical_axes_of_its_rank(params, head):
    axes = param_logical_axes(build(CFG, head))
    leaves = jax.tree_util.tree_leaves_with_path(params[head])
    specs = dict(jax.tree_util.tree_leaves_with_path(
        axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
    assert len(specs) == len(leaves)
    known = {None, "vocab", "embed", "heads", "mlp"}
    for path, x in leaves:
        spec = specs[path]
        assert isinstance(spec, jax.sharding.PartitionSpec), path
        assert len(spec) == x.ndim, (path, spec, x.shape)
        assert set(spec) <= known, (path, spec)
    word = params[head].get("bert", params[head])["embeddings"]["word_embeddings"]["embedding"]
    assert word.shape == (CFG.vocab_size, CFG.hidden_size)
