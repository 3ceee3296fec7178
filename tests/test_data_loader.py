"""PretrainingLoader: shapes, resume, host split, evaluation pass, dynamic masking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bert_jax.data import PretrainingLoader, create_pretraining_data, demo_corpus_path
from bert_jax.data.loader import feistel_permute
from bert_jax.data.masking import unmask
from bert_jax.data.vocab import train_vocab
from bert_jax.errors import UserError
from bert_jax.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo corpus made twice, static and dynamic (same seed), plus a no-NSP copy."""
    root = tmp_path_factory.mktemp("demo")
    corpus = str(demo_corpus_path())
    tok = Tokenizer.from_vocab(train_vocab([corpus], root / "vocab", vocab_size=2000))
    common = dict(dupe_factor=1, max_seq_length=64, max_predictions_per_seq=10,
                  instances_per_shard=600, progress=False)
    for name, kw in (("static", {}), ("dynamic", {"masking": "dynamic"}),
                     ("nonsp", {"pair_objective": "none"})):
        create_pretraining_data([corpus], str(root / name), tok, **common, **kw)
    return root, tok


BATCH_KEYS = {"input_ids": (np.int32, 2), "token_type_ids": (np.int32, 2),
              "attention_mask": (np.int32, 2), "masked_lm_positions": (np.int32, 2),
              "masked_lm_ids": (np.int32, 2), "masked_lm_weights": (np.float32, 2),
              "next_sentence_label": (np.int32, 1)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_have_fixed_shapes(demo):
    root, _ = demo
    loader = PretrainingLoader(root / "static", 8)
    assert loader.metadata["max_seq_length"] == 64 and loader.metadata["complete"]
    assert len(loader.metadata["shards"]) > 2  # several shards: cross-shard gathers
    assert len(loader) == loader.num_examples // 8
    for _, batch in zip(range(3), loader):
        assert set(batch) == set(BATCH_KEYS)
        for key, (dtype, ndim) in BATCH_KEYS.items():
            assert batch[key].dtype == dtype and batch[key].ndim == ndim
            assert batch[key].shape[0] == 8
        assert batch["input_ids"].shape == (8, 64) and batch["masked_lm_ids"].shape == (8, 10)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_resumed_loader_continues_with_the_next_batch(demo, kind):
    root, _ = demo
    make = lambda: PretrainingLoader(root / kind, 32, seed=3)  # noqa: E731
    straight = make()
    n = len(straight) + 5  # run past an epoch boundary
    expected = [next(straight) for _ in range(n)]
    for stop in (1, len(straight) - 1, len(straight), len(straight) + 2):
        first = make()
        for _ in range(stop):
            next(first)
        state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
        resumed = make()
        resumed.set_state(state)
        for k in range(stop, n):
            assert _same(next(resumed), expected[k]), (stop, k)


def test_epochs_are_permutations_and_hosts_are_disjoint(demo):
    root, _ = demo
    hosts = [PretrainingLoader(root / "static", 16, seed=1, process_index=h, process_count=2)
             for h in range(2)]
    n = hosts[0].num_examples
    assert len(hosts[0]) == len(hosts[1]) == n // 32
    for epoch in range(2):
        seen = [np.concatenate([h.example_indices(epoch, b) for b in range(len(h))])
                for h in hosts]
        assert not set(seen[0]) & set(seen[1])  # no example on both hosts
        both = np.concatenate(seen)
        assert len(np.unique(both)) == len(both) == len(hosts[0]) * 32
        assert both.min() >= 0 and both.max() < n
    orders = [hosts[0].example_indices(e, 0) for e in range(2)]
    assert not np.array_equal(orders[0], orders[1])  # a new order every epoch


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_feistel_permutation_is_a_bijection(n):
    perm = feistel_permute(np.arange(n), n, 42)
    assert sorted(perm.tolist()) == list(range(n))
    if n >= 1000:  # and it actually moves things: few fixed points
        assert np.mean(perm == np.arange(n)) < 0.01


def test_evaluation_pass_sees_every_example_once(demo):
    root, _ = demo
    for count in (1, 3):
        loaders = [PretrainingLoader(root / "static", 64, shuffle=False, repeat=False,
                                     drop_remainder=False, process_index=h,
                                     process_count=count) for h in range(count)]
        n = loaders[0].num_examples
        assert n % (64 * count)  # the last batch is partial
        lens = {len(loader) for loader in loaders}
        assert lens == {-(-n // (64 * count))}
        total = 0
        for loader in loaders:
            batches = list(loader)
            assert len(batches) == len(loader)
            for b in batches:
                real = b["example_weight"] > 0
                assert (b["masked_lm_weights"][~real] == 0).all()
                assert b["input_ids"].shape == (64, 64)
                total += int(real.sum())
        assert total == n
        assert list(loaders[0]) and len(list(loaders[0])) == len(loaders[0])  # next epoch


def test_dynamic_masking(demo):
    root, _ = demo
    dyn = PretrainingLoader(root / "dynamic", 50, shuffle=False)
    stat = PretrainingLoader(root / "static", 50, shuffle=False)
    assert dyn.num_examples == stat.num_examples
    a, b = dyn.batch(0, 0), stat.batch(0, 0)
    # The same instances under both masking modes: unmasked tokens agree.
    original = unmask(b["input_ids"], b["masked_lm_positions"], b["masked_lm_ids"],
                      b["masked_lm_weights"])
    assert np.array_equal(unmask(a["input_ids"], a["masked_lm_positions"],
                                 a["masked_lm_ids"], a["masked_lm_weights"]), original)
    # New masks every epoch; the same masks for the same (epoch, example) in any batch.
    assert not np.array_equal(dyn.batch(1, 0)["masked_lm_positions"], a["masked_lm_positions"])
    small = PretrainingLoader(root / "dynamic", 10, shuffle=False)
    assert np.array_equal(small.batch(0, 2)["input_ids"], a["input_ids"][20:30])
    # Static data re-masked dynamically: the same originals, different masks.
    remasked = PretrainingLoader(root / "static", 50, shuffle=False, masking="dynamic").batch(0, 0)
    assert np.array_equal(unmask(remasked["input_ids"], remasked["masked_lm_positions"],
                                 remasked["masked_lm_ids"], remasked["masked_lm_weights"]),
                          original)
    counts = remasked["masked_lm_weights"].sum(1)
    lengths = remasked["attention_mask"].sum(1)
    assert np.array_equal(counts, [min(10, max(1, round(n * 0.15))) for n in lengths])
    more = PretrainingLoader(root / "dynamic", 50, shuffle=False, masked_lm_prob=0.3,
                             max_predictions_per_seq=20).batch(0, 0)
    assert more["masked_lm_ids"].shape == (50, 20)
    assert np.array_equal(more["masked_lm_weights"].sum(1),
                          [min(20, max(1, round(n * 0.3))) for n in lengths])


def test_no_nsp_data(demo):
    root, _ = demo
    batch = PretrainingLoader(root / "nonsp", 16).batch(0, 0)
    assert not batch["next_sentence_label"].any() and not batch["token_type_ids"].any()
    lengths = batch["attention_mask"].sum(1)
    original = unmask(batch["input_ids"], batch["masked_lm_positions"],
                      batch["masked_lm_ids"], batch["masked_lm_weights"])
    sep = PretrainingLoader(root / "nonsp", 16).metadata["special_ids"]["sep"]
    assert ((original == sep).sum(1) == 1).all()
    assert (original[np.arange(16), lengths - 1] == sep).all()


def test_bad_loader_arguments(demo):
    root, _ = demo
    with pytest.raises(UserError, match="dynamic masking"):
        PretrainingLoader(root / "dynamic", 8, masking="static")
    with pytest.raises(UserError, match="fewer than one global batch"):
        PretrainingLoader(root / "static", 10**6)
    with pytest.raises(UserError, match="process_index"):
        PretrainingLoader(root / "static", 8, process_index=2, process_count=2)
    loader = PretrainingLoader(root / "static", 8)
    with pytest.raises(UserError, match="batch_size"):
        loader.set_state({**loader.get_state(), "batch_size": 16})
    with pytest.raises(UserError, match="not a pre-training dataset"):
        PretrainingLoader(root, 8)


@pytest.mark.slow
def test_worker_processes_make_the_same_batches_and_states(demo):
    """Prefetcher(workers=2): batches made in spawned processes from `loader.plan()` equal
    the loader's own, in order, across an epoch boundary, starting mid-epoch."""
    from bert_jax.data.prefetch import Prefetcher

    root, _ = demo
    loader = PretrainingLoader(root / "dynamic", 32, seed=3, masking="dynamic")
    loader.set_state({"epoch": 0, "position": len(loader) - 2})
    reference = PretrainingLoader(root / "dynamic", 32, seed=3, masking="dynamic")
    reference.set_state(loader.get_state())
    with Prefetcher(loader, workers=2) as batches:
        for _ in range(5):
            assert _same(next(batches), next(reference))
            assert batches.state == reference.get_state()
    assert reference.get_state()["epoch"] == 1  # the 5 batches crossed into epoch 1
    assert loader.get_state()["position"] == len(loader) - 2  # plan() did not move it
