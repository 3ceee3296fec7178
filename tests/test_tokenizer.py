"""The WordPiece tokenizer against the reference: transformers' original pure-Python one.

The reference is `BertTokenizerLegacy` (the slow, pure-Python BertTokenizer that
transformers v5 renamed; its `BertTokenizer` is now Rust-backed like ours, so it would
not be independent). It takes ~6 s for every line of both WikiText-2 files, under the
60 s budget, so it serves for the bulk as well as for the Unicode cases.
"""

from __future__ import annotations

import pytest
from conftest import minilm_dir, require, shared_file

from bert_jax.tokenizer import Tokenizer

VOCABS = {"cased": ("bert-base-cased", False), "uncased": ("bert-base-uncased", True)}

HARD_CASES = [
    "Hello I'm a [MASK] model.",
    "The [MASK] sat on the [MASK].[MASK]",
    "Café naïve résumé Ångström Straße ÉCOLE",  # accents: kept (cased), stripped (uncased)
    "北京是中国的首都。東京は日本の首都です。",  # CJK: one token per character
    "한국어 텍스트와 ไทย and Ελληνικά and русский",
    "emoji 😀👍🏽 and 👨‍👩‍👧 families ❤️",
    "control\x00chars\x01here\x7f and\ttabs\r\nnewlines\x0b\x0c",
    "zero\u200bwidth\u200cjoin\u200dchars\ufeff and\u00a0nbsp\u2003em space\ufffd",
    "a" * 101 + " " + "b" * 100 + " pneumonoultramicroscopicsilicovolcanoconiosis",
    "don't stop-believing... (1,234.56%) $5 @user #tag e-mail@x.com",
    "Hello ﬁ ligature Ⅻ ½ ² ０１２ ＡＢＣ ⅰ",
    "",
    "   ",
    "[CLS] [SEP] [PAD] [UNK] [mask] [MASK]",
]

PAIRS = [
    ("Is this the first segment?", "And this is the second one, somewhat longer than it."),
    ("A short one.", "North Korea's Kim met Trump in Singapore " * 10),
    ("Über 90 % der Grönland-Eisfläche", "北京 emoji 😀 [MASK] café"),
]


def reference(name: str):
    legacy = require("transformers.models.bert.tokenization_bert_legacy")
    vocab_dir, lower = VOCABS[name]
    path = shared_file("vocab", vocab_dir, "vocab.txt")
    return legacy.BertTokenizerLegacy(str(path), do_lower_case=lower), path


def wikitext_lines() -> list[str]:
    lines = []
    for split in ("valid.txt", "test.txt"):
        path = shared_file("corpus", "wikitext-2-raw", split)
        lines += path.read_text(encoding="utf-8").splitlines()
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VOCABS))
def test_every_wikitext_line_matches_reference(name):
    ref, path = reference(name)
    ours = Tokenizer.from_vocab(path)
    lines = wikitext_lines()
    assert len(lines) == 8118
    expected = [ref.encode(line, add_special_tokens=False) for line in lines]
    got = ours.ids_batch(lines)
    mismatches = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert not mismatches, f"line {mismatches[0]}: {lines[mismatches[0]]!r}"
    assert sum(map(len, got)) > 500_000  # really tokenized, not empty
    # With [CLS]/[SEP] and token types, a sample of them.
    for line in lines[:300]:
        assert ours.encode(line).ids == ref.encode(line)


@pytest.mark.parametrize("name", sorted(VOCABS))
def test_unicode_hard_cases_match_reference(name):
    ref, path = reference(name)
    ours = Tokenizer.from_vocab(path)
    for text in HARD_CASES:
        assert ours.ids(text) == ref.encode(text, add_special_tokens=False), repr(text)
        assert ours.tokenize(text) == ref.tokenize(text), repr(text)
        assert ours.encode(text).ids == ref.encode(text), repr(text)


def test_known_ids_of_the_cased_vocab():
    _, path = reference("cased")
    ours = Tokenizer.from_vocab(path)
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
        0, 100, 101, 102, 103)
    assert ours.encode("Hello I'm a [MASK] model.").ids[:1] == [101]
    assert 103 in ours.ids("a [MASK] model")
    assert ours.ids("a" * 101) == [100]  # a word over 100 characters is [UNK]
    assert ours.ids("fashion The the") == [4633, 1109, 1103]


def test_combining_marks_follow_the_original_not_nfc():
    """A decomposed "e" + U+0301 stays decomposed, as in google-research/bert and HF's
    Rust BertTokenizer; HF's pure-Python one NFC-composes first (a later addition), so
    it is compared on the composed text only."""
    ref, path = reference("cased")
    ours = Tokenizer.from_vocab(path)
    assert ours.tokenize("H\u0065\u0301llo") == ["He", "##\u0301", "##llo"]
    assert ours.tokenize("H\u00e9llo") == ref.tokenize("H\u00e9llo") == ["H", "##é", "##llo"]
    uncased = Tokenizer.from_vocab(reference("uncased")[1])  # accents stripped: same either way
    assert uncased.tokenize("H\u0065\u0301llo") == uncased.tokenize("H\u00e9llo")


@pytest.mark.parametrize("name", sorted(VOCABS))
@pytest.mark.parametrize("max_length", [None, 12, 20])
def test_pairs_and_truncation_match_reference(name, max_length):
    ref, path = reference(name)
    ours = Tokenizer.from_vocab(path)
    for a, b in PAIRS:
        kwargs = {} if max_length is None else dict(truncation="longest_first",
                                                    max_length=max_length)
        expected = ref(a, b, return_token_type_ids=True, **kwargs)
        got = ours.encode(a, b, max_length=max_length)
        assert got.ids == expected["input_ids"], (a, b)
        assert got.type_ids == expected["token_type_ids"], (a, b)
        batch = ours.encode_batch([a], [b], max_length=max_length, pad_to=128)
        n = len(expected["input_ids"])
        assert batch["input_ids"][0, :n].tolist() == expected["input_ids"]
        assert batch["token_type_ids"][0, :n].tolist() == expected["token_type_ids"]
        assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (128 - n)
        assert batch["input_ids"][0, n:].tolist() == [0] * (128 - n)
        single = ours.encode_batch([b], max_length=max_length)["input_ids"][0].tolist()
        assert single == ref(b, **kwargs)["input_ids"]


def test_minilm_tokenizer_json_equals_its_vocab_txt():
    d = minilm_dir()
    from_json = Tokenizer.from_dir(d)
    from_vocab = Tokenizer.from_vocab(d / "vocab.txt")
    assert from_json.vocab_size == from_vocab.vocab_size == 30522
    lines = shared_file("corpus", "wikitext-2-raw", "valid.txt").read_text(
        encoding="utf-8").splitlines()
    texts = lines + HARD_CASES
    assert from_json.ids_batch(texts) == from_vocab.ids_batch(texts)
    assert from_json.ids("Héllo WORLD") == from_vocab.ids("hello world")  # uncased
