"""The study's pre-training text, written once to `<study>/corpus/` in the "sentences" format.

`corpus.train` / `corpus.eval` (any input format `bert_jax.data.documents` reads) are
rewritten one sentence per line with a blank line between documents, and when
`corpus.glue_text` names GLUE tasks, the text of their *training* splits (labels
dropped; dev and test are never read) is appended to the training text. That is
task-adaptive pre-training (Gururangan et al., 2020): the only other real English text
available offline here, and what makes a small study's pre-training reach its
downstream tasks. As documents:
  pair tasks (MRPC, STS-B, RTE)  one document per example: the sentences of text_a then
                                 text_b, so an NSP "next" pair is the example's own pair
  single sentences (SST-2, CoLA) `lines_per_document` consecutive examples per document
                                 (SST-2's rows are shuffled phrases: their NSP/SOP
                                 "next" carries no order, only their MLM matters)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_collections

from bert_jax import files
from bert_jax.data import documents as documents_lib
from bert_jax.glue import tasks

LINES_PER_DOCUMENT = 8
TRAIN_FILE, EVAL_FILE = "train.txt", "eval.txt"  # in <study>/corpus/


def glue_documents(task: str, data_dir: str | Path,
                   lines_per_document: int = LINES_PER_DOCUMENT) -> Iterator[list[str]]:
    """The training text of one GLUE task as documents (lists of sentences)."""
    examples = tasks.read_split(task, data_dir, "train")
    split = documents_lib.split_sentences
    if any(e.text_b is not None for e in examples):
        for e in examples:
            yield split(e.text_a) + split(e.text_b or "")
        return
    for start in range(0, len(examples), lines_per_document):
        doc = [s for e in examples[start:start + lines_per_document] for s in split(e.text_a)]
        if doc:
            yield doc


def _write(docs: Iterator[list[str]], path: Path) -> dict[str, int]:
    counts = {"documents": 0, "sentences": 0, "words": 0}
    # Atomic: a killed stage leaves no half file under the final name.
    with files.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for doc in docs:
            doc = [" ".join(s.split()) for s in doc]
            doc = [s for s in doc if s]
            if not doc:
                continue
            f.write("\n".join(doc) + "\n\n")
            counts["documents"] += 1
            counts["sentences"] += len(doc)
            counts["words"] += sum(len(s.split()) for s in doc)
    return counts


def _read(file_list: str, input_format: str) -> Iterator[list[str]]:
    stats = documents_lib.ReadStats()
    paths = [Path(p) for p in file_list.split(",") if p]
    yield from documents_lib.read_documents(paths, input_format, stats)


def make_corpus(study: ml_collections.ConfigDict, out_dir: Path) -> dict[str, Any]:
    """Writes `out_dir/train.txt` (corpus.train + the GLUE training text) and
    `out_dir/eval.txt` (corpus.eval); returns their document/sentence/word counts."""
    c = study.corpus
    names = [t for t in str(c.glue_text).split(",") if t]

    def train_docs() -> Iterator[list[str]]:
        yield from _read(c.train, c.input_format)
        for name in names:
            yield from glue_documents(name, study.glue.data_dir)

    return {"train": _write(train_docs(), out_dir / TRAIN_FILE),
            "eval": _write(_read(c.eval, c.input_format), out_dir / EVAL_FILE),
            "glue_text": names}


def with_corpus(study: ml_collections.ConfigDict, study_dir: Path) -> ml_collections.ConfigDict:
    """The study reading `<study>/corpus/` (when corpus.glue_text is set), as a copy."""
    if not str(study.corpus.glue_text):
        return study
    study = study.copy_and_resolve_references()
    study.corpus.train = str(study_dir / "corpus" / TRAIN_FILE)
    study.corpus.eval = str(study_dir / "corpus" / EVAL_FILE)
    study.corpus.input_format = "sentences"
    return study
