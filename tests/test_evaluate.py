"""`bert-jax evaluate` against transformers: the same checkpoint and instances give the
same MLM and NSP losses (to 1e-4) and accuracies (exactly).

The checkpoint is a randomly initialised transformers `BertForPreTraining` (small, with
the released bert-base-cased vocab), its MLM bias nudged towards frequent words so that
the MLM accuracy is far from zero and the comparison means something; the data is made from
sample_text.txt by create-data, and the reference loss is transformers' own
(cross-entropy over the positions labelled, as `BertForPreTraining(labels=...)` does).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import require, shared_file
from test_parity import random_pretraining_model

from bert_jax import cli
from bert_jax.data import PretrainingLoader, create_pretraining_data
from bert_jax.errors import UserError
from bert_jax.tokenizer import Tokenizer
from experiments import mlm_by_piece

SIZES = dict(vocab_size=28996, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=64)


@pytest.fixture(scope="module")
def checkpoint_and_data(tmp_path_factory):
    torch = require("torch")
    root = tmp_path_factory.mktemp("evaluate")
    vocab = shared_file("vocab", "bert-base-cased", "vocab.txt")
    model = random_pretraining_model(**SIZES)
    tokenizer = Tokenizer.from_vocab(vocab)
    frequent = [tokenizer.ids(w)[0] for w in (".", ",", "the", "of", "and", "a", "to", "in")]
    with torch.no_grad():  # favour frequent words: the top-1 is often right, and varies
        model.cls.predictions.bias[frequent] += 3.0
    model.save_pretrained(root / "model")
    shutil.copy(vocab, root / "model" / "vocab.txt")
    create_pretraining_data([str(shared_file("corpus", "sample_text.txt"))], str(root / "data"),
                            tokenizer, max_seq_length=64, max_predictions_per_seq=10,
                            dupe_factor=2, progress=False)
    return model, root / "model", root / "data"


def transformers_metrics(model, data_dir) -> dict[str, float]:
    """Every instance in one batch through transformers, its cross-entropy losses."""
    torch = require("torch")
    loader = PretrainingLoader(data_dir, 10_000, shuffle=False, repeat=False,
                               drop_remainder=False)
    batch = next(iter(loader))
    real = batch["example_weight"] > 0
    b = {k: v[real] for k, v in batch.items()}
    labels = np.full(b["input_ids"].shape, -100, np.int64)
    rows, slots = np.nonzero(b["masked_lm_weights"])
    labels[rows, b["masked_lm_positions"][rows, slots]] = b["masked_lm_ids"][rows, slots]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(b["input_ids"], dtype=torch.long),
                    attention_mask=torch.tensor(b["attention_mask"], dtype=torch.long),
                    token_type_ids=torch.tensor(b["token_type_ids"], dtype=torch.long),
                    labels=torch.tensor(labels),
                    next_sentence_label=torch.tensor(b["next_sentence_label"], dtype=torch.long))
    xent = torch.nn.CrossEntropyLoss()
    mlm_logits = out.prediction_logits[torch.tensor(rows), torch.tensor(
        b["masked_lm_positions"][rows, slots].astype(np.int64))]
    mlm_labels = torch.tensor(labels[rows, b["masked_lm_positions"][rows, slots]])
    nsp_labels = torch.tensor(b["next_sentence_label"], dtype=torch.long)
    result = {
        "loss": float(out.loss),  # transformers' own: MLM + NSP
        "masked_lm_loss": float(xent(mlm_logits, mlm_labels)),
        "next_sentence_loss": float(xent(out.seq_relationship_logits, nsp_labels)),
        "masked_lm_correct": int((mlm_logits.argmax(-1) == mlm_labels).sum()),
        "mlm_predictions": mlm_logits.argmax(-1).numpy(), "mlm_labels": mlm_labels.numpy(),
        "masked": len(rows),
        "next_sentence_correct": int((out.seq_relationship_logits.argmax(-1)
                                      == nsp_labels).sum()),
        "examples": int(real.sum()),
    }
    return result


@pytest.mark.slow
def test_evaluate_equals_transformers(checkpoint_and_data, capsys):
    model, model_dir, data_dir = checkpoint_and_data
    # batch 8: several batches, the last one padded with zero-weight rows
    assert cli.main(["evaluate", "--model", str(model_dir), "--data", str(data_dir),
                     "--batch-size", "8", "--json", "--no-progress"]) == 0
    ours = json.loads(capsys.readouterr().out)
    ref = transformers_metrics(model, data_dir)
    assert ours["examples"] == ref["examples"] > 16 and ref["examples"] % 8
    assert ours["head"] == "pretraining" and ours["objective"] == "mlm_nsp"
    assert ours["checkpoint_step"] is None  # an HF directory, not a pre-training workdir
    for key in ("masked_lm_loss", "next_sentence_loss"):
        np.testing.assert_allclose(ours[key], ref[key], atol=1e-4, rtol=0, err_msg=key)
    np.testing.assert_allclose(ours["masked_lm_loss"] + ours["next_sentence_loss"],
                               ref["loss"], atol=1e-4, rtol=0)
    assert ref["masked_lm_correct"] >= 10  # a non-trivial accuracy (chance: ~0 of ~350)
    assert ours["masked_lm_accuracy"] == ref["masked_lm_correct"] / ref["masked"]
    assert ours["next_sentence_accuracy"] == ref["next_sentence_correct"] / ref["examples"]


@pytest.mark.slow
def test_evaluate_refuses_data_of_another_vocab(checkpoint_and_data, tmp_path):
    _, model_dir, data_dir = checkpoint_and_data
    other = tmp_path / "model"
    shutil.copytree(model_dir, other)
    tokens = (other / "vocab.txt").read_text(encoding="utf-8").split("\n")
    tokens[1000], tokens[1001] = tokens[1001], tokens[1000]  # same size, other ids
    (other / "vocab.txt").write_text("\n".join(tokens), encoding="utf-8")
    (other / "tokenizer.json").unlink(missing_ok=True)
    with pytest.raises(UserError, match="another vocab"):
        from bert_jax.train.evaluate import evaluate

        evaluate(str(other), str(data_dir), batch_size=8, progress=False)
    with pytest.raises(UserError, match="another vocab"):  # the per-piece split checks too
        mlm_by_piece.score(other, data_dir, batch_size=8)


@pytest.mark.slow
def test_mlm_by_piece_splits_transformers_predictions(checkpoint_and_data):
    # experiments/mlm_by_piece.py: accuracy on word starts and on ## pieces, against
    # transformers' argmax at the same positions, split by the vocab file's own spelling
    model, model_dir, data_dir = checkpoint_and_data
    ref = transformers_metrics(model, data_dir)
    tokens = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    cont = np.array([tokens[i].startswith("##") for i in ref["mlm_labels"]])
    right = ref["mlm_predictions"] == ref["mlm_labels"]
    ours = mlm_by_piece.score(model_dir, data_dir, batch_size=8)
    assert (ours["start_positions"], ours["continuation_positions"]) == (
        int((~cont).sum()), int(cont.sum()))
    assert cont.sum() >= 10 and (~cont).sum() >= 10  # both kinds are there
    assert ours["start_accuracy"] == right[~cont].mean()
    assert ours["continuation_accuracy"] == right[cont].mean()
    assert ours["accuracy"] == ref["masked_lm_correct"] / ref["masked"]
