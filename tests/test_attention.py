"""The attention plug-in point: every backend that runs on CPU equals "xla" at dropout 0
(padding, segments, sparse queries; values and gradients), and the errors it raises."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.attention import attention
from bert_jax.config import BertConfig, preset
from bert_jax.errors import UserError
from bert_jax.model import build, init_params
from bert_jax.ops import Dropout

B, L, HEADS, D = 3, 12, 2, 8


def qkv_and_mask(seed: int = 0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((B, L, HEADS, D)), jnp.float32)
               for _ in range(3))
    mask = np.ones((B, L), np.int32)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    segments = np.zeros((B, L), np.int32)
    segments[0, 5:] = 1  # two packed examples in row 0, three in row 1
    segments[1, 3:], segments[1, 6:] = 1, 2
    return q, k, v, jnp.asarray(mask), jnp.asarray(segments)


@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_dot_product_equals_xla_values_and_gradients(segmented, sparse):
    q, k, v, mask, segments = qkv_and_mask()
    positions = jnp.array([[0, 4, 9], [0, 6, 2], [0, 1, 11]], jnp.int32) if sparse else None
    seg = segments if segmented else None

    def out(backend, q, k, v):
        queries = q if positions is None else jnp.take_along_axis(
            q, positions[:, :, None, None], axis=1)
        return attention(queries, k, v, mask, segment_ids=seg, query_positions=positions,
                         backend=backend)[0]

    @jax.jit
    def value_and_vjp(q, k, v, dy):
        ref, back_ref = jax.vjp(lambda *a: out("xla", *a), q, k, v)
        fused, back_fused = jax.vjp(lambda *a: out("dot_product", *a), q, k, v)
        return ref, fused, back_ref(dy), back_fused(dy)

    n_q = 3 if sparse else L
    dy = jnp.asarray(np.random.default_rng(1).standard_normal((B, n_q, HEADS, D)), jnp.float32)
    ref, fused, g_ref, g_fused = value_and_vjp(q, k, v, dy)
    assert fused.shape == ref.shape == (B, n_q, HEADS, D)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(ref), atol=2e-6)
    for a, b in zip(g_fused, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_segments_and_padding_really_isolate():
    """A query's output changes with the keys of its own segment only (padding excluded)."""
    q, k, v, mask, segments = qkv_and_mask()
    changed = v.at[0, 5:].add(1.0).at[1, 8:].add(1.0)  # row 0's segment 1; row 1's padding
    for backend in ("xla", "dot_product"):
        a = attention(q, k, v, mask, segment_ids=segments, backend=backend)[0]
        b = attention(q, k, changed, mask, segment_ids=segments, backend=backend)[0]
        np.testing.assert_array_equal(np.asarray(a[0, :5]), np.asarray(b[0, :5]))
        assert np.abs(np.asarray(a[0, 5:] - b[0, 5:])).min() > 1e-3
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_fused_attention_with_attention_dropout_in_training_is_an_error():
    q, k, v, mask, _ = qkv_and_mask()
    drop = Dropout(0.1)
    with pytest.raises(UserError, match="without attention dropout"):
        attention(q, k, v, mask, backend="dot_product", dropout=drop, deterministic=False)
    # Inference with the released config (attention_probs_dropout_prob 0.1) is fine.
    attention(q, k, v, mask, backend="dot_product", dropout=drop, deterministic=True)
    with pytest.raises(UserError, match="only on TPU"):
        attention(q, k, v, mask, backend="splash")


@pytest.mark.slow
def test_model_with_dot_product_equals_xla_values_and_gradients():
    """The whole pre-training model, sparse last layer included: the same logits and
    gradients at attention dropout 0 (hidden dropout on)."""
    cfg = preset("tiny", attention_probs_dropout_prob=0.0)
    ids = jnp.asarray(np.random.default_rng(0).integers(5, cfg.vocab_size, (B, L)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, 7:].set(0)
    positions = jnp.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], jnp.int32)
    params = jax.jit(lambda k: init_params(build(cfg, "pretraining"), k))(jax.random.key(0))

    def loss(p, backend):
        out = build(cfg.replace(attention=backend), "pretraining").apply(
            {"params": p}, ids, mask, None, positions, deterministic=False,
            rngs={"dropout": jax.random.key(1)})  # hidden dropout on: the same masks
        return out.mlm_logits.std() + out.nsp_logits.sum()

    (l_ref, g_ref), (l_dp, g_dp) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, b)
                                    for b in ("xla", "dot_product"))
    np.testing.assert_allclose(float(l_dp), float(l_ref), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_dp), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_model_refuses_attention_dropout_with_a_fused_kernel_in_training():
    net = build(preset("tiny", attention="dot_product"), "pretraining")
    ids = jax.ShapeDtypeStruct((B, L), jnp.int32)
    params = jax.eval_shape(lambda: init_params(net, jax.random.key(0)))

    def apply(deterministic):
        return jax.eval_shape(lambda p, i: net.apply({"params": p}, i, deterministic=deterministic,
                                                     rngs={"dropout": jax.random.key(1)}),
                              params, ids)

    assert apply(True).mlm_logits.shape == (B, L, 128)  # inference: fine
    with pytest.raises(UserError, match="without attention dropout"):
        apply(False)


def test_kernel_fields_are_checked_and_stay_out_of_released_config_files():
    with pytest.raises(ValueError, match="attention 'flash'"):
        preset("tiny", attention="flash")
    with pytest.raises(ValueError, match="dropout_impl 'philox'"):
        preset("tiny", dropout_impl="philox")
    cfg = preset("tiny", attention="dot_product", dropout_impl="jax", matmul_impl="dot_general")
    hf = cfg.to_hf_dict()
    assert not {"attention", "dropout_impl", "matmul_impl"} & set(hf)
    # A config file that happens to carry such keys does not set them.
    back = BertConfig.from_dict({**hf, "attention": "splash", "matmul_impl": "2d"})
    assert (back.attention, back.dropout_impl, back.matmul_impl) == ("xla", "auto", "auto")


def test_splash_mapping_equals_xla_in_pallas_interpreter():
    """Our inputs mapped onto the splash kernel's API (padding and segments as its segment
    ids, padded sparse queries), run by Pallas' interpreter on CPU: not the TPU kernel's
    speed or numerics, but the same attention as "xla"."""
    from bert_jax.attention import _splash

    rng = np.random.default_rng(0)
    n = 128  # the kernel's block length
    q, k, v = (jnp.asarray(rng.standard_normal((2, n, HEADS, D)), jnp.float32)
               for _ in range(3))
    mask = jnp.ones((2, n), jnp.int32).at[1, 90:].set(0)
    segments = jnp.zeros((2, n), jnp.int32).at[0, 50:].set(1)
    positions = jnp.array([[0, 3, 60], [0, 7, 80]], jnp.int32)
    queries = jnp.take_along_axis(q, positions[:, :, None, None], axis=1)
    ref = attention(queries, k, v, mask, segment_ids=segments, query_positions=positions)[0]
    scale = jnp.asarray(D ** -0.5, jnp.float32)
    got = _splash(queries * scale, k, v, mask, segments, positions, interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)
