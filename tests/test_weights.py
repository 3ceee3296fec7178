"""Weight import/export: names against transformers, Google's TF checkpoint, bad input.

The TF checkpoint is checked without TensorFlow against an independent reading: a
hand-decoded index entry, and the CRC-32C that TF itself stored for every tensor.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, minilm_dir, require, shared_file

from bert_jax import cli, weights
from bert_jax.config import preset
from bert_jax.errors import UserError
from bert_jax.model import build, init_params

TF_TOY = ("checkpoints", "tf-toy")


def tf_toy():
    return shared_file(*TF_TOY, "bert_model.ckpt.index").parent


# ---- the name table against transformers ------------------------------------------------

HF_CLASSES = {"encoder": "BertModel", "pretraining": "BertForPreTraining",
              "mlm": "BertForMaskedLM", "classification": "BertForSequenceClassification"}


@pytest.mark.parametrize("head", sorted(HF_CLASSES))
def test_flax_to_hf_names_and_shapes_are_transformers(head):
    torch = require("torch")
    transformers = require("transformers")
    cfg = preset("tiny", num_labels=3, vocab_size=100)  # 128 rows in Flax, 100 in HF
    hf_config = transformers.BertConfig(**cfg.to_hf_dict(), num_labels=3)
    with torch.device("meta"):
        ref = getattr(transformers, HF_CLASSES[head])(hf_config)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()
                if not k.startswith("cls.predictions.decoder.")}  # tied copies
    sd = weights.flax_to_hf(init_params(build(cfg, head), jax.random.key(0)),
                            vocab_size=cfg.vocab_size)
    if head == "mlm":  # BertForMaskedLM has no pooler; save_pretrained drops it
        sd = {k: v for k, v in sd.items() if ".pooler." not in k}
    assert {k: v.shape for k, v in sd.items()} == expected


# ---- export -> transformers -------------------------------------------------------------

@pytest.mark.parametrize("head", ["pretraining", "classification", "encoder", "mlm"])
def test_export_loads_in_transformers_with_same_outputs(tmp_path, head):
    torch = require("torch")
    transformers = require("transformers")
    cfg = preset("tiny", num_labels=3, vocab_size=100)  # padded to 128 rows, exported 100
    net = build(cfg, head)
    params = init_params(net, jax.random.key(1))
    table = params.get("bert", params)["embeddings"]["word_embeddings"]["embedding"]
    assert table.shape == (128, 32) and not np.asarray(table[100:]).any()
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                  + [f"w{i}" for i in range(cfg.vocab_size - 5)]) + "\n")
    from bert_jax.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_vocab(tok_dir / "vocab.txt")
    out = weights.save_pretrained(tmp_path / "out", cfg, params, tokenizer, head)

    ref, info = getattr(transformers, HF_CLASSES[head]).from_pretrained(
        out, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    ref.eval()

    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 7:] = 0
    types = np.zeros_like(ids)
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                     token_type_ids=torch.tensor(types).long())
    ours = net.apply({"params": params}, ids, mask, types)
    if head == "pretraining":
        pairs = [(ours.mlm_logits, theirs.prediction_logits),
                 (ours.nsp_logits, theirs.seq_relationship_logits)]
    elif head == "encoder":
        pairs = [(ours.last_hidden_state, theirs.last_hidden_state),
                 (ours.pooler_output, theirs.pooler_output)]
    else:
        pairs = [(ours.mlm_logits if head == "mlm" else ours, theirs.logits)]
    for a, b in pairs:
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=1e-5, rtol=0)
    if head in ("pretraining", "mlm"):
        # Training's logits: the padding columns masked, the rest the same.
        padded = net.apply({"params": params}, ids, mask, types, padded_vocab=True).mlm_logits
        np.testing.assert_array_equal(padded[..., :100], ours.mlm_logits)
        assert (np.asarray(padded[..., 100:]) == np.finfo(np.float32).min).all()

    # And back: the exported directory reloads to the same parameters.
    back = weights.load_pretrained(out, head=head)
    assert back.tokenizer.vocab_size == cfg.vocab_size
    assert back.config.num_labels == cfg.num_labels
    flat_a, flat_b = dict(weights.names._flatten(params)), dict(weights.names._flatten(back.params))
    if head == "mlm":
        assert back.report.initialized == ["pooler.dense.bias", "pooler.dense.weight"]
        flat_a = {k: v for k, v in flat_a.items() if "pooler_dense" not in k}
        flat_b = {k: v for k, v in flat_b.items() if "pooler_dense" not in k}
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]))


# ---- Google's TF checkpoint, read without TensorFlow -----------------------------------

def test_tf_toy_loads_every_model_variable():
    loaded = weights.load_pretrained(tf_toy(), head="pretraining")
    report = loaded.report
    assert (report.loaded, report.initialized, report.ignored) == (46, [], [])
    assert report.format == "tf-checkpoint"
    assert any("93 optimizer entries" in n for n in report.notes)
    cfg = loaded.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (4, 2, 15)

    entries, shards, order = weights.read_tf_index(tf_toy() / "bert_model.ckpt")
    assert (len(entries), shards, order) == (139, 1, "<")
    model_vars = [e for e in entries if "adam_" not in e.name and e.name != "global_step"]
    assert len(model_vars) == 46
    assert all(e.dtype == np.float32 for e in model_vars)
    shapes = {e.name: e.shape for e in model_vars}
    assert shapes["bert/embeddings/word_embeddings"] == (15, 4)
    assert shapes["bert/encoder/layer_1/intermediate/dense/kernel"] == (4, 16)  # [in, out]
    assert shapes["cls/seq_relationship/output_weights"] == (2, 4)
    assert shapes["cls/predictions/output_bias"] == (15,)
    assert {e.name: e.dtype for e in entries}["global_step"] == np.int64

    # The loaded model runs: real vocab ids in, finite logits of the right shape out.
    ids = np.array([[2, 5, 6, 7, 8, 9, 3]], np.int32)
    out = loaded.model.apply({"params": loaded.params}, ids, np.ones_like(ids),
                             np.zeros_like(ids))
    assert out.mlm_logits.shape == (1, 7, 15) and out.nsp_logits.shape == (1, 2)
    assert np.isfinite(np.asarray(out.mlm_logits)).all()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bitwise: the checksum TF stores for each tensor."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_tf_toy_offsets_agree_with_tfs_own_checksums():
    """Every entry's bytes hash to the CRC TF wrote, and the entries tile the data file."""
    data = (tf_toy() / "bert_model.ckpt.data-00000-of-00001").read_bytes()
    entries, _, _ = weights.read_tf_index(tf_toy() / "bert_model.ckpt")
    for e in entries:
        crc = crc32c(data[e.offset:e.offset + e.size])
        masked = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
        assert masked == e.crc32c, e.name
    spans = sorted((e.offset, e.size) for e in entries)
    assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
    assert spans[0][0] == 0 and sum(n for _, n in spans) == len(data)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (buf[pos] & 0x7F) << shift
        shift += 7
        pos += 1
        if buf[pos - 1] < 0x80:
            return value, pos


def hand_decoded_entry(index: bytes, key_bytes: bytes) -> tuple[dict[int, int], list[int]]:
    """The first index entry whose stored key bytes end with `key_bytes`: its varint fields
    and shape. Keys are prefix-compressed, so only the stored (unshared) tail is searched."""
    pos = index.index(key_bytes + b"\x08") + len(key_bytes)  # field 1 (dtype) follows
    fields, dims = {}, []
    while index[pos] != 0x35:  # field 6, the fixed32 crc, comes after all we need
        tag, pos = _varint(index, pos)
        value, pos = _varint(index, pos)
        if tag >> 3 == 2:  # TensorShapeProto: repeated dim (2) { size (1) }
            shape, pos = index[pos:pos + value], pos + value
            while shape:
                assert shape[0] == 0x12 and shape[2] == 0x08
                size, end = _varint(shape, 3)
                dims.append(size)
                shape = shape[end:]
        fields[tag >> 3] = value
    return fields, dims


# Stored key tails, located by reading the index's key order by eye (see the hex dump):
# the first stored "kernel" tail belongs to bert/encoder/layer_0/attention/output/dense.
@pytest.mark.parametrize("key, path, shape", [
    (b"word_embeddings", ("bert", "embeddings", "word_embeddings", "embedding"), [15, 4]),
    (b"kernel", ("bert", "encoder_layer_0", "attention_output_dense", "kernel"), [4, 4]),
    (b"self/key/bias", ("bert", "encoder_layer_0", "attention_self", "key", "bias"), [4]),
    (b"cls/predictions/output_bias", ("cls_predictions", "bias"), [15]),
    (b"weights", ("cls_seq_relationship", "kernel"), [2, 4]),  # stored [out, in]
])
def test_tf_toy_values_match_the_raw_bytes(key, path, shape):
    index = (tf_toy() / "bert_model.ckpt.index").read_bytes()
    data = (tf_toy() / "bert_model.ckpt.data-00000-of-00001").read_bytes()
    fields, dims = hand_decoded_entry(index, key)
    assert fields[1] == 1 and dims == shape  # DT_FLOAT, and the entry we meant
    offset, size = fields.get(4, 0), fields[5]
    raw = np.array(struct.unpack(f"<{size // 4}f", data[offset:offset + size]), np.float32)
    params = weights.load_pretrained(tf_toy()).params
    for k in path:
        params = params[k]
    value = np.asarray(params)
    value = value.T if path[0] == "cls_seq_relationship" else value  # Flax is [in, out]
    if key in (b"word_embeddings", b"cls/predictions/output_bias"):
        # 15 vocabulary rows, then zero rows up to config.vocab_multiple (128)
        assert value.shape[0] == 128 and not value[shape[0]:].any()
        value = value[:shape[0]]
    np.testing.assert_array_equal(value.ravel(), raw)


def test_tf_checkpoint_named_by_prefix_index_file_or_directory():
    a = weights.load_pretrained(tf_toy())
    b = weights.load_pretrained(tf_toy() / "bert_model.ckpt")
    c = weights.load_pretrained(tf_toy() / "bert_model.ckpt.index")
    for x, y, z in zip(*(jax.tree.leaves(p.params) for p in (a, b, c))):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_convert_tf_checkpoint_cli_loads_in_transformers(tmp_path, capsys):
    torch = require("torch")
    transformers = require("transformers")
    assert cli.main(["convert", "--from", str(tf_toy()), "--to", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["loaded"] == 46 and report["architecture"] == "BertForPreTraining"
    ref, info = transformers.BertForPreTraining.from_pretrained(tmp_path,
                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # The original TF weights, read directly, are the ones transformers now holds.
    tf_word = weights.read_tf_checkpoint(tf_toy() / "bert_model.ckpt")[0]
    np.testing.assert_array_equal(ref.bert.embeddings.word_embeddings.weight.detach().numpy(),
                                  tf_word["bert.embeddings.word_embeddings.weight"])
    ids = np.array([[2, 5, 6, 7, 3, 8, 9, 3]], np.int32)
    types = np.array([[0, 0, 0, 0, 0, 1, 1, 1]], np.int32)
    loaded = weights.load_pretrained(tf_toy())
    ours = loaded.model.apply({"params": loaded.params}, ids, np.ones_like(ids), types)
    with torch.no_grad():
        theirs = ref.eval()(input_ids=torch.tensor(ids).long(),
                            token_type_ids=torch.tensor(types).long())
    np.testing.assert_allclose(ours.mlm_logits, theirs.prediction_logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.nsp_logits, theirs.seq_relationship_logits.numpy(),
                               atol=1e-5)
    assert weights.load_pretrained(tmp_path).tokenizer.id_to_token(14) == "boy"


# ---- heads a checkpoint lacks or does not need ------------------------------------------

@pytest.mark.slow
def test_missing_heads_are_initialised_and_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="bert_jax.weights"):
        loaded = weights.load_pretrained(minilm_dir(), head="pretraining",
                                         rng=jax.random.key(3))
    assert loaded.report.initialized == [
        "cls.predictions.bias", "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.dense.weight", "cls.seq_relationship.bias",
        "cls.seq_relationship.weight"]
    assert "initialised randomly" in caplog.text and "cls.predictions" in caplog.text
    assert loaded.params["cls_seq_relationship"]["kernel"].shape == (384, 2)


def test_other_heads_tensors_are_ignored_and_reported():
    loaded = weights.load_pretrained(tf_toy(), head="classification", num_labels=3)
    assert loaded.report.initialized == ["classifier.bias", "classifier.weight"]
    assert len(loaded.report.ignored) == 7 and all(
        n.startswith("cls.") for n in loaded.report.ignored)
    assert loaded.params["classifier"]["kernel"].shape == (4, 3)


def test_auto_head_follows_the_checkpoint():
    assert weights.load_pretrained(minilm_dir(), head="auto").head == "encoder"
    assert weights.load_pretrained(tf_toy(), head="auto").head == "pretraining"


def test_config_overrides_and_bf16_weights(tmp_path):
    torch = require("torch")
    from safetensors.torch import save_file

    loaded = weights.load_pretrained(tf_toy(), dtype="bfloat16", param_dtype="bfloat16")
    assert loaded.config.dtype == "bfloat16"
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(loaded.params))

    # A bf16 safetensors file (numpy has no bfloat16: the reader maps it via ml_dtypes).
    sd = {k: torch.tensor(np.asarray(v)).to(torch.bfloat16)
          for k, v in weights.flax_to_hf(loaded.params,
                                         vocab_size=loaded.config.vocab_size).items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(loaded.config.to_hf_dict()))
    back = weights.load_pretrained(tmp_path)
    word = back.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert word.dtype == np.float32
    np.testing.assert_array_equal(
        np.asarray(word)[:15], sd["bert.embeddings.word_embeddings.weight"].float().numpy())


# ---- the hub ----------------------------------------------------------------------------

def test_hub_name_offline_without_cache_says_how_to_use_a_local_dir(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    run = subprocess.run(
        [sys.executable, "-m", "bert_jax.cli", "convert", "--from", "bert-base-cased",
         "--to", str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=REPO)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error: 'bert-base-cased' is not in the local HF cache")
    assert "HF_HUB_OFFLINE" in lines[0] and "pass its directory" in lines[0]


def test_hub_name_resolves_through_the_local_cache_offline(tmp_path, tiny_dir):
    """A model in the HF cache (laid out as huggingface_hub writes it) loads offline."""
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-bert"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / commit).symlink_to(tiny_dir, target_is_directory=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    run = subprocess.run(
        [sys.executable, "-m", "bert_jax.cli", "convert", "--from", "someone/tiny-bert",
         "--to", str(tmp_path / "out"), "--json"], capture_output=True, text=True, env=env,
        cwd=REPO)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["loaded"], report["initialized"]) == (46, [])
    assert (tmp_path / "out" / "model.safetensors").exists()


# ---- bad input: one clear line each -----------------------------------------------------

@pytest.fixture()
def tiny_dir(tmp_path):
    """An exported tiny pretraining model with its vocab."""
    cfg = preset("tiny")
    params = init_params(build(cfg, "pretraining"), jax.random.key(0))
    (tmp_path / "v").mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(123)]
    (tmp_path / "v" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    from bert_jax.tokenizer import Tokenizer
    return weights.save_pretrained(tmp_path / "m", cfg, params,
                                   Tokenizer.from_vocab(tmp_path / "v" / "vocab.txt"))


def _edit_weights(d, fn):
    from safetensors.numpy import save_file
    sd = {k: np.array(v) for k, v in weights.read_safetensors(d / "model.safetensors").items()}
    fn(sd)
    save_file(sd, str(d / "model.safetensors"))


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))


def _truncate(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:len(data) // 2])


def _bad_vocab(d):
    (d / "tokenizer.json").unlink()
    with open(d / "vocab.txt", "a") as f:
        f.write("extra1\nextra2\n")


def _unexpected(sd):
    sd["bert.encoder.layer.0.attention.self.rotary.weight"] = np.zeros((4, 4), np.float32)


def _misshaped(sd):
    sd["bert.encoder.layer.1.output.dense.bias"] = np.zeros(31, np.float32)


BAD = {
    "missing weights": (lambda d: (d / "model.safetensors").unlink(),
                        "holds no weights: expected model.safetensors"),
    "truncated safetensors": (_truncate, "model.safetensors is truncated: tensor"),
    "hidden size": (lambda d: _edit_config(d, hidden_size=64, intermediate_size=64),
                    "config hidden_size=64 but the checkpoint has 32"),
    "layer count": (lambda d: _edit_config(d, num_hidden_layers=1),
                    "config num_hidden_layers=1 but the checkpoint has 2 layers"),
    "vocab size": (_bad_vocab, "vocab.txt has 130 tokens but the word embeddings have 128 rows"),
    "unexpected tensor": (lambda d: _edit_weights(d, _unexpected),
                          "unexpected tensor encoder.layer.0.attention.self.rotary.weight [4, 4]"),
    "mis-shaped tensor": (lambda d: _edit_weights(d, _misshaped),
                          "tensor encoder.layer.1.output.dense.bias in "),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_user_error(tiny_dir, tmp_path, capsys, case):
    damage, message = BAD[case]
    damage(tiny_dir)
    with pytest.raises(UserError) as e:
        weights.load_pretrained(tiny_dir)
    assert message in str(e.value) and "\n" not in str(e.value)
    if case == "mis-shaped tensor":
        assert "has shape [31] but the model expects [32]" in str(e.value)

    assert cli.main(["convert", "--from", str(tiny_dir), "--to", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_missing_path_and_torch_missing(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no such file or directory: .*nope/model"):
        weights.load_pretrained(tmp_path / "nope" / "model")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read PyTorch checkpoint"):
        weights.read_torch_bin(tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(UserError, match=r"install torch \(pip install 'bert-jax\[torch\]'\)"):
        weights.read_torch_bin(tmp_path / "pytorch_model.bin")


def test_single_weights_file_and_sharded_safetensors(tiny_dir):
    from safetensors.numpy import save_file

    whole = weights.load_pretrained(tiny_dir / "model.safetensors")
    assert whole.report.format == "safetensors" and whole.report.loaded == 46
    sd = weights.read_safetensors(tiny_dir / "model.safetensors")
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[:20],
              "model-00002-of-00002.safetensors": names[20:]}
    for file, keys in shards.items():
        save_file({k: np.array(sd[k]) for k in keys}, str(tiny_dir / file))
    (tiny_dir / "model.safetensors").unlink()
    (tiny_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    sharded = weights.load_pretrained(tiny_dir)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(sharded.params)):
        np.testing.assert_array_equal(a, b)
