"""The one name table between Flax param paths and HF state-dict names, both ways.

`hf_name` spells a Flax path the HF way; `flax_to_hf` writes a param tree as an HF state
dict (torch [out, in] kernels, vocabulary rows cut to the real vocab); `hf_to_flax` reads
an HF state dict of any naming style (with or without `bert.`, gamma/beta LayerNorms,
tied decoder copies) into the param tree of `model.build(config, head)`, checking every
name and shape against the model's own parameters and reporting what it initialised or
ignored. Every file format reaches the model through this module.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from bert_jax import heads
from bert_jax.config import BertConfig
from bert_jax.errors import UserError

log = logging.getLogger(__name__)


# Flax module names spell HF's dotted names with `_`; these are the ones that need a
# dot back (everything else, e.g. `embeddings`, `query`, `classifier`, is the same).
_MODULES = {
    "attention_self": "attention.self",
    "attention_output_dense": "attention.output.dense",
    "attention_output_LayerNorm": "attention.output.LayerNorm",
    "intermediate_dense": "intermediate.dense",
    "output_dense": "output.dense",
    "output_LayerNorm": "output.LayerNorm",
    "pooler_dense": "pooler.dense",
    "cls_predictions": "cls.predictions",
    "transform_dense": "transform.dense",
    "transform_LayerNorm": "transform.LayerNorm",
    "cls_seq_relationship": "cls.seq_relationship",
}
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def hf_name(path: tuple[str, ...]) -> str:
    """`('bert', 'encoder_layer_0', 'attention_self', 'query', 'kernel')` ->
    `bert.encoder.layer.0.attention.self.query.weight`."""
    *modules, leaf = path
    parts = [re.sub(r"^encoder_layer_(\d+)$", r"encoder.layer.\1", _MODULES.get(m, m))
             for m in modules]
    return ".".join([*parts, _LEAVES[leaf]])


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for k, v in tree.items():
            yield from _flatten(v, (*prefix, k))
    else:
        yield prefix, tree


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return tree


# Tensors with one row per vocabulary entry: padded to config.padded_vocab_size in Flax,
# exactly vocab_size rows in HF files.
_VOCAB_ROWS = ("embeddings.word_embeddings.weight", "cls.predictions.bias")


def hf_names(params: Any) -> list[str]:
    """The HF state-dict names of a Flax param tree's leaves (no array is read)."""
    return [hf_name(path) for path, _ in _flatten(params)]


def flax_to_hf(params: Any, *, vocab_size: int) -> dict[str, np.ndarray]:
    """A Flax param tree -> an HF state dict (float32 numpy, torch [out, in] kernels), the
    vocabulary tensors cut to `vocab_size` rows (their padding is bert-jax's own)."""
    out = {}
    for path, x in _flatten(params):
        x = np.asarray(x, np.float32)
        name = hf_name(path)
        if _canonical(name) in _VOCAB_ROWS:
            x = x[:vocab_size]
        out[name] = np.ascontiguousarray(x.T) if path[-1] == "kernel" else x
    return out


# ---- HF state dict -> Flax params -------------------------------------------------------

@dataclasses.dataclass
class LoadReport:
    """What a load did: tensors used, initialised randomly (missing), ignored (unused)."""

    source: str
    format: str  # safetensors | pytorch | tf-checkpoint | state-dict
    head: str
    loaded: int = 0
    initialized: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    step: int | None = None  # the checkpoint step, when loaded from a pre-training workdir

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _canonical(name: str) -> str:
    """One spelling for every checkpoint style: no `bert.` prefix, LayerNorm weight/bias."""
    name = name.removeprefix("bert.")
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))


# Buffers and tied copies that old checkpoints carry: not parameters of their own.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_DECODER_WEIGHT, _DECODER_BIAS = "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"
# Parameters outside the encoder body: a checkpoint may lack them (initialised randomly).
_OPTIONAL = ("pooler.", "cls.", "classifier.")


def detect_head(names: list[str]) -> str:
    """The head a checkpoint was saved with, from its tensor names (any naming style)."""
    return heads.detect([_canonical(n) for n in names])


def _expected(config: BertConfig, head: str) -> dict[str, tuple[tuple[str, ...], tuple]]:
    """canonical HF name -> (Flax path, Flax shape) for every parameter of the head."""
    from bert_jax import model as modeling

    shapes = modeling.param_shapes(modeling.build(config, head))
    return {_canonical(hf_name(p)): (p, tuple(s.shape)) for p, s in _flatten(shapes)}


def format_shape(x: np.ndarray | tuple) -> str:
    """`[768, 30522]`: a tensor's (or a shape tuple's) shape as error messages print it."""
    return "[" + ", ".join(map(str, x.shape if hasattr(x, "shape") else x)) + "]"


def _check_config(config: BertConfig, sd: dict[str, np.ndarray]) -> None:
    """Config sizes against the tensors, each mismatch named with both numbers."""
    def check(field: str, actual: int, tensor: str) -> None:
        if getattr(config, field) != actual:
            raise UserError(
                f"config {field}={getattr(config, field)} but the checkpoint has {actual} "
                f"({tensor} is {format_shape(sd[tensor])}): the config does not belong to "
                "these weights")

    word = "embeddings.word_embeddings.weight"
    if word not in sd:
        raise UserError(f"the checkpoint has no {word}: it is not a BERT checkpoint")
    check("hidden_size", sd[word].shape[1], word)
    check("vocab_size", sd[word].shape[0], word)
    for field, name, axis in (
            ("max_position_embeddings", "embeddings.position_embeddings.weight", 0),
            ("type_vocab_size", "embeddings.token_type_embeddings.weight", 0),
            ("intermediate_size", "encoder.layer.0.intermediate.dense.weight", 0)):
        if name in sd:
            check(field, sd[name].shape[axis], name)
    layers = {int(m.group(1)) for n in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", n))}
    if layers and max(layers) + 1 != config.num_hidden_layers:
        raise UserError(f"config num_hidden_layers={config.num_hidden_layers} but the checkpoint "
                        f"has {max(layers) + 1} layers")


def _short(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def hf_to_flax(state_dict: dict[str, np.ndarray], config: BertConfig, head: str, *,
               rng: Any = None, source: str = "state dict",
               format: str = "state-dict") -> tuple[dict[str, Any], LoadReport]:
    """An HF state dict (any naming style) -> (Flax params for `build(config, head)`, report).

    Missing pooler/head tensors are initialised from `rng` (default key 0) and reported;
    tensors of another head are ignored and reported; anything else unknown or
    mis-shaped is a UserError naming the tensor.
    """
    import jax
    import jax.numpy as jnp

    report = LoadReport(source=source, format=format, head=head)
    sd: dict[str, np.ndarray] = {}
    for name, x in state_dict.items():
        c = _canonical(name)
        if c in _BUFFERS:
            continue
        if c in sd:
            raise UserError(f"{source} holds {c} twice (with and without the `bert.` prefix)")
        sd[c] = x
    # The MLM decoder is tied to the word embeddings; its bias is cls.predictions.bias.
    decoder = sd.pop(_DECODER_WEIGHT, None)
    word = sd.get("embeddings.word_embeddings.weight")
    if decoder is not None and word is not None and not np.array_equal(decoder, word):
        report.notes.append(f"{_DECODER_WEIGHT} differs from the word embeddings; bert-jax ties "
                            "them and uses the word embeddings")
    decoder_bias = sd.pop(_DECODER_BIAS, None)
    if decoder_bias is not None:
        sd.setdefault("cls.predictions.bias", decoder_bias)

    expected = _expected(config, head)
    known = {**_expected(config, "pretraining"), **_expected(config, "classification")}
    # Names first, then sizes: a surplus layer is a config mismatch, said as such.
    for check_layers in (False, True):
        if check_layers:
            _check_config(config, sd)
        unknown = sorted(n for n in sd if n not in known
                         and (check_layers or not n.startswith("encoder.layer.")))
        if unknown:
            raise UserError(f"unexpected tensor {unknown[0]} {format_shape(sd[unknown[0]])} in "
                            f"{source}: not a BERT parameter")

    dtype = jnp.dtype(config.param_dtype)
    flat, missing = {}, []
    for name, (path, shape) in expected.items():
        if name not in sd:
            missing.append(name)
            continue
        x = sd[name]
        x = x.T if path[-1] == "kernel" else x
        if name in _VOCAB_ROWS and x.shape[0] == config.vocab_size < shape[0]:
            x = np.pad(x, [(0, shape[0] - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
        if tuple(x.shape) != shape:
            want = shape[::-1] if path[-1] == "kernel" else shape
            raise UserError(f"tensor {name} in {source} has shape {format_shape(sd[name])} but "
                            f"the model expects {format_shape(want)}")
        flat[path] = jnp.asarray(x, dtype)
    report.loaded = len(flat)
    required = [n for n in missing if not n.startswith(_OPTIONAL)]
    if required:
        raise UserError(f"{source} lacks {len(required)} encoder tensors, e.g. {required[0]}: "
                        "the checkpoint is incomplete")
    if missing:
        from bert_jax import model as modeling

        rng = jax.random.key(0) if rng is None else rng
        fresh = dict(_flatten(modeling.init_params(modeling.build(config, head), rng)))
        for name in missing:
            path = expected[name][0]
            flat[path] = jnp.asarray(fresh[path], dtype)
        report.initialized = sorted(missing)
        log.warning("%s: initialised randomly (not in the checkpoint): %s",
                       source, _short(report.initialized))
    report.ignored = sorted(n for n in sd if n not in expected)
    if report.ignored:
        log.warning("%s: ignored (not used by the %s head): %s",
                       source, head, _short(report.ignored))
    return _unflatten(flat), report
