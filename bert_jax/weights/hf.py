"""HF files in and out: `model.safetensors` (bf16 too), `pytorch_model.bin`, sharded
indexes, `config.json`, and `save_pretrained`, which writes the layout that
`transformers.BertFor*.from_pretrained` loads with no missing keys.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from bert_jax import files, heads
from bert_jax.config import BertConfig
from bert_jax.errors import UserError
from bert_jax.tokenizer import Tokenizer
from bert_jax.weights.names import flax_to_hf

CONFIG_FILES = ("config.json", "bert_config.json")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json")


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


def read_sharded(index: Path, reader) -> dict[str, np.ndarray]:
    shard_files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return {k: v for f in shard_files for k, v in reader(index.parent / f).items()}


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
