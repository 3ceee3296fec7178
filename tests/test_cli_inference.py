"""`bert-jax fill-mask | embed | nsp | attention` end to end, against transformers.

The model is a random tiny `transformers.BertForPreTraining` saved by transformers
itself (plus a vocab.txt), so the CLI goes through the real loading path; every number
is compared with transformers run on that same directory (the fill-mask pipeline, the
encoder's hidden states, BertForNextSentencePrediction, eager attentions).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require

from bert_jax import cli
from bert_jax.config import preset

CFG = preset("tiny")
WORDS = [f"w{i}" for i in range(CFG.vocab_size - 5)]
MULTI = "w1 [MASK] w3 w4 [MASK] w6 w7 [MASK]"  # three [MASK]s, one forward
SINGLE = "w9 w8 [MASK] w7"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch = require("torch")
    transformers = require("transformers")
    d = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    # A wide init spread gives peaked, well-separated fill-mask scores.
    hf_cfg = transformers.BertConfig(**CFG.replace(initializer_range=0.5).to_hf_dict())
    transformers.BertForPreTraining(hf_cfg).save_pretrained(d)
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                            *WORDS]) + "\n")
    return d


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def hf_encode(model_dir, texts, pairs=None) -> dict:
    """transformers' own tokenization of the inputs, as torch tensors."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    return dict(tok(texts, pairs, padding=True, return_tensors="pt"))


def test_fill_mask_json_equals_transformers_pipeline(model_dir, capsys):
    transformers = require("transformers")
    code, out, _ = run(capsys, "fill-mask", "--model", str(model_dir), "--json", "--top-k", "4",
                       MULTI, SINGLE)
    assert code == 0
    got = json_lines(out)
    assert [g["text"] for g in got] == [MULTI, SINGLE]
    fill = transformers.pipeline("fill-mask", model=str(model_dir),
                                 tokenizer=transformers.AutoTokenizer.from_pretrained(model_dir))
    for g in got:
        expected = fill(g["text"], top_k=4)
        if g["text"].count("[MASK]") == 1:
            expected = [expected]  # the pipeline unwraps a single [MASK]
        assert len(g["masks"]) == len(expected) == g["text"].count("[MASK]")
        for ours, theirs in zip(g["masks"], expected):
            scores = [t["score"] for t in theirs]
            assert min(np.diff(scores[::-1])) > 1e-4  # a well-defined order to compare
            assert [o["token_id"] for o in ours] == [t["token"] for t in theirs]
            assert [o["token_str"] for o in ours] == [t["token_str"] for t in theirs]
            np.testing.assert_allclose([o["score"] for o in ours], scores, atol=1e-4)


def test_fill_mask_table_input_file_and_stdin(model_dir, capsys, tmp_path, monkeypatch):
    import io

    texts = tmp_path / "texts.txt"
    texts.write_text(f"{SINGLE}\n\n{MULTI}\n")  # the blank line is skipped
    monkeypatch.setattr("sys.stdin", io.StringIO("w2 [MASK]\n"))
    code, out, _ = run(capsys, "fill-mask", "--model", str(model_dir), "--top-k", "2",
                       "--input", str(texts), "-")
    assert code == 0
    lines = out.splitlines()
    # stdin ("-") comes first as the positional, then the file, in order.
    assert [line for line in lines if "[MASK]" in line] == ["w2 [MASK]", SINGLE, MULTI]
    assert sum(line.strip().startswith(("1 ", "2 ", "3 ")) for line in lines) == 2 * (1 + 1 + 3)


@pytest.mark.parametrize("argv, message", [
    (["fill-mask", "w1 w2"], "has no [MASK]"),
    (["fill-mask"], "no input"),
    (["fill-mask", "--strict", " ".join(["w1"] * 70) + " [MASK]"], "more than the model's 64"),
    (["fill-mask", "--input", "/nonexistent/texts.txt"], "input file not found"),
    (["nsp", "w1 w2"], "not a sentence pair"),
    (["embed", "--layer", "5", "w1"], "layer 5 does not exist"),
    (["attention", "w1", "--layer", "0"], "layer 0 does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(model_dir, capsys, argv, message):
    code, out, err = run(capsys, argv[0], "--model", str(model_dir), *argv[1:])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_model_dir_is_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "fill-mask", "--model", str(tmp_path / "nope"), "w [MASK]")
    assert code == 2 and err.startswith("error: ") and "nope" in err


def test_truncation_warns_on_one_line(model_dir, capsys):
    code, out, err = run(capsys, "fill-mask", "--model", str(model_dir), "--json",
                         "[MASK] " + " ".join(["w1"] * 70))
    assert code == 0 and len(json_lines(out)) == 1
    assert err == "warning: text 1 has 73 tokens, more than the model's 64; truncated to 64\n"


def test_embed_json_equals_transformers_hidden_states(model_dir, capsys):
    import torch
    import transformers

    texts = ["w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10"]
    _, out_cls, _ = run(capsys, "embed", "--model", str(model_dir), "--json", *texts)
    _, out_mean, _ = run(capsys, "embed", "--model", str(model_dir), "--json", "--layer", "1",
                         "--pooling", "mean", *texts)
    _, out_tok, _ = run(capsys, "embed", "--model", str(model_dir), "--json", "--layer", "0",
                        "--pooling", "tokens", texts[0])
    enc = hf_encode(model_dir, texts)
    with torch.inference_mode():
        hidden = transformers.BertModel.from_pretrained(model_dir)(
            **enc, output_hidden_states=True).hidden_states
    mask = enc["attention_mask"][..., None].float()
    cls = hidden[-1][:, 0].numpy()
    mean = ((hidden[1] * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose([g["embedding"] for g in json_lines(out_cls)], cls, atol=1e-5)
    np.testing.assert_allclose([g["embedding"] for g in json_lines(out_mean)], mean, atol=1e-5)
    (tok,) = json_lines(out_tok)
    assert tok["tokens"] == ["[CLS]", "w1", "w2", "w3", "[SEP]"]
    np.testing.assert_allclose(tok["embeddings"], hidden[0][0, :5].numpy(), atol=1e-5)


def test_nsp_json_equals_transformers_next_sentence_prediction(model_dir, capsys):
    import torch
    import transformers

    code, out, _ = run(capsys, "nsp", "--model", str(model_dir), "--json",
                       "--pair", "w1 w2", "w3 w4 w5", "w6 w7 ||| w8")
    assert code == 0
    got = json_lines(out)
    assert [(g["a"], g["b"]) for g in got] == [("w1 w2", "w3 w4 w5"), ("w6 w7", "w8")]
    enc = hf_encode(model_dir, ["w1 w2", "w6 w7"], ["w3 w4 w5", "w8"])
    with torch.inference_mode():
        logits = transformers.BertForNextSentencePrediction.from_pretrained(model_dir)(
            **enc).logits
    np.testing.assert_allclose([g["is_next"] for g in got],
                               torch.softmax(logits, -1)[:, 0].numpy(), atol=1e-5)


def test_attention_json_plot_and_table(model_dir, capsys, tmp_path):
    import torch
    import transformers

    png = tmp_path / "attention.png"
    code, out, err = run(capsys, "attention", "--model", str(model_dir), "w1 w2 w3",
                         "--layer", "1", "--json", "--plot", str(png))
    assert code == 0 and "wrote" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    (got,) = json_lines(out)
    enc = hf_encode(model_dir, ["w1 w2 w3"])
    with torch.inference_mode():
        attentions = transformers.BertModel.from_pretrained(
            model_dir, attn_implementation="eager")(**enc, output_attentions=True).attentions
    assert got["tokens"] == ["[CLS]", "w1", "w2", "w3", "[SEP]"] and got["layer"] == 1
    np.testing.assert_allclose(got["attentions"], attentions[0][0].numpy(), atol=1e-5)

    code, out, _ = run(capsys, "attention", "--model", str(model_dir), "w1 w2 w3", "--average")
    rows = out.splitlines()[2:]
    assert code == 0 and [r.split()[0] for r in rows] == got["tokens"]
    expected = attentions[-1][0].mean(0).numpy()
    np.testing.assert_allclose([[float(x) for x in r.split()[1:]] for r in rows], expected,
                               atol=0.006)  # the table rounds to 2 decimals


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ("fill-mask", "--top-k", "3", MULTI, SINGLE, "w2 w3 [MASK] w4 w5"),
    ("embed", "--pooling", "mean", "w1 w2", "w3 w4 w5 w6", "w7"),
    ("nsp", "--pair", "w1 w2", "w3", "--pair", "w4", "w5 w6 w7", "w8 ||| w9 w10"),
])
def test_packing_flag_gives_the_unpacked_output(model_dir, capsys, monkeypatch, argv):
    from bert_jax.inference import Predictor

    packed_calls = []
    original = Predictor._packed_batches
    monkeypatch.setattr(Predictor, "_packed_batches",
                        lambda self, encoded: packed_calls.append(1) or original(self, encoded))
    command, *rest = argv
    outputs = []
    for flag in ((), ("--packing",)):
        outputs.append(json_lines(run(capsys, command, "--model", str(model_dir), "--json",
                                      *rest, *flag)[1]))
        assert len(packed_calls) == len(flag)  # the flag, and only it, packs
    assert len(outputs[0]) == len(outputs[1]) == 3
    for want, got in zip(*outputs):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if key in ("embedding", "is_next"):
                np.testing.assert_allclose(got[key], value, atol=1e-5)
            elif key == "masks":
                for g, w in zip(got[key], value):
                    assert [r["token_id"] for r in g] == [r["token_id"] for r in w]
                    np.testing.assert_allclose([r["score"] for r in g],
                                               [r["score"] for r in w], atol=1e-5)
            else:
                assert got[key] == value
