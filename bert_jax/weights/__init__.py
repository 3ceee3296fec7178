"""Released BERT weights in and out: HF safetensors/bin, Google's TF checkpoints, the hub.

`load_pretrained(name_or_path, head)` is the one entry point: a hub name
(`bert-base-cased`), an HF directory (`model.safetensors` or `pytorch_model.bin` +
`config.json`), a TF checkpoint directory or `bert_model.ckpt` prefix, a single weights
file, or a bert-jax run directory. It returns the config, a param tree for
`model.build(config, head)`, the tokenizer and a `LoadReport` of what was initialised
randomly or ignored. `save_pretrained` writes the HF layout that
`transformers.BertFor*.from_pretrained` loads with no missing keys.

Every format is first turned into an HF state dict (HF names, torch [out, in] layout,
numpy arrays), then into Flax params by the one name table. One job per module:

- `names`: the name table, `hf_to_flax` / `flax_to_hf`, the `LoadReport`.
- `hf`: HF files in and out (safetensors, pytorch_model.bin, config.json, save_pretrained).
- `tf_checkpoint`: Google's TF checkpoints, read without TensorFlow.
- `locate`: finding a model (paths, hub cache, bert-jax workdirs) and `load_pretrained`.

Callers use the names below through the package: `from bert_jax import weights`.
"""

from bert_jax.weights.hf import (
    CONFIG_FILES,
    TOKENIZER_FILES,
    read_config,
    read_safetensors,
    read_torch_bin,
    save_pretrained,
)
from bert_jax.weights.locate import (
    VOCAB_ROW_MULTIPLE,
    Pretrained,
    Source,
    check_vocab_rows,
    is_workdir,
    load_pretrained,
    locate,
    read_weights,
    read_workdir,
    workdir_config,
)
from bert_jax.weights.names import (
    LoadReport,
    detect_head,
    flax_to_hf,
    hf_name,
    hf_names,
    hf_to_flax,
)
from bert_jax.weights.tf_checkpoint import TFEntry, read_tf_checkpoint, read_tf_index

__all__ = [
    "CONFIG_FILES",
    "TOKENIZER_FILES",
    "VOCAB_ROW_MULTIPLE",
    "LoadReport",
    "Pretrained",
    "Source",
    "TFEntry",
    "check_vocab_rows",
    "detect_head",
    "flax_to_hf",
    "hf_name",
    "hf_names",
    "hf_to_flax",
    "is_workdir",
    "load_pretrained",
    "locate",
    "read_config",
    "read_safetensors",
    "read_tf_checkpoint",
    "read_tf_index",
    "read_torch_bin",
    "read_weights",
    "read_workdir",
    "save_pretrained",
    "workdir_config",
]
