"""The model configuration: sizes, dropout, dtypes; presets; HF/Google config-file I/O.

`BertConfig` is a frozen dataclass so that it can be a Flax module attribute and a
jit static argument. The field names are HuggingFace's (`hidden_size`, ...), which are
also Google's `bert_config.json` names, so both files read with one function.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from bert_jax import attention, ops

# Activation names as they appear in released config files.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh")
_KERNELS = {"attention": attention.BACKENDS, "dropout_impl": ops.DROPOUT_IMPLS,
            "matmul_impl": ops.MATMUL_IMPLS}
# The bert-jax-only fields, never written to (nor read from) released config files.
JAX_ONLY_FIELDS = ("dtype", "param_dtype", "remat", "num_labels", "vocab_multiple",
                   "attention", "dropout_impl", "matmul_impl")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture and numerics of one BERT model."""

    vocab_size: int = 28996
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Sequence-classification head: 1 label means regression (STS-B).
    num_labels: int = 2
    # bert-jax options (not part of the released config files).
    dtype: str = "float32"  # compute dtype of matmuls and activations
    param_dtype: str = "float32"  # storage dtype of the parameters
    remat: bool = False  # recompute each layer's activations in the backward pass
    # The word embeddings (and MLM decoder) get rows up to a multiple of this: 128 fills
    # the MXU / tensor-core tiles and divides any power-of-two tensor-parallel mesh axis
    # up to 128 (bert-base: 28,996 -> 29,056 rows). The extra rows are never predicted
    # and are not exported. 1: no padding.
    vocab_multiple: int = 128
    # Kernels (bert_jax/attention.py, bert_jax/ops.py). attention: "xla" (the written-out
    # softmax with attention dropout), "dot_product" (jax.nn.dot_product_attention; cuDNN
    # on GPU) or "splash" (TPU). dropout_impl / matmul_impl: "auto" picks per backend
    # (the CPU-tuned threefry16 / 2d on CPU), or name one (see ops.DROPOUT_IMPLS, ...).
    attention: str = "xla"
    dropout_impl: str = "auto"
    matmul_impl: str = "auto"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size",
                     "num_labels", "vocab_multiple"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"BertConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        for name in ("dtype", "param_dtype"):
            jnp.dtype(getattr(self, name))  # raises TypeError on an unknown dtype
        for name, choices in _KERNELS.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {choices}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the word embeddings: vocab_size rounded up to vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def replace(self, **changes: Any) -> BertConfig:
        return dataclasses.replace(self, **changes)

    # ---- file I/O -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> BertConfig:
        """Builds a config from an HF `config.json` or Google `bert_config.json` dict.

        Keys this class does not know (architectures, model_type, ...) and the kernel
        choices (`attention`, ...: settings of this run, not of the weights) are ignored; a
        missing `layer_norm_eps` takes the original 1e-12 (Google's files have none).
        """
        known = {f.name for f in dataclasses.fields(cls)} - set(_KERNELS)
        kwargs = {k: v for k, v in d.items() if k in known}
        if "num_labels" not in d and "id2label" in d:
            kwargs["num_labels"] = len(d["id2label"])
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | Path, **overrides: Any) -> BertConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e})") from None
        return cls.from_dict(d, **overrides)

    def to_hf_dict(self, architectures: tuple[str, ...] = ("BertForPreTraining",)) -> dict:
        """The HF `config.json` contents for this model (bert-jax-only fields dropped)."""
        d = {
            "architectures": list(architectures),
            "model_type": "bert",
            "position_embedding_type": "absolute",
        }
        for f in dataclasses.fields(self):
            if f.name not in JAX_ONLY_FIELDS:
                d[f.name] = getattr(self, f.name)
        if self.num_labels != 2:
            d["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            d["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return d


# ---- presets ----------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # Tests: every code path, a few milliseconds a step.
    "tiny": dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64),
    # The offline demo and the small ablation studies.
    "mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=1024),
    "base": dict(),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096),
}


def preset(name: str, **overrides: Any) -> BertConfig:
    """A named model size: tiny, mini, base (bert-base-cased) or large."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return BertConfig(**{**PRESETS[name], **overrides})
