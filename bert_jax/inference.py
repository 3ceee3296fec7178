"""Jit-compiled inference: fill-mask, embeddings from any layer, NSP scores, attention maps.

    predictor = Predictor(config, params, tokenizer)
    predictor.fill_mask(["Paris is the [MASK] of France."], top_k=5)
    predictor.embed(texts, layer=-1, pooling="mean")      # [N, hidden] numpy
    predictor.nsp([("The man went out.", "He bought milk.")])  # P(IsNext), [N]
    predictor.attention("The cat sat.")                    # [layers, heads, L, L], tokens

Shapes are static under jit, so every batch is padded to a *bucket*: its length to the
smallest of `Buckets.lengths` that holds its longest text, its row count to one of
`Buckets.batch_sizes` (longer lists are chunked), and for fill-mask its [MASK] count to
one of `Buckets.masks`. The number of compilations is therefore bounded and known in
advance (`Buckets.max_compilations`); `Predictor.traces` counts the ones that happened.

`packing=True` (embed, nsp, fill-mask) puts several texts in each row instead
(`bert_jax/packing.py`): short texts then cost their own tokens, not a padded row each.
The results are the same as unpacked ones, to float rounding.

The model calls are pure functions of (params, arrays); the `Predictor` only holds the
jitted functions, the parameters on the device and the tokenizer.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import heads, weights
from bert_jax import model as modeling
from bert_jax.buckets import CPU_MAX_TOKENS, Buckets
from bert_jax.config import BertConfig
from bert_jax.errors import UserError
from bert_jax.layers import gather_positions
from bert_jax.packing import MODEL_INPUTS, pack
from bert_jax.tokenizer import Tokenizer

POOLINGS = ("cls", "mean", "tokens")


class TruncationWarning(UserWarning):
    """A text was longer than the model's maximum length and was cut."""


# ---- pure model calls -------------------------------------------------------------------

def _inputs(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The model's inputs in `batch`: padded rows, or packed ones (with segment ids)."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def _fill_mask(module: modeling.BertForPreTraining, params: Any, batch: dict[str, jax.Array],
               top_k: int, num_tokens: int) -> tuple[jax.Array, jax.Array]:
    """Top-k (probabilities, ids) at `batch["positions"]`: [B, P, k] each. Only the first
    `num_tokens` rows (the vocab's) are scored: the rest are padding, never predicted."""
    out = module.apply({"params": params}, **_inputs(batch),
                       masked_positions=batch["positions"])
    logits = out.mlm_logits.astype(jnp.float32)
    logits = jnp.where(jnp.arange(logits.shape[-1]) < num_tokens, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    return jax.lax.top_k(probs, top_k)


def _embed(module: modeling.BertModel, params: Any, batch: dict[str, jax.Array], layer: int,
           pooling: str) -> jax.Array:
    """Hidden states of `layer` (0 = embeddings), pooled: [B, H] ([B, K, H] for packed
    rows: one per example slot), or [B, L, H] for tokens.

    Layers above `layer` are dead code, so XLA does not compute them.
    """
    out = module.apply({"params": params}, **_inputs(batch), output_hidden_states=True)
    h = out.hidden_states[layer].astype(jnp.float32)
    if pooling == "tokens":
        return h
    packed = "cls_positions" in batch
    if pooling == "cls":
        return gather_positions(h, jnp.maximum(batch["cls_positions"], 0)) if packed else h[:, 0]
    # mean: over every token of the text, [CLS] and [SEP] included
    if packed:  # member[b, l, k]: token l of row b belongs to slot k's example
        slots = jnp.arange(1, batch["cls_positions"].shape[1] + 1)
        member = (batch["segment_ids"][..., None] == slots).astype(jnp.float32)
        total = jnp.einsum("blk,blh->bkh", member, h)
        return total / jnp.maximum(member.sum(1), 1.0)[..., None]
    mask = batch["attention_mask"].astype(jnp.float32)[..., None]
    return (h * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)


def _nsp(module: modeling.BertForPreTraining, params: Any,
         batch: dict[str, jax.Array]) -> jax.Array:
    """P(IsNext) per pair, [B] ([B, K] packed): index 0 of the NSP logits is IsNext."""
    out = module.apply({"params": params}, **_inputs(batch),
                       masked_positions=batch["positions"])
    return jax.nn.softmax(out.nsp_logits.astype(jnp.float32), axis=-1)[..., 0]


def _attention(module: modeling.BertModel, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """Attention probabilities of every layer: [layers, B, heads, L, L]."""
    out = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                       batch["token_type_ids"], output_attentions=True)
    return jnp.stack(out.attentions).astype(jnp.float32)


# ---- the engine -------------------------------------------------------------------------

def infer_head(params: Any) -> str:
    """Which registered head (bert_jax/heads.py) a parameter tree belongs to."""
    return heads.detect(weights.hf_names(params))


class Member(NamedTuple):
    """An example in a batch row: its index, its slot in the row (0 unpacked), and
    where its tokens start in the row (0 unpacked)."""

    example: int
    slot: int
    start: int


@dataclasses.dataclass
class _Encoded:
    """One tokenized example, already truncated to the model's limit."""

    ids: list[int]
    type_ids: list[int]
    full_ids: list[int] | None = None  # before truncation, when it was truncated


class Predictor:
    """Jitted inference for one model: `Predictor(config, params, tokenizer)`.

    `params` is the tree of any `model.build` head; fill-mask needs the MLM head
    (pretraining or mlm), nsp the pretraining head, embed and attention only the encoder.
    `dtype="bfloat16"` computes in bf16 (parameters stay as given; scores are fp32).
    """

    def __init__(self, config: BertConfig, params: Any, tokenizer: Tokenizer, *,
                 dtype: str | None = None, buckets: Buckets | None = None) -> None:
        if dtype is not None:
            config = config.replace(dtype=dtype)
        self.config = config
        self.tokenizer = tokenizer
        self.head = infer_head(params)
        buckets = buckets or Buckets()
        if buckets.max_tokens is None and jax.default_backend() == "cpu":
            buckets = dataclasses.replace(buckets, max_tokens=CPU_MAX_TOKENS)
        self.buckets = buckets.for_model(config.max_position_embeddings)
        self.params = jax.device_put(params)
        # Incremented by a Python side effect inside each traced function: it runs once
        # per compilation, never on a cached call.
        self.traces: collections.Counter[str] = collections.Counter()
        encoder = modeling.BertModel(config)
        self._encoder_params = self.params.get("bert", self.params)
        self._jit_embed = self._jit("embed", functools.partial(_embed, encoder),
                                    static_argnames=("layer", "pooling"))
        self._jit_attention = self._jit("attention", functools.partial(_attention, encoder))
        if heads.head(self.head).mlm:
            pretraining = modeling.build(config, self.head)
            self._jit_fill_mask = self._jit("fill_mask", functools.partial(_fill_mask, pretraining),
                                            static_argnames=("top_k", "num_tokens"))
            self._jit_nsp = self._jit("nsp", functools.partial(_nsp, pretraining))

    def _jit(self, name: str, fn: Callable, **jit_kwargs: Any) -> Callable:
        def traced(*args: Any, **kwargs: Any) -> Any:
            self.traces[name] += 1
            return fn(*args, **kwargs)

        return jax.jit(traced, **jit_kwargs)

    # ---- tokenization and batching ------------------------------------------------------

    def _encode(self, texts: Sequence[str], pairs: Sequence[str] | None, strict: bool,
                what: str = "text") -> list[_Encoded]:
        """Tokenizes with [CLS]/[SEP]; longer than the model: warn and cut, or raise."""
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not one string")
        if not texts:
            raise UserError(f"no input: give at least one {what}")
        for i, t in enumerate([*texts, *(pairs or [])]):
            if not t or not t.strip():
                raise UserError(f"{what} {i % len(texts) + 1} is empty: give non-empty text")
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        limit = self.buckets.max_length
        out = []
        for i, e in enumerate(self.tokenizer.backend.encode_batch(inputs)):
            if len(e.ids) > limit:
                message = (f"{what} {i + 1} has {len(e.ids)} tokens, more than the model's "
                           f"{limit}")
                if strict:
                    raise UserError(message + ": shorten it, or drop --strict to truncate")
                warnings.warn(message + f"; truncated to {limit}", TruncationWarning,
                              stacklevel=3)
                cut = self.tokenizer.encode(texts[i], None if pairs is None else pairs[i],
                                            max_length=limit)
                # The full ids ride along so fill-mask can see a [MASK] that was cut.
                out.append(_Encoded(cut.ids, cut.type_ids, full_ids=e.ids))
            else:
                out.append(_Encoded(e.ids, e.type_ids))
        return out

    def _batches(self, encoded: list[_Encoded], packed: bool = False
                 ) -> Iterator[tuple[list[list[Member]], dict[str, np.ndarray]]]:
        """(each row's examples, padded arrays) per bucketed batch: one example a row,
        similar lengths together, or `packed` rows of several."""
        if packed:
            yield from self._packed_batches(encoded)
            return
        by_length: dict[int, list[int]] = collections.defaultdict(list)
        for i, e in enumerate(encoded):
            by_length[self.buckets.length(len(e.ids))].append(i)
        for length, indices in sorted(by_length.items()):
            start = 0
            for rows, padded in self.buckets.chunks(len(indices), length):
                chunk = indices[start:start + rows]
                start += rows
                batch = {k: np.zeros((padded, length), np.int32)
                         for k in ("input_ids", "token_type_ids", "attention_mask")}
                batch["input_ids"][:] = self.tokenizer.pad_id
                for row, i in enumerate(chunk):
                    n = len(encoded[i].ids)
                    batch["input_ids"][row, :n] = encoded[i].ids
                    batch["token_type_ids"][row, :n] = encoded[i].type_ids
                    batch["attention_mask"][row, :n] = 1
                yield [[Member(i, 0, 0)] for i in chunk], batch

    def _packed_batches(self, encoded: list[_Encoded]
                        ) -> Iterator[tuple[list[list[Member]], dict[str, np.ndarray]]]:
        """Batches of packed rows (`Buckets.pack_row_length` long), their example slots
        cut to the batch's `Buckets.example_slots`; padding rows have no example."""
        b = self.buckets
        packed = pack([e.ids for e in encoded], [e.type_ids for e in encoded],
                      b.pack_row_length(max(len(e.ids) for e in encoded)),
                      max_examples=max(b.pack_slots), pad_id=self.tokenizer.pad_id)
        inputs, length, start = packed.model_inputs(), packed.input_ids.shape[1], 0
        for n, padded in b.chunks(len(packed.input_ids), length):
            index = packed.example_index[start:start + n]
            k = b.example_slots(int((index >= 0).sum(1).max()))
            batch = {}
            for name, v in inputs.items():
                fill = {"input_ids": self.tokenizer.pad_id, "cls_positions": -1}.get(name, 0)
                v = v[start:start + n, :k] if name == "cls_positions" else v[start:start + n]
                batch[name] = np.concatenate([v, np.full((padded - n, v.shape[1]), fill,
                                                         v.dtype)])
            start += n
            yield [[Member(int(i), slot, int(packed.start[i])) for slot, i in enumerate(r)
                    if i >= 0] for r in index], batch

    def _need(self, heads: tuple[str, ...], task: str) -> None:
        if self.head not in heads:
            raise UserError(f"{task} needs a model with the {' or '.join(heads)} head; this "
                            f"one has the {self.head} head (load BertForPreTraining weights)")

    # ---- tasks --------------------------------------------------------------------------

    def fill_mask(self, texts: Sequence[str], top_k: int = 5, *, strict: bool = False,
                  packing: bool = False) -> list[list[list[dict[str, Any]]]]:
        """Per text, per [MASK] (left to right), the top-k {token_id, token_str, score}.

        `score` is the fp32 softmax probability over the vocabulary. All [MASK]s of a text
        are predicted in one forward pass, and only their positions are projected onto
        the vocabulary. Too-long texts are truncated with a `TruncationWarning` (or raise
        with `strict=True`); a [MASK] lost to truncation is an error. `packing`: several
        texts per row (see the module docstring).
        """
        self._need(("pretraining", "mlm"), "fill-mask")
        top_k = int(top_k)
        num_tokens = min(self.tokenizer.vocab_size, self.config.vocab_size)
        if not 1 <= top_k <= num_tokens:
            raise UserError(f"--top-k must be between 1 and {num_tokens} (the vocab size), "
                            f"got {top_k}")
        encoded = self._encode(texts, None, strict)
        mask_id = self.tokenizer.mask_id
        positions = []
        for i, e in enumerate(encoded):
            pos = [p for p, t in enumerate(e.ids) if t == mask_id]
            full = e.full_ids or e.ids
            if not pos and mask_id not in full:
                raise UserError(f"text {i + 1} has no [MASK] token: write [MASK] where the "
                                "model should fill in a word")
            if len(pos) < full.count(mask_id):
                raise UserError(f"text {i + 1}: a [MASK] lies beyond the model's "
                                f"{self.buckets.max_length} tokens; shorten the text")
            positions.append(pos)

        results: list[list[list[dict[str, Any]]]] = [[] for _ in texts]
        for members, batch in self._batches(encoded, packing):
            # A row's [MASK] positions: its examples' in turn, shifted to where they start.
            in_row = [[m.start + p for m in row for p in positions[m.example]]
                      for row in members]
            length = batch["input_ids"].shape[1]
            slots = self.buckets.mask_slots(max(len(p) for p in in_row), length)
            # Unused slots point at position 0 ([CLS]); their predictions are dropped.
            batch["positions"] = np.zeros((len(batch["input_ids"]), slots), np.int32)
            for row, p in enumerate(in_row):
                batch["positions"][row, :len(p)] = p
            scores, ids = jax.device_get(self._jit_fill_mask(
                self.params, batch, top_k=top_k, num_tokens=num_tokens))
            for row, examples in enumerate(members):
                first = 0
                for m in examples:
                    results[m.example] = [
                        [{"token_id": int(t), "token_str": self._token_str(t),
                          "score": float(s)} for t, s in zip(ids[row, q], scores[row, q])]
                        for q in range(first, first + len(positions[m.example]))]
                    first += len(positions[m.example])
        return results

    def _token_str(self, token_id: int) -> str:
        # As transformers' fill-mask pipeline: decode([id]) with special tokens kept.
        return self.tokenizer.backend.decode([int(token_id)], skip_special_tokens=False)

    def embed(self, texts: Sequence[str], layer: int = -1, pooling: str = "cls", *,
              strict: bool = False, packing: bool = False) -> np.ndarray | list[np.ndarray]:
        """Hidden states of `layer` (0 = embeddings output, -1 = last) per text.

        pooling "cls": the [CLS] vector, [N, H]; "mean": the mean over the text's tokens
        ([CLS] and [SEP] included, padding excluded), [N, H]; "tokens": one [n_i, H] array
        per text, unpadded. `packing`: several texts per row (see the module docstring).
        """
        if pooling not in POOLINGS:
            raise UserError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
        layers = self.config.num_hidden_layers
        if not -(layers + 1) <= layer <= layers:
            raise UserError(f"layer {layer} does not exist: the model has layers 0 (embeddings) "
                            f"to {layers}, or -1 for the last")
        layer = layer % (layers + 1)
        encoded = self._encode(texts, None, strict)
        results: list[np.ndarray] = [np.empty(0)] * len(encoded)
        for members, batch in self._batches(encoded, packing):
            out = jax.device_get(self._jit_embed(self._encoder_params, batch, layer=layer,
                                                 pooling=pooling))
            if pooling != "tokens" and not packing:
                out = out[:, None]  # one slot a row
            for row, examples in enumerate(members):
                for m in examples:
                    results[m.example] = (out[row, m.slot] if pooling != "tokens" else
                                          out[row, m.start:m.start + len(encoded[m.example].ids)])
        return results if pooling == "tokens" else np.stack(results)

    def nsp(self, pairs: Sequence[tuple[str, str]], *, strict: bool = False,
            packing: bool = False) -> np.ndarray:
        """P(IsNext) for each (sentence A, sentence B): [N] fp32. `packing`: several pairs
        per row (see the module docstring)."""
        self._need(("pretraining",), "nsp")
        pairs = list(pairs)
        if any(len(p) != 2 for p in pairs):
            raise UserError("nsp takes pairs of sentences (A, B)")
        encoded = self._encode([a for a, _ in pairs], [b for _, b in pairs], strict, "pair")
        results = np.zeros(len(encoded), np.float32)
        for members, batch in self._batches(encoded, packing):
            # One slot at [CLS]: the MLM projection of a single position is all the
            # pretraining module computes beyond the encoder and the NSP head.
            batch["positions"] = np.zeros((len(batch["input_ids"]), 1), np.int32)
            probs = jax.device_get(self._jit_nsp(self.params, batch))
            if not packing:
                probs = probs[:, None]
            for row, examples in enumerate(members):
                for m in examples:
                    results[m.example] = probs[row, m.slot]
        return results

    def attention(self, text: str, pair: str | None = None, *,
                  strict: bool = False) -> tuple[np.ndarray, list[str]]:
        """Attention probabilities [layers, heads, n, n] of one text (or pair), and its n
        tokens ([CLS] and [SEP] included)."""
        encoded = self._encode([text], None if pair is None else [pair], strict)
        (_, batch), = self._batches(encoded)
        probs = jax.device_get(self._jit_attention(self._encoder_params, batch))
        n = len(encoded[0].ids)
        tokens = [self.tokenizer.id_to_token(t) for t in encoded[0].ids]
        return probs[:, 0, :, :n, :n], tokens
