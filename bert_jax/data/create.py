"""`create_pretraining_data`: text files -> a sharded dataset of MLM(+NSP/SOP) instances.

Streams the input through fixed work units (`documents.work_units`); each unit becomes
exactly one shard (`instances.unit_instances`), written atomically (`shards`). Workers
(spawned processes) tokenize and build whole units and write their shards themselves,
so only text goes through the pipes; at most two units per worker are in flight, so
memory is bounded by the unit (= shard) size, not the corpus size. Because every seed
depends only on (random_seed, unit index, ...), the shards are byte-identical whatever
`num_workers` is.

A re-run with the same inputs and knobs keeps the finished shards and makes only the
missing ones; a finished dataset is returned as is; an output directory made with
other knobs is refused.

Workers are spawned (not forked: the caller may hold JAX or tokenizer threads), so a
script that calls this with `num_workers > 1` needs the usual
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import dataclasses
import hashlib
import logging
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np

from bert_jax import files as file_io
from bert_jax.data import documents, instances, shards
from bert_jax.data.masking import MaskingRules
from bert_jax.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_INSTANCES_PER_SHARD = 16384
# Text bytes one instance consumes on average at dupe_factor 1, per token of
# max_num_tokens (measured on WikiText-2 with the bert-base-cased vocab); it only sets
# how much text goes into a unit, so shards hold about `instances_per_shard` instances.
_BYTES_PER_INSTANCE_TOKEN = 3.6


def vocab_facts(tokenizer) -> dict[str, Any]:
    """What a dataset records of its vocab (and what `evaluate` checks a model against)."""
    vocab = sorted(tokenizer.backend.get_vocab().items(), key=lambda kv: kv[1])
    text = "".join(token + "\n" for token, _ in vocab)
    return {
        "vocab_size": tokenizer.vocab_size,
        # sha256 of vocab.txt as Tokenizer.save writes it (= the released file's own).
        "vocab_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "special_ids": {"pad": tokenizer.pad_id, "unk": tokenizer.unk_id,
                        "cls": tokenizer.cls_id, "sep": tokenizer.sep_id,
                        "mask": tokenizer.mask_id},
    }


def _is_continuation(tokenizer) -> np.ndarray:
    table = np.zeros(tokenizer.vocab_size, np.uint8)
    for token, i in tokenizer.backend.get_vocab().items():
        if token.startswith("##") and i < len(table):
            table[i] = 1
    return table


@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything a worker needs besides the unit's text."""

    root: str
    cfg: instances.InstanceConfig
    rules: MaskingRules
    special: tuple[int, int, int]  # cls, sep, pad
    dtype: str


# A spawned worker's tokenizer and job, set once by `_init_worker` (a process-pool
# initializer can only hand state to the tasks through the worker's module globals).
_worker: dict[str, Any] = {}


def _init_worker(tokenizer_json: str, job: _Job) -> None:
    import tokenizers

    _worker["backend"] = tokenizers.Tokenizer.from_str(tokenizer_json)
    _worker["job"] = job


def _worker_unit(index: int, docs: list[list[str]]) -> tuple[int, dict[str, int]]:
    return _make_shard(_worker["backend"], _worker["job"], index, docs)


def _make_shard(backend, job: _Job, index: int,
                docs: list[list[str]]) -> tuple[int, dict[str, int]]:
    unit = instances.tokenize_unit(docs, backend)
    arrays, counts = instances.unit_instances(unit, index, job.cfg, job.rules, job.special,
                                              dtype=np.dtype(job.dtype))
    shards.write_shard(Path(job.root), index, arrays, {"unit": index, "counts": counts})
    return index, counts


def create_pretraining_data(
        input_files: list[str], output_dir: str, tokenizer, *,
        max_seq_length: int = 128, max_predictions_per_seq: int = 20,
        masked_lm_prob: float = 0.15, dupe_factor: int = 10, short_seq_prob: float = 0.1,
        random_seed: int = 12345, whole_word_masking: bool = False, masking: str = "static",
        pair_objective: str = "nsp", input_format: str = "sentences", num_workers: int = 1,
        instances_per_shard: int = DEFAULT_INSTANCES_PER_SHARD,
        progress: bool = True) -> dict[str, Any]:
    """Writes the dataset to `output_dir` (resuming one left unfinished); returns its stats.

    The knobs are google-research/bert's, with its defaults; `masking="dynamic"` keeps
    the tokens unmasked (the loader masks them), `pair_objective` is "nsp" (the
    original), "sop" (sentence order, both segments from one document) or "none"
    (single-segment instances), `input_format` is "sentences" (one per line, blank line between
    documents), "documents" (one per line) or "wikitext". `instances_per_shard` is a
    target: a shard is a unit of whole documents, so its size varies around it.
    """
    cfg = instances.InstanceConfig(
        max_seq_length=max_seq_length, max_predictions_per_seq=max_predictions_per_seq,
        masked_lm_prob=masked_lm_prob, dupe_factor=dupe_factor, short_seq_prob=short_seq_prob,
        random_seed=random_seed, whole_word_masking=whole_word_masking, masking=masking,
        pair_objective=pair_objective)
    cfg.validate()
    if input_format not in documents.INPUT_FORMATS:
        raise UserError(f"unknown input format {input_format!r}; use one of "
                        f"{documents.INPUT_FORMATS}")
    if instances_per_shard < 1 or num_workers < 1:
        raise UserError("instances_per_shard and num_workers must be at least 1")
    files = documents.expand_inputs(input_files)
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"output {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)

    unit_bytes = max(1024, int(instances_per_shard * _BYTES_PER_INSTANCE_TOKEN
                               * cfg.max_num_tokens / cfg.dupe_factor))
    facts = vocab_facts(tokenizer)
    knobs = {**dataclasses.asdict(cfg), "input_format": input_format,
             "instances_per_shard": instances_per_shard, "unit_bytes": unit_bytes,
             "vocab_size": facts["vocab_size"], "vocab_sha256": facts["vocab_sha256"],
             "inputs": [{"name": f.name, "bytes": f.stat().st_size} for f in files]}
    started = time.perf_counter()
    finished = _check_existing(root, knobs)
    if finished is not None:
        return finished
    removed = shards.clean_temporaries(root)
    if removed:
        log.warning("removed %d unfinished shard(s) of an interrupted run in %s", removed, root)

    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 65536 else np.int32)
    is_continuation = _is_continuation(tokenizer)
    rules = MaskingRules(
        vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
        never_mask=(tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id),
        max_predictions=max_predictions_per_seq, masked_lm_prob=masked_lm_prob,
        whole_word=whole_word_masking, is_continuation=is_continuation > 0)
    with file_io.atomic_path(root / "is_continuation.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, is_continuation)
    base = {"format": shards.FORMAT, **knobs, **facts, "token_dtype": dtype.str}
    shards.write_json_atomic(root / shards.METADATA, {**base, "complete": False})

    job = _Job(str(root), cfg, rules, (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id),
               dtype.str)
    done = {int(p.name.split("-")[1]) for p in root.glob("shard-*") if p.is_dir()}
    read_stats = documents.ReadStats()
    try:
        made = _run_units(files, input_format, unit_bytes, read_stats, job, tokenizer, done,
                          num_workers, progress, cfg.pair_objective == "nsp")
        if read_stats.documents == 0:
            raise UserError(f"no text found in {', '.join(map(str, files))} (all empty?)")
    except UserError:
        if not any(root.glob("shard-*")):  # nothing made: leave the directory as it was
            (root / shards.METADATA).unlink()
            (root / "is_continuation.npy").unlink()
        raise

    meta = _finish(root, base, made["units"], done, read_stats)
    seconds = time.perf_counter() - started
    _log_skips(meta["stats"], root, cfg.pair_objective)
    return {**_summary(meta), "seconds": seconds, "new_shards": made["new"],
            "instances_per_second": made["new_instances"] / max(seconds, 1e-9)}


def _check_existing(root: Path, knobs: dict[str, Any]) -> dict[str, Any] | None:
    """Refuses a directory made with other knobs; returns the stats of a finished one."""
    if not (root / shards.METADATA).exists():
        if any(root.iterdir()):
            raise UserError(f"output directory {root} is not empty and holds no dataset; "
                            "choose an empty or new directory")
        return None
    meta = shards.read_metadata(root)
    # Data made before `pair_objective` records `nsp` (a bool): the same knob.
    meta["pair_objective"] = instances.pair_objective_of(meta)
    diff = {k: f"{k}: {meta.get(k)!r} there, {v!r} now" for k, v in knobs.items()
            if meta.get(k) != v}
    if diff:
        if len(diff) > 1:
            diff.pop("unit_bytes", None)  # it follows from the other knobs
        raise UserError(f"{root} holds data made with other settings "
                        f"({'; '.join(diff.values())}); "
                        "choose another output directory or delete it")
    if meta.get("complete"):
        log.info("%s is already complete (%d instances)", root, meta["num_instances"])
        return {**_summary(meta), "already_complete": True}
    return None


def _finish(root: Path, base: dict[str, Any], num_units: int, done: set[int],
            read_stats: documents.ReadStats) -> dict[str, Any]:
    """Writes the final metadata.json from the shards' indexes; returns it."""
    stale = sorted(i for i in done if i >= num_units)
    if stale:
        raise UserError(f"{root} has shards past the last unit ({stale}); delete the "
                        "directory and re-run")
    shard_list, totals = [], collections.Counter()
    for i in range(num_units):
        index = shards.read_index(root / shards.shard_name(i))
        shard_list.append({"name": shards.shard_name(i), "num_instances": index["num_instances"]})
        totals.update(index["counts"])
    stats = {**dataclasses.asdict(read_stats), **dict(totals)}
    stats["documents_without_tokens"] = stats["documents"] - stats["documents_with_tokens"]
    meta = {**base, "complete": True, "shards": shard_list,
            "num_instances": int(totals["instances"]), "stats": stats}
    shards.write_json_atomic(root / shards.METADATA, meta)
    return meta


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    return {"num_shards": len(meta["shards"]), "num_instances": meta["num_instances"],
            **meta["stats"]}


def _log_skips(stats: dict[str, Any], root: Path, pair_objective: str) -> None:
    single = {"nsp": "always paired with a random next", "none": "one segment each",
              "sop": "A and B cut from the one sentence"}[pair_objective]
    for key, what in (("empty_files", "empty input files skipped"),
                      ("invalid_utf8_lines", "lines had invalid UTF-8 bytes (dropped)"),
                      ("split_documents", "over-long documents were cut into parts"),
                      ("documents_without_tokens",
                       "documents had no tokens once tokenized (skipped)"),
                      ("single_sentence_documents",
                       f"one-sentence documents ({single})"),
                      ("sop_unsplittable_chunks", "one-token chunks SOP cannot split (skipped)"),
                      ("same_document_random_next",
                       "random-next segments came from the same document (unit too small)")):
        if stats.get(key):
            log.warning("%s: %d %s", root, stats[key], what)


def _run_units(files, input_format, unit_bytes, read_stats, job: _Job, tokenizer,
               done: set[int], num_workers: int, progress: bool, nsp: bool) -> dict[str, int]:
    """Streams the units through the workers (or inline); returns counts."""
    from tqdm import tqdm

    total_bytes = sum(f.stat().st_size for f in files)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="create-data",
               disable=not progress, dynamic_ncols=True)
    counts = {"units": 0, "new": 0, "new_instances": 0}
    started = time.perf_counter()
    pending: collections.deque = collections.deque()
    pool = None
    if num_workers > 1:
        pool = futures.ProcessPoolExecutor(
            num_workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(tokenizer.backend.to_str(), job))

    def finish(result: tuple[int, dict[str, int]], nbytes: int) -> None:
        counts["new"] += 1
        counts["new_instances"] += result[1]["instances"]
        bar.update(nbytes)
        rate = counts["new_instances"] / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(instances=counts["new_instances"], inst_per_s=f"{rate:,.0f}")

    try:
        docs_iter = documents.read_documents(files, input_format, read_stats)
        for index, unit in enumerate(documents.work_units(docs_iter, unit_bytes, read_stats)):
            counts["units"] = index + 1
            nbytes = sum(len(s) + 1 for doc in unit for s in doc)
            if nsp and index == 0 and len(unit) == 1:
                raise UserError(
                    "the corpus has a single document, but NSP draws its random next "
                    "sentences from other documents; add documents (a blank line separates "
                    "them), pick the right --input-format, or pass --pair-objective sop "
                    "(pairs within a document) or none (single segments, = --no-nsp)")
            if index in done:
                bar.update(nbytes)
                continue
            if pool is None:
                finish(_make_shard(tokenizer.backend, job, index, unit), nbytes)
                continue
            while len(pending) >= 2 * num_workers:
                future, size = pending.popleft()
                finish(future.result(), size)
            pending.append((pool.submit(_worker_unit, index, unit), nbytes))
        while pending:
            future, size = pending.popleft()
            finish(future.result(), size)
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown()
        bar.close()
    return counts
