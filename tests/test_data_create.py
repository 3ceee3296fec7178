"""create_pretraining_data as a job: deterministic across worker counts, resumable, safe."""

from __future__ import annotations

import filecmp
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import shared_file

from bert_jax.data import PretrainingLoader, create_pretraining_data
from bert_jax.errors import UserError
from bert_jax.tokenizer import Tokenizer

# ~225 KB of text per unit: WikiText-2 valid becomes 5-6 shards.
KNOBS = dict(dupe_factor=2, input_format="wikitext", instances_per_shard=1000, progress=False)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_vocab(shared_file("vocab", "bert-base-cased", "vocab.txt"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("ref") / "one_worker"
    stats = create_pretraining_data(
        [str(shared_file("corpus", "wikitext-2-raw", "valid.txt"))], str(out), tokenizer,
        num_workers=1, **KNOBS)
    return out, stats


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _identical(a: Path, b: Path) -> bool:
    files = _files(a)
    return files == _files(b) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in files)


@pytest.mark.multiprocess
def test_byte_identical_with_one_and_two_workers(tmp_path, tokenizer, reference):
    ref, stats = reference
    assert stats["num_shards"] >= 4
    out = tmp_path / "two_workers"
    create_pretraining_data([str(shared_file("corpus", "wikitext-2-raw", "valid.txt"))],
                            str(out), tokenizer, num_workers=2, **KNOBS)
    assert _identical(ref, out)


def test_rerun_continues_from_finished_shards(tmp_path, tokenizer, reference):
    ref, stats = reference
    valid = str(shared_file("corpus", "wikitext-2-raw", "valid.txt"))
    out = tmp_path / "killed"
    shutil.copytree(ref, out)
    # As a run killed midway leaves it: metadata not complete, two shards not yet renamed
    # into place, one of them half-written under its temporary name.
    meta = json.loads((out / "metadata.json").read_text())
    shards = meta.pop("shards")
    meta.pop("stats"), meta.pop("num_instances")
    (out / "metadata.json").write_text(json.dumps({**meta, "complete": False}))
    shutil.rmtree(out / shards[1]["name"])
    (out / shards[3]["name"]).rename(out / f".tmp-{shards[3]['name']}-999")
    (out / f".tmp-{shards[3]['name']}-999" / "input_ids.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(UserError, match="incomplete"):
        PretrainingLoader(out, 8)  # an unfinished dataset is never taken as complete
    again = create_pretraining_data([valid], str(out), tokenizer, **KNOBS)
    assert again["new_shards"] == 2
    assert not list(out.glob(".tmp-*"))
    assert _identical(ref, out)
    assert again["num_instances"] == stats["num_instances"]
    # Finished: a re-run does nothing.
    assert create_pretraining_data([valid], str(out), tokenizer, **KNOBS)["already_complete"]


def test_rerun_with_other_knobs_is_refused(tmp_path, tokenizer, reference):
    ref, _ = reference
    valid = str(shared_file("corpus", "wikitext-2-raw", "valid.txt"))
    with pytest.raises(UserError, match="max_seq_length: 128 there, 64 now"):
        create_pretraining_data([valid], str(ref), tokenizer, **{**KNOBS, "max_seq_length": 64})
    with pytest.raises(UserError, match="inputs"):
        create_pretraining_data([valid, valid], str(ref), tokenizer, **KNOBS)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        create_pretraining_data([valid], str(tmp_path / "other"), tokenizer, **KNOBS)


def test_metadata_describes_the_data(reference, tokenizer):
    ref, stats = reference
    meta = json.loads((ref / "metadata.json").read_text())
    assert meta["complete"] and meta["format"] == "bert-jax-pretraining/1"
    expected = dict(max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15,
                    dupe_factor=2, short_seq_prob=0.1, random_seed=12345,
                    whole_word_masking=False, masking="static", pair_objective="nsp",
                    input_format="wikitext", vocab_size=28996, token_dtype="<u2",
                    special_ids={"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103})
    assert {k: meta[k] for k in expected} == expected
    assert meta["vocab_sha256"].startswith("eeaa9875")  # the released vocab.txt's sha256
    assert sum(s["num_instances"] for s in meta["shards"]) == meta["num_instances"]
    assert meta["stats"]["documents"] == 60 and meta["stats"]["invalid_utf8_lines"] == 0
    assert stats["num_instances"] == meta["num_instances"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_killed_run_resumes_to_the_same_bytes(tmp_path, tokenizer):
    valid = str(shared_file("corpus", "wikitext-2-raw", "valid.txt"))
    vocab = str(shared_file("vocab", "bert-base-cased", "vocab.txt"))
    knobs = {**KNOBS, "instances_per_shard": 500}
    out = tmp_path / "killed"
    script = (
        "import sys\n"
        "from bert_jax.data import create_pretraining_data\n"
        "from bert_jax.tokenizer import Tokenizer\n"
        f"create_pretraining_data([{valid!r}] * 4, {str(out)!r}, "
        f"Tokenizer.from_vocab({vocab!r}), **{knobs!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while len(list(out.glob("shard-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the run finished before it could be killed")
    with pytest.raises(UserError, match="incomplete"):
        PretrainingLoader(out, 8)
    resumed = create_pretraining_data([valid] * 4, str(out), tokenizer, **knobs)
    assert 0 < resumed["new_shards"] < resumed["num_shards"]
    fresh = tmp_path / "fresh"
    create_pretraining_data([valid] * 4, str(fresh), tokenizer, **knobs)
    assert _identical(fresh, out)
