"""Raw text -> documents (lists of sentences) -> fixed work units, streamed.

Three input formats:
* "sentences" (the original create_pretraining_data input): one sentence per line, a
  blank line between documents;
* "documents": one document per line, split into sentences here;
* "wikitext": WikiText files: a ` = Title = ` line starts a document, ` = = Section = = `
  headings are dropped, paragraph lines are split into sentences.

The sentence splitter is a plain rule (end punctuation, space, then an upper-case
letter, optionally behind a quote or bracket); it errs on abbreviations ("Mr. Smith")
but needs nothing installed and never looks past the line.

Files are read as bytes, line by line, so memory holds one work unit at a time. A line
with invalid UTF-8 loses the bad bytes (as the original's `convert_to_unicode` did) and
is counted in `ReadStats.invalid_utf8_lines`; an empty file is counted and skipped.

Work units are what makes the output independent of the number of worker processes:
the stream of documents is cut, at document boundaries only, into units of about
`unit_bytes` of text, and every random choice made for a unit is seeded by
(random_seed, unit index, ...). A unit holds at least two documents where the corpus
has them (a short tail is merged into the unit before it), because a unit is also the
pool that NSP draws its random "other document" from. A document longer than
`unit_bytes` is cut at sentence boundaries into parts of about that size (counted in
`ReadStats.split_documents`), which keeps memory bounded on any input.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from bert_jax.errors import UserError

log = logging.getLogger(__name__)

INPUT_FORMATS = ("sentences", "documents", "wikitext")

# End punctuation (and closing quotes/brackets) followed by space and a capital.
_SENTENCE_END = re.compile(r"[.!?]['\")\]]*(?=\s+['\"(\[]?[A-ZÀ-ÖØ-Þ])")
_WIKI_TITLE = re.compile(r"^= (?!= ).*(?<! =) =$")  # "= Title =" (after strip)
_WIKI_HEADING = re.compile(r"^(= ){2,}.*( =){2,}$")  # "= = Section = =" and deeper

Document = list[str]  # sentences


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph, split after . ! ? before an upper-case letter."""
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        pieces.append(text[start:m.end()])
        start = m.end()
    pieces.append(text[start:])
    return [s for s in (p.strip() for p in pieces) if s]


SNIFF_BYTES = 1 << 16


def check_text(path: Path) -> None:
    """Refuses a file whose start is not text: a NUL byte, or more than 1% of it (and
    more than 8 characters) not decodable as UTF-8. Binary data would otherwise be
    read as thousands of lines of noise with only warnings. A few stray bytes (a
    Latin-1 accent) stay what they were: dropped and counted."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    text = head.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    nul = b"\0" in head
    if nul or (bad > 8 and bad > len(text) // 100):
        raise UserError(f"input {path} is not UTF-8 text (binary data? {bad} undecodable "
                        f"characters{' and NUL bytes' if nul else ''} in its first "
                        f"{len(head):,} bytes)")


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files named by paths or globs, in the order given (each glob sorted)."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"no input file matches {pattern!r}")
        for m in matches:
            path = Path(m)
            if not path.exists():
                raise UserError(f"input file not found: {path}")
            if path.is_dir():
                raise UserError(f"input {path} is a directory; give files or a glob "
                                f"such as '{path}/*.txt'")
            check_text(path)
            files.append(path)
    if not files:
        raise UserError("no input files given")
    return files


@dataclasses.dataclass
class ReadStats:
    """Counts of what the reader saw and skipped (all go into metadata.json)."""

    files: int = 0
    empty_files: int = 0
    bytes: int = 0
    lines: int = 0
    invalid_utf8_lines: int = 0
    documents: int = 0
    sentences: int = 0
    split_documents: int = 0
    single_sentence_documents: int = 0
    longest_line_chars: int = 0


def _decode(raw: bytes, stats: ReadStats, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8_lines += 1
        if stats.invalid_utf8_lines <= 5:
            log.warning("%s:%d: invalid UTF-8 bytes dropped", path, lineno)
        return raw.decode("utf-8", errors="ignore")


def read_documents(files: Sequence[Path], input_format: str,
                   stats: ReadStats) -> Iterator[Document]:
    """Yields the documents of `files` in order; updates `stats` as it goes."""
    if input_format not in INPUT_FORMATS:
        raise UserError(f"unknown input format {input_format!r}; use one of {INPUT_FORMATS}")
    for path in files:
        stats.files += 1
        size = os.path.getsize(path)
        if size == 0:
            stats.empty_files += 1
            log.warning("skipping empty input file %s", path)
            continue
        stats.bytes += size
        yield from _file_documents(path, input_format, stats)


def _file_documents(path: Path, input_format: str, stats: ReadStats) -> Iterator[Document]:
    doc: Document = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            stats.lines += 1
            line = _decode(raw, stats, path, lineno).strip()
            stats.longest_line_chars = max(stats.longest_line_chars, len(line))
            if input_format == "sentences":
                if line:
                    doc.append(line)
                elif doc:
                    yield doc
                    doc = []
            elif input_format == "documents":
                if line:
                    yield split_sentences(line)
            else:  # wikitext
                if _WIKI_HEADING.match(line):
                    continue
                if _WIKI_TITLE.match(line):
                    if doc:
                        yield doc
                    doc = []
                elif line:
                    doc.extend(split_sentences(line))
    if doc:
        yield doc


def _parts(doc: Document, max_bytes: int) -> Iterator[Document]:
    """A document cut at sentence boundaries into parts of at most ~max_bytes."""
    part: Document = []
    size = 0
    for sentence in doc:
        if part and size + len(sentence) > max_bytes:
            yield part
            part, size = [], 0
        part.append(sentence)
        size += len(sentence) + 1
    if part:
        yield part


def work_units(documents: Iterator[Document], unit_bytes: int,
               stats: ReadStats) -> Iterator[list[Document]]:
    """Groups documents into units of >= `unit_bytes` of text (the last may be smaller),
    each with at least two documents unless the whole corpus has one."""
    unit: list[Document] = []
    size = 0
    held: list[Document] | None = None  # a full unit, kept until the next one has 2 docs
    for doc in documents:
        doc = [s for s in doc if s]
        if not doc:
            continue
        doc_bytes = sum(len(s) + 1 for s in doc)
        pieces = list(_parts(doc, unit_bytes)) if doc_bytes > unit_bytes else [doc]
        if len(pieces) > 1:
            stats.split_documents += 1
        for piece in pieces:
            stats.documents += 1
            stats.sentences += len(piece)
            stats.single_sentence_documents += len(piece) == 1
            unit.append(piece)
            size += sum(len(s) + 1 for s in piece)
            if size >= unit_bytes and len(unit) >= 2:
                if held is not None:
                    yield held
                held, unit, size = unit, [], 0
    if unit and held is not None and len(unit) < 2:
        held.extend(unit)  # a one-document tail joins the unit before it
        unit = []
    if held is not None:
        yield held
    if unit:
        yield unit
