"""WordPiece tokenization through the `tokenizers` library (Rust, fast, batched).

`Tokenizer.from_vocab("vocab.txt")` rebuilds the original BERT pipeline: clean text,
split CJK characters, lower-case and strip accents only for an uncased vocab, split on
whitespace and punctuation, greedy longest-match WordPiece with `##` continuations and
[UNK] past 100 characters, then `[CLS] A [SEP] B [SEP]` with token types 0/1.
`Tokenizer.from_dir(d)` takes a model directory's `tokenizer.json` when it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from bert_jax import files
from bert_jax.errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def read_vocab(path: str | Path) -> dict[str, int]:
    """vocab.txt -> {token: id}; ids are line numbers, as in the original."""
    path = Path(path)
    vocab: dict[str, int] = {}
    # split("\n"), not splitlines(): tokens may hold \x85, \u2028 and other line breaks.
    lines = files.read_text(path, "vocab file").split("\n")
    for i, line in enumerate(lines[:-1] if lines[-1] == "" else lines):
        vocab.setdefault(line, i)  # a duplicate line keeps its first id, as HF does
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise UserError(f"vocab {path} lacks the special tokens {missing}")
    return vocab


def vocab_is_cased(vocab: dict[str, int]) -> bool:
    """A vocab with upper-case word pieces was built for a cased (not lower-cased) model."""
    return any(t != t.lower() for t in vocab if t not in SPECIAL_TOKENS and not t.startswith("["))


class Tokenizer:
    """A BERT tokenizer: text (or text pairs) -> ids, token types, attention mask."""

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        self.backend = tokenizer
        vocab = tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise UserError(f"tokenizer lacks the special tokens {missing}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset((self.pad_id, self.cls_id, self.sep_id, self.mask_id))
        self.vocab_size = tokenizer.get_vocab_size()

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_vocab(cls, path: str | Path, lowercase: bool | None = None) -> Tokenizer:
        """The original BERT tokenizer over a vocab.txt; `lowercase=None` infers it."""
        vocab = read_vocab(path)
        if lowercase is None:
            lowercase = not vocab_is_cased(vocab)
        tok = tokenizers.Tokenizer(models.WordPiece(
            vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=lowercase,
            lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        tok.decoder = decoders.WordPiece(prefix="##")
        # "[MASK]" typed in a text is one token, never split into "[", "MASK", "]".
        tok.add_special_tokens([t for t in vocab if t in SPECIAL_TOKENS])
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """A `tokenizer.json` as HF saves it."""
        try:
            return cls(tokenizers.Tokenizer.from_file(str(path)))
        except Exception as e:  # the Rust side raises a bare Exception
            raise UserError(f"cannot read tokenizer file {path}: {e}") from None

    @classmethod
    def from_dir(cls, directory: str | Path) -> Tokenizer:
        """A model directory: `tokenizer.json` if present, else `vocab.txt`.

        With vocab.txt, `do_lower_case` from `tokenizer_config.json` wins over the guess.
        """
        d = Path(directory)
        if (d / "tokenizer.json").exists():
            tok = cls.from_file(d / "tokenizer.json")
            tok.backend.no_padding()
            tok.backend.no_truncation()
            return tok
        lowercase = None
        if (d / "tokenizer_config.json").exists():
            lowercase = files.read_json(d / "tokenizer_config.json",
                                        "tokenizer config").get("do_lower_case")
        if not (d / "vocab.txt").exists():
            raise UserError(f"{d} has neither tokenizer.json nor vocab.txt")
        return cls.from_vocab(d / "vocab.txt", lowercase=lowercase)

    def save(self, directory: str | Path) -> None:
        """Writes `vocab.txt` and `tokenizer.json` (both readable by transformers)."""
        d = Path(directory)
        vocab = sorted(self.backend.get_vocab().items(), key=lambda kv: kv[1])
        files.write_text_atomic(d / "vocab.txt", "".join(t + "\n" for t, _ in vocab))
        with files.atomic_path(d / "tokenizer.json") as tmp:
            self.backend.save(str(tmp))

    # ---- use ----------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text, without [CLS]/[SEP]."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def ids(self, text: str) -> list[int]:
        """Piece ids of one text, without [CLS]/[SEP]."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, text: str, pair: str | None = None, *,
               max_length: int | None = None) -> tokenizers.Encoding:
        """One example with [CLS]/[SEP]; truncated to `max_length` (longest segment first)."""
        enc = self.backend.encode(text, pair)
        if max_length is not None and len(enc.ids) > max_length:
            enc = self._truncated(text, pair, max_length)
        return enc

    def _truncated(self, text: str, pair: str | None, max_length: int) -> tokenizers.Encoding:
        a = self.backend.encode(text, add_special_tokens=False)
        b = None if pair is None else self.backend.encode(pair, add_special_tokens=False)
        return self._truncate_pair(a, b, max_length)

    def _truncate_pair(self, a: tokenizers.Encoding, b: tokenizers.Encoding | None,
                       max_length: int) -> tokenizers.Encoding:
        """The original `_truncate_seq_pair`: drop the last token of the longer segment,
        of the second on a tie (the `tokenizers` longest_first breaks ties the other way)."""
        budget = max(0, max_length - self.backend.num_special_tokens_to_add(b is not None))
        len_a, len_b = len(a.ids), 0 if b is None else len(b.ids)
        if len_a + len_b > budget:  # the closed form of popping one token at a time
            short = min(len_a, len_b)
            if budget >= 2 * short:
                len_a, len_b = (budget - short, short) if len_a > len_b else (short, budget - short)
            else:
                len_a, len_b = (budget + 1) // 2, budget // 2
        a.truncate(len_a)
        if b is not None:
            b.truncate(len_b)
        return self.backend.post_process(a, b)

    def encode_batch(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                     max_length: int | None = None, pad_to: int | None = None
                     ) -> dict[str, np.ndarray]:
        """A padded batch: input_ids, token_type_ids, attention_mask ([B, pad_to] int32).

        `pad_to` defaults to the longest example; examples longer than `max_length` are
        truncated (longest segment first).
        """
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        if max_length is None:
            encodings = self.backend.encode_batch(inputs)
        else:
            firsts = self.backend.encode_batch(list(texts), add_special_tokens=False)
            seconds = ([None] * len(firsts) if pairs is None else
                       self.backend.encode_batch(list(pairs), add_special_tokens=False))
            encodings = [self._truncate_pair(a, b, max_length) for a, b in zip(firsts, seconds)]
        width = pad_to or max(len(e.ids) for e in encodings)
        out = {k: np.zeros((len(encodings), width), np.int32)
               for k in ("input_ids", "token_type_ids", "attention_mask")}
        out["input_ids"][:] = self.pad_id
        for i, e in enumerate(encodings):
            n = len(e.ids)
            if n > width:
                raise ValueError(f"example {i} has {n} tokens, more than pad_to={width}")
            out["input_ids"][i, :n] = e.ids
            out["token_type_ids"][i, :n] = e.type_ids
            out["attention_mask"][i, :n] = 1
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids))

    def id_to_token(self, i: int) -> str:
        return self.backend.id_to_token(int(i))

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)
