"""`train_vocab`: a BERT WordPiece vocab from any text, with the `tokenizers` trainer.

The pipeline around the trainer is the one `Tokenizer.from_vocab` rebuilds (BERT
normaliser, BERT pre-tokeniser, `##` continuations), so the vocab tokenizes the same
way it was learnt. The five special tokens come first ([PAD]=0, [UNK]=1, [CLS]=2,
[SEP]=3, [MASK]=4). A cased vocab always holds the upper-case letters, so
`Tokenizer.from_vocab` infers "cased" from it; a lower-cased one holds none.

The same input gives the same vocab.txt, byte for byte, on every run. The trainer alone
does not: it numbers the `##x` continuation pieces in the order it meets them in a
randomly seeded hash map, and breaks ties between equally frequent merges by those
numbers, so both the order and the set of pieces varied from run to run (threads are
not the cause: one thread varies too). Here every `##x` the text can produce is given
its number up front, sorted, which leaves the trainer no hash order to depend on.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator, Sequence
from pathlib import Path

from bert_jax import files as file_io
from bert_jax.data import documents
from bert_jax.errors import UserError
from bert_jax.tokenizer import SPECIAL_TOKENS


def _lines(files: Sequence[Path], stats: documents.ReadStats) -> Iterator[str]:
    # Any input format works: the trainer only counts words.
    for doc in documents.read_documents(files, "sentences", stats):
        yield from doc


def _continuation_pieces(tok, lines: Iterator[str]) -> list[str]:
    """`##c` for every character that occurs after the first of a word, sorted."""
    chars: set[str] = set()
    for line in lines:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line)):
            chars.update(word[1:])
    return ["##" + c for c in sorted(chars)]


def train_vocab(files: Sequence[str], output_dir: str | Path, vocab_size: int = 8000,
                lowercase: bool = False, min_frequency: int = 2) -> Path:
    """Trains a WordPiece vocab on `files` (paths or globs); writes `output_dir/vocab.txt`
    (and `tokenizer_config.json` with `do_lower_case`); returns the vocab path."""
    import tokenizers
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise UserError(f"vocab_size {vocab_size} is too small")
    if min_frequency < 0:
        raise UserError(f"--min-frequency {min_frequency}: must be 0 or more")
    paths = documents.expand_inputs(list(files))
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]",
                                                max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase,
        lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    letters = string.ascii_lowercase if lowercase else string.ascii_letters
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        # Numbered before training (as "special" tokens): see the module docstring.
        special_tokens=[*SPECIAL_TOKENS,
                        *_continuation_pieces(tok, _lines(paths, documents.ReadStats()))],
        continuing_subword_prefix="##",
        initial_alphabet=list(letters + string.digits + string.punctuation))
    stats = documents.ReadStats()
    tok.train_from_iterator(_lines(paths, stats), trainer=trainer)
    if stats.sentences == 0 and stats.lines == 0 or tok.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise UserError(f"no text to learn a vocab from in {', '.join(map(str, paths))}")
    out = file_io.check_writable_dir(output_dir, "--output")
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    path = out / "vocab.txt"
    file_io.write_text_atomic(path, "".join(t + "\n" for t, _ in vocab))
    file_io.write_text_atomic(out / "tokenizer_config.json", json.dumps(
        {"do_lower_case": lowercase, "tokenizer_class": "BertTokenizer"}, indent=1) + "\n")
    return path
