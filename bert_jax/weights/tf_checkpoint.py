"""Google's TF checkpoints read without TensorFlow.

The `.index` file is an SSTable (leveldb table format) of `BundleEntryProto`s, one per
variable: dtype, shape, data shard, offset and size; the `.data-*` files hold the raw
tensors at those offsets. `read_tf_checkpoint` turns the model variables into an HF state
dict (HF names, torch layout) and skips the optimizer's slots.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

from bert_jax.errors import UserError
from bert_jax.weights.names import format_shape

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
            raise UserError(f"TF variable {e.name} {format_shape(e.shape)}: its bytes are missing "
                            "from the data file (truncated or mismatched checkpoint)")
        x = blob[e.offset:e.offset + e.size].view(dtype).reshape(e.shape)
        name, x = _tf_to_hf(e.name, x)
        sd[name] = x
    return sd, skipped
