"""`train_vocab`: a BERT WordPiece vocab from any text, with the `tokenizers` trainer.

The pipeline around the trainer is the one `Tokenizer.from_vocab` rebuilds (BERT
normaliser, BERT pre-tokeniser, `##` continuations), so the vocab tokenizes the same
way it was learnt. The five special tokens come first ([PAD]=0, [UNK]=1, [CLS]=2,
[SEP]=3, [MASK]=4). A cased vocab always holds the upper-case letters, so
`Tokenizer.from_vocab` infers "cased" from it; a lower-cased one holds none.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator, Sequence
from pathlib import Path

from bert_jax.data import documents
from bert_jax.errors import UserError
from bert_jax.tokenizer import SPECIAL_TOKENS


def _lines(files: Sequence[Path], stats: documents.ReadStats) -> Iterator[str]:
    # Any input format works: the trainer only counts words.
    for doc in documents.read_documents(files, "sentences", stats):
        yield from doc


def train_vocab(files: Sequence[str], output_dir: str | Path, vocab_size: int = 8000,
                lowercase: bool = False, min_frequency: int = 2) -> Path:
    """Trains a WordPiece vocab on `files` (paths or globs); writes `output_dir/vocab.txt`
    (and `tokenizer_config.json` with `do_lower_case`); returns the vocab path."""
    import tokenizers
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise UserError(f"vocab_size {vocab_size} is too small")
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
        special_tokens=list(SPECIAL_TOKENS), continuing_subword_prefix="##",
        initial_alphabet=list(letters + string.digits + string.punctuation))
    stats = documents.ReadStats()
    tok.train_from_iterator(_lines(paths, stats), trainer=trainer)
    if stats.sentences == 0 and stats.lines == 0 or tok.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise UserError(f"no text to learn a vocab from in {', '.join(map(str, paths))}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    path = out / "vocab.txt"
    path.write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": lowercase, "tokenizer_class": "BertTokenizer"}, indent=1)
        + "\n", encoding="utf-8")
    return path
