"""Released BERT weights in and out: HF safetensors/bin, Google's TF checkpoints, the hub.

`load_pretrained(name_or_path, head)` is the one entry point: a hub name
(`bert-base-cased`), an HF directory (`model.safetensors` or `pytorch_model.bin` +
`config.json`), a TF checkpoint directory or `bert_model.ckpt` prefix, or a single weights
file. It returns the config, a param tree for `model.build(config, head)`, the tokenizer
and a `LoadReport` of what was initialised randomly or ignored. `save_pretrained` writes
the HF layout that `transformers.BertFor*.from_pretrained` loads with no missing keys.

Every format is first turned into an HF state dict (HF names, torch [out, in] layout,
numpy arrays); `hf_to_flax` and `flax_to_hf` share one name table (`hf_name`), the
inverse being built by enumerating the model's own parameters. TF checkpoints are read
without TensorFlow: the `.index` file is an SSTable of `BundleEntryProto`s, the `.data`
files hold raw tensors at the offsets the entries give.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from bert_jax import files, heads
from bert_jax.config import BertConfig
from bert_jax.errors import UserError
from bert_jax.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

CONFIG_FILES = ("config.json", "bert_config.json")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json")


# ---- the one name table: Flax param path <-> HF state-dict name ------------------------

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


def _shape(x: np.ndarray) -> str:
    return "[" + ", ".join(map(str, x.shape if hasattr(x, "shape") else x)) + "]"


def _check_config(config: BertConfig, sd: dict[str, np.ndarray]) -> None:
    """Config sizes against the tensors, each mismatch named with both numbers."""
    def check(field: str, actual: int, tensor: str) -> None:
        if getattr(config, field) != actual:
            raise UserError(
                f"config {field}={getattr(config, field)} but the checkpoint has {actual} "
                f"({tensor} is {_shape(sd[tensor])}): the config does not belong to these weights")

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
            raise UserError(f"unexpected tensor {unknown[0]} {_shape(sd[unknown[0]])} in "
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
            raise UserError(f"tensor {name} in {source} has shape {_shape(sd[name])} but the "
                            f"model expects {_shape(want)}")
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
        logger.warning("%s: initialised randomly (not in the checkpoint): %s",
                       source, _short(report.initialized))
    report.ignored = sorted(n for n in sd if n not in expected)
    if report.ignored:
        logger.warning("%s: ignored (not used by the %s head): %s",
                       source, head, _short(report.ignored))
    return _unflatten(flat), report


# ---- reading HF files -------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """A `.safetensors` file as memory-mapped numpy arrays (bf16 via ml_dtypes).

    `safetensors.numpy` refuses bf16 files (numpy has no bfloat16), yet many released
    weights are bf16; the format is a JSON header plus raw little-endian bytes.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if n > size - 8:
            raise UserError(f"{path} is not a valid safetensors file (truncated or corrupt "
                            "header); download it again")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path} is not a valid safetensors file (corrupt header)") from None
    data = np.memmap(path, np.uint8, "r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if end > data.size:
            raise UserError(f"{path} is truncated: tensor {name} ends at byte {8 + n + end} but "
                            f"the file has {size} bytes; download it again")
        if info["dtype"] not in _ST_DTYPES:
            raise UserError(f"tensor {name} in {path} has unsupported dtype {info['dtype']}")
        dtype = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
        out[name] = data[begin:end].view(dtype).reshape(info["shape"])
    return out


def read_torch_bin(path: str | Path) -> dict[str, np.ndarray]:
    """A `pytorch_model.bin` (torch.load with weights_only=True: no code runs)."""
    try:
        import torch
    except ImportError:
        raise UserError(f"{path} is a PyTorch checkpoint: install torch "
                        "(pip install 'bert-jax[torch]') or convert it to safetensors") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike mean a bad file
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read PyTorch checkpoint {path}: {first_line}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} is not a state dict of tensors (a training checkpoint?); "
                        "save model.state_dict() instead")
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in sd.items()}


def _read_sharded(index: Path, reader) -> dict[str, np.ndarray]:
    shard_files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return {k: v for f in shard_files for k, v in reader(index.parent / f).items()}


# ---- reading TF checkpoints without TensorFlow -----------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57  # leveldb/TF table footer magic
# tensorflow/core/framework/types.proto DataType -> numpy
_TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
              9: np.int64, 10: np.bool_, 14: ml_dtypes.bfloat16, 19: np.float16}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _proto(buf: bytes) -> dict[int, list]:
    """A protobuf message -> {field number: [raw values]} (varints as ints, rest as bytes)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(key >> 3, []).append(value)
    return fields


def _block(table: bytes, offset: int, size: int) -> Iterator[tuple[bytes, bytes]]:
    """Entries of one table block: prefix-compressed keys, then a restart array."""
    if table[offset + size] != 0:  # the trailer's compression byte
        raise UserError("the TF checkpoint index is compressed; only uncompressed is supported")
    block = table[offset:offset + size]
    num_restarts = struct.unpack_from("<I", block, size - 4)[0]
    end, pos, key = size - 4 - 4 * num_restarts, 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def _table(table: bytes) -> Iterator[tuple[bytes, bytes]]:
    """All (key, value) pairs of an SSTable, in key order."""
    if len(table) < 48 or struct.unpack_from("<Q", table, len(table) - 8)[0] != _TABLE_MAGIC:
        raise UserError("not a TF checkpoint index (bad footer magic)")
    footer = table[-48:]
    _, pos = _varint(footer, 0)  # metaindex handle: unused
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    for _, handle in _block(table, index_offset, index_size):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        yield from _block(table, offset, size)


@dataclasses.dataclass(frozen=True)
class TFEntry:
    """Where one tensor lives in a TF checkpoint (a BundleEntryProto)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int  # masked CRC-32C of the tensor's bytes, as TF stores it


def read_tf_index(prefix: str | Path) -> tuple[list[TFEntry], int, str]:
    """`prefix.index` -> (entries, number of data shards, byte order "<" or ">")."""
    path = Path(f"{prefix}.index")
    if not path.exists():
        raise UserError(f"TF checkpoint index not found: {path}")
    entries, num_shards, order = [], 1, "<"
    try:
        for key, value in _table(path.read_bytes()):
            f = _proto(value)
            if key == b"":  # BundleHeaderProto: num_shards=1, endianness=2
                num_shards = f.get(1, [1])[0]
                order = ">" if f.get(2, [0])[0] == 1 else "<"
                continue
            if 7 in f:
                raise UserError(f"TF variable {key.decode()} is partitioned (sliced); "
                                "only unpartitioned checkpoints are supported")
            code = f.get(1, [0])[0]
            dims = _proto(f[2][0]).get(2, []) if 2 in f else []
            shape = tuple(_proto(d).get(1, [0])[0] for d in dims)
            dtype = np.dtype(_TF_DTYPES[code]) if code in _TF_DTYPES else None
            crc = struct.unpack("<I", f[6][0])[0] if 6 in f else 0
            entries.append(TFEntry(key.decode(), dtype, shape, f.get(3, [0])[0],
                                   f.get(4, [0])[0], f.get(5, [0])[0], crc))
    except (IndexError, struct.error, ValueError) as e:
        raise UserError(f"{path} is not a valid TF checkpoint index ({e})") from None
    return entries, num_shards, order


# Not model variables: optimizer slots and counters written by run_pretraining.py.
_TF_SKIP = re.compile(r"(/adam_[mv]$|^global_step$|/LAMB(_\d+)?$|_power$)")


def _tf_to_hf(name: str, x: np.ndarray) -> tuple[str, np.ndarray]:
    """A Google variable name and value -> the HF state-dict name and torch layout."""
    parts = name.split("/")
    if parts[-1] == "kernel":  # TF dense kernels are [in, out]; torch is [out, in]
        x = x.T
    leaf = {"kernel": "weight", "gamma": "weight", "beta": "bias"}.get(parts[-1], parts[-1])
    parts[-1] = leaf
    if leaf.endswith("_embeddings"):
        parts.append("weight")
    n = re.sub(r"layer_(\d+)", r"layer.\1", ".".join(parts))
    # The heads' own names; output_weights is stored [out, in] already.
    n = re.sub(r"^(cls\.seq_relationship\.)?output_weights$",
               lambda m: (m.group(1) or "classifier.") + "weight", n)
    n = re.sub(r"^(cls\.seq_relationship\.)?output_bias$",
               lambda m: (m.group(1) or "classifier.") + "bias", n)
    return n.replace("cls.predictions.output_bias", "cls.predictions.bias"), x


def read_tf_checkpoint(prefix: str | Path) -> tuple[dict[str, np.ndarray], int]:
    """A Google TF checkpoint -> (HF state dict, number of skipped optimizer entries)."""
    entries, num_shards, order = read_tf_index(prefix)
    data, sd, skipped = {}, {}, 0
    for e in entries:
        if _TF_SKIP.search(e.name):
            skipped += 1
            continue
        if e.dtype is None:
            raise UserError(f"TF variable {e.name} has an unsupported dtype")
        if e.shard not in data:
            path = Path(f"{prefix}.data-{e.shard:05d}-of-{num_shards:05d}")
            if not path.exists():
                raise UserError(f"TF checkpoint data file not found: {path}")
            data[e.shard] = np.memmap(path, np.uint8, "r")
        blob = data[e.shard]
        dtype = e.dtype.newbyteorder(order)
        if e.size != int(np.prod(e.shape)) * dtype.itemsize or e.offset + e.size > blob.size:
            raise UserError(f"TF variable {e.name} {_shape(e.shape)}: its bytes are missing from "
                            "the data file (truncated or mismatched checkpoint)")
        x = blob[e.offset:e.offset + e.size].view(dtype).reshape(e.shape)
        name, x = _tf_to_hf(e.name, x)
        sd[name] = x
    return sd, skipped


# ---- finding the files ------------------------------------------------------------------

def _tf_prefix(path: Path) -> Path | None:
    """The checkpoint prefix `.../bert_model.ckpt` a path names, if it names a TF checkpoint."""
    if Path(f"{path}.index").exists():
        return path
    if path.name.endswith(".index") and path.is_file():
        return path.with_suffix("")
    if path.is_dir():
        found = sorted(path.glob("*.index"))
        if len(found) == 1:
            return found[0].with_suffix("")
        if len(found) > 1:
            raise UserError(f"{path} holds several TF checkpoints ({found[0].name}, ...): pass "
                            "the one you want as DIR/NAME.ckpt")
    return None


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(constants.HF_HUB_OFFLINE)


def _from_hub(name: str) -> Path:
    """A hub model's files (config, tokenizer, weights) in the local HF cache."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = _offline()
    hint = (f"to use a local copy, pass its directory (config.json + model.safetensors or "
            f"pytorch_model.bin, or a TF bert_model.ckpt) instead of {name!r}")
    try:
        d = Path(snapshot_download(name, local_files_only=offline, allow_patterns=[
            *CONFIG_FILES, *TOKENIZER_FILES, "model.safetensors", "model.safetensors.index.json",
            "model-*-of-*.safetensors"]))
        if not any(d.glob("*.safetensors")):  # older repos have only pytorch_model.bin
            hf_hub_download(name, "pytorch_model.bin", local_files_only=offline)
    except RepositoryNotFoundError:
        raise UserError(f"{name!r} is neither a local path nor a model on the HF hub") from None
    except (LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError) as e:
        why = "HF_HUB_OFFLINE is set" if offline else "no network"
        raise UserError(f"{name!r} is not in the local HF cache and cannot be downloaded "
                        f"({why}: {type(e).__name__}); {hint}") from None
    return d


@dataclasses.dataclass
class Source:
    """A checkpoint located on disk: its directory (config, vocab) and weight files."""

    directory: Path
    format: str  # safetensors | pytorch | tf-checkpoint
    weights: Path  # a file, a shard index, or a TF prefix


def locate(name_or_path: str | Path) -> Source:
    """Finds the weights a `--model` value names: a path, a TF prefix, or a hub name."""
    path = Path(name_or_path).expanduser()
    if not path.exists() and not Path(f"{path}.index").exists():
        name = str(name_or_path)
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) and not name.startswith("."):
            path = _from_hub(name)
        else:
            raise UserError(f"no such file or directory: {name_or_path}")
    # A bert-jax pre-training workdir is handled by `load_pretrained` before this.
    if path.is_file():
        if path.suffix == ".safetensors":
            return Source(path.parent, "safetensors", path)
        if path.suffix in (".bin", ".pt", ".pth"):
            return Source(path.parent, "pytorch", path)
    for weights, fmt in (("model.safetensors", "safetensors"),
                         ("model.safetensors.index.json", "safetensors"),
                         ("pytorch_model.bin", "pytorch"),
                         ("pytorch_model.bin.index.json", "pytorch")):
        if path.is_dir() and (path / weights).exists():
            return Source(path, fmt, path / weights)
    prefix = _tf_prefix(path)
    if prefix is not None:
        return Source(prefix.parent, "tf-checkpoint", prefix)
    if path.is_file():
        raise UserError(f"{path} is not a weights file: expected a .safetensors, .bin/.pt/.pth "
                        "or TF checkpoint file, or a directory holding one")
    raise UserError(f"{path} holds no weights: expected model.safetensors, pytorch_model.bin "
                    "or a TF checkpoint (bert_model.ckpt.index + .data-*)")


def read_weights(source: Source) -> tuple[dict[str, np.ndarray], list[str]]:
    """The HF state dict of a located checkpoint, plus notes on what was skipped."""
    w = source.weights
    if source.format == "tf-checkpoint":
        sd, skipped = read_tf_checkpoint(w)
        return sd, [f"skipped {skipped} optimizer entries (adam_m, adam_v, global_step)"]
    reader = read_safetensors if source.format == "safetensors" else read_torch_bin
    if w.name.endswith(".index.json"):
        return _read_sharded(w, reader), []
    return reader(w), []


def read_config(directory: Path, **overrides: Any) -> BertConfig:
    """`config.json` (HF) or `bert_config.json` (Google) from a checkpoint's directory."""
    for name in CONFIG_FILES:
        if (directory / name).exists():
            try:
                return BertConfig.from_json_file(directory / name, **overrides)
            except TypeError as e:
                raise UserError(f"bad config override: {e}") from None
            except ValueError as e:
                raise UserError(f"{directory / name}: {e}") from None
    raise UserError(f"{directory.absolute()} has no config.json or bert_config.json next to "
                    "the weights")


# ---- bert-jax pre-training workdirs -----------------------------------------------------

def workdir_config(path: str | Path) -> dict[str, Any] | None:
    """The saved config.json of a bert-jax run directory (orbax checkpoints plus a config
    with a "model" section: a pre-training workdir, or a fine-tuning run with "task"
    too), or None for any other path."""
    from bert_jax import configlib

    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        return None
    if not (p / "checkpoints").is_dir():
        try:
            saved = json.loads((p / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # not ours: the HF loader says what is wrong with it
        if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
            if "task" in saved:
                raise UserError(f"{p} is a fine-tuning run that did not keep its weights: "
                                "run `bert-jax glue` with --config.save_checkpoint=True (or "
                                "--export)")
            raise UserError(f"{p} is a bert-jax workdir with no checkpoints yet: a run saves "
                            "every --config.train.checkpoint_every steps and at its end")
        return None
    saved = configlib.read_saved(p)  # unreadable: a broken workdir, said in one line
    return saved if "model" in saved else None


def is_workdir(path: str | Path) -> bool:
    """A `bert-jax pretrain` workdir (or any run directory with model checkpoints)."""
    return workdir_config(path) is not None


def read_workdir(path: Path, **overrides: Any
                 ) -> tuple[dict[str, np.ndarray], BertConfig, str | None]:
    """The latest checkpoint of a pre-training workdir as an HF state dict, its model
    config, and the vocab its data was made with."""
    from bert_jax import checkpoint, configlib

    saved = configlib.read_saved(path)
    try:
        config = BertConfig(**{**saved["model"], **overrides})
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}/config.json: bad model config: {e}") from None
    params, _ = checkpoint.restore_params(path / "checkpoints")
    vocab = saved.get("data", {}).get("vocab") or None
    return flax_to_hf(params, vocab_size=config.vocab_size), config, vocab


# ---- the entry points -------------------------------------------------------------------

VOCAB_ROW_MULTIPLE = 128  # embeddings are padded to a multiple of this (8..128) at most


def check_vocab_rows(tokens: int, rows: int, vocab_file: str | Path) -> str | None:
    """Checks that a vocab of `tokens` fits word embeddings of `rows` rows.

    Rows past the vocab up to the next multiple of 128 are padding for accelerators (the
    TF toy checkpoint: 14 tokens, 15 rows); inference never predicts them. More rows than
    that, or more tokens than rows, means the wrong vocab: a UserError. Returns a note
    for padding, else None.
    """
    padded = -(-tokens // VOCAB_ROW_MULTIPLE) * VOCAB_ROW_MULTIPLE
    if tokens > rows:
        raise UserError(f"{vocab_file} has {tokens} tokens but the word embeddings have "
                        f"{rows} rows: wrong vocab for these weights")
    if rows > padded:
        raise UserError(f"{vocab_file} has {tokens} tokens but the word embeddings have "
                        f"{rows} rows (padding goes to {padded} at most): wrong vocab for "
                        "these weights")
    if rows > tokens:
        return (f"the vocab has {tokens} tokens, the embeddings {rows} rows (the "
                f"{rows - tokens} padding rows are never predicted)")
    return None


def _vocab_file(directory: Path) -> Path:
    return directory / ("tokenizer.json" if (directory / "tokenizer.json").exists()
                        else "vocab.txt")


@dataclasses.dataclass
class Pretrained:
    """A loaded model: everything inference, fine-tuning and pre-training init need."""

    config: BertConfig
    params: dict[str, Any]  # matches model.build(config, head)
    tokenizer: Tokenizer | None
    report: LoadReport
    head: str

    @property
    def model(self):
        from bert_jax import model as modeling

        return modeling.build(self.config, self.head)


def load_pretrained(name_or_path: str | Path, head: str = "pretraining", *, rng: Any = None,
                    **config_overrides: Any) -> Pretrained:
    """Loads released (or exported) weights for `model.build(config, head)`.

    `head="auto"` takes the head the checkpoint was saved with. `config_overrides`
    replace config fields, e.g. `dtype="bfloat16"`, `num_labels=3`. Tensors the head
    lacks are initialised from `rng` and listed in `report.initialized`.
    """
    if head != "auto":
        heads.head(head)  # a UserError for an unknown head
    if is_workdir(name_or_path):
        source, (sd, config, vocab) = None, read_workdir(Path(name_or_path), **config_overrides)
        fmt, notes, directory = "bert-jax checkpoint", [], Path(name_or_path)
    else:
        source = locate(name_or_path)
        config = read_config(source.directory, **config_overrides)
        sd, notes = read_weights(source)
        fmt, vocab, directory = source.format, None, source.directory
    if head == "auto":
        head = detect_head(list(sd))
    params, report = hf_to_flax(sd, config, head, rng=rng, source=str(name_or_path),
                                format=fmt)
    report.notes[:0] = notes
    tokenizer = None
    if vocab is not None or any((directory / f).exists()
                                for f in ("tokenizer.json", "vocab.txt")):
        tokenizer = Tokenizer.from_vocab(vocab) if vocab else Tokenizer.from_dir(directory)
        note = check_vocab_rows(tokenizer.vocab_size, config.vocab_size,
                                vocab or _vocab_file(directory))
        if note:
            report.notes.append(note)
    else:
        report.notes.append(f"no vocab.txt or tokenizer.json in {directory}")
    return Pretrained(config, params, tokenizer, report, head)


def save_pretrained(directory: str | Path, config: BertConfig, params: Any,
                    tokenizer: Tokenizer | None = None, head: str = "pretraining") -> Path:
    """Writes the HF layout: config.json, model.safetensors (fp32), vocab + tokenizer.json.

    `transformers.<heads.HEADS[head].architecture>.from_pretrained(directory)` loads it
    with no missing or unexpected keys (tensors that class lacks, such as the MLM-only
    head's pooler, are left out).
    """
    from safetensors.numpy import save_file

    spec = heads.head(head)
    d = files.check_writable_dir(directory)
    sd = flax_to_hf(params, vocab_size=config.vocab_size)
    sd = {k: v for k, v in sd.items() if not k.startswith(spec.not_exported)}
    with files.atomic_path(d / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    hf = config.to_hf_dict(architectures=(spec.architecture,))
    files.write_json_atomic(d / "config.json", hf)
    if tokenizer is not None:
        tokenizer.save(d)
        lowercase = bool(json.loads(tokenizer.backend.to_str())
                         .get("normalizer", {}).get("lowercase", False))
        files.write_json_atomic(d / "tokenizer_config.json", {
            "tokenizer_class": "BertTokenizer", "do_lower_case": lowercase,
            "model_max_length": config.max_position_embeddings})
    return d
