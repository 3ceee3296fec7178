"""`PretrainingLoader`: a dataset made by create-data -> fixed-shape numpy batches.

    loader = PretrainingLoader("data/wiki128", batch_size=32, seed=0)
    batch = next(iter(loader))          # input_ids [32, 128] int32, ...
    state = loader.get_state()          # JSON-serialisable; store it with the checkpoint
    ...
    loader.set_state(state)             # the next batch is the one after `state`

Order: epoch e visits the dataset in a pseudo-random permutation keyed by (seed, e) (a
Feistel network with cycle walking, so it costs no memory however large the dataset
is: shards are memory-mapped and rows are read where the permutation points). This is
the global shuffle across shards; create-data only shuffles within a shard. Every
shard's file sizes are checked against its index when the loader opens; a shard is
mapped when first read, and only the `max_open_shards` most recently read stay mapped
(so a dataset of many thousand shards stays within the OS's limit on mappings).

Hosts: global batch b of an epoch is the permutation's entries
[b * B * H, (b + 1) * B * H); host h takes the h-th slice of B. Hosts never share an
example, and together they see exactly the global batch.

Masking: "static" data carries its masks. "dynamic" masking draws fresh masks whenever
an example is seen, with the randomness of example i in epoch e keyed by
(seed, e, i) only, so a restored loader draws the same masks as one that never stopped.
Static data can be masked dynamically too (its masks are undone first).

Evaluation: `repeat=False, shuffle=False, drop_remainder=False` visits every example
once; the last batch is filled up with copies of a real row whose `example_weight`
and `masked_lm_weights` are 0 (`example_weight` is present only with
drop_remainder=False). Every host yields the same number of batches.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bert_jax.data import instances, shards
from bert_jax.data import masking as masking_lib
from bert_jax.data.padding import pad_rows
from bert_jax.data.rng import derive_key, hash_bits
from bert_jax.errors import UserError

_FEISTEL_ROUNDS = 4
_INDEX_BLOCK_ROWS = 16384  # example indices computed together (whole batches of them)


def feistel_permute(x: np.ndarray, n: int, key: int | np.ndarray) -> np.ndarray:
    """A bijection of [0, n) evaluated at `x` (an array of indices), keyed by `key`."""
    half = max(1, math.ceil(math.ceil(math.log2(max(n, 2))) / 2))
    mask = np.uint64((1 << half) - 1)
    keys = [derive_key(key, r) for r in range(_FEISTEL_ROUNDS)]

    def rounds(v: np.ndarray) -> np.ndarray:
        left, right = v >> np.uint64(half), v & mask
        for k in keys:
            left, right = right, left ^ (hash_bits(k, right) & mask)
        return (left << np.uint64(half)) | right

    y = rounds(np.asarray(x, np.uint64))
    out = y >= np.uint64(n)
    while out.any():  # cycle walking: the domain is < 4n, so ~2 rounds at most on average
        y[out] = rounds(y[out])
        out = y >= np.uint64(n)
    return y.astype(np.int64)


class PretrainingLoader:
    """An iterator of dict batches over a pre-training dataset (see the module doc)."""

    def __init__(self, data_dir: str | Path, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, repeat: bool = True, process_index: int = 0,
                 process_count: int = 1, masking: str | None = None,
                 masked_lm_prob: float = 0.15, max_predictions_per_seq: int | None = None,
                 whole_word_masking: bool | None = None, drop_remainder: bool = True,
                 verify: bool = False, max_open_shards: int = 1024) -> None:
        self.data_dir = Path(data_dir)
        meta = shards.read_metadata(self.data_dir)
        if not meta.get("complete"):
            raise UserError(f"dataset {self.data_dir} is incomplete (create-data was "
                            "interrupted); re-run the same create-data command to finish it")
        self.metadata = meta
        if batch_size < 1:
            raise UserError(f"batch_size {batch_size} must be at least 1")
        if not 0 <= process_index < process_count:
            raise UserError(f"process_index {process_index} is not in [0, {process_count})")
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.shuffle, self.repeat, self.drop_remainder = shuffle, repeat, drop_remainder
        self.process_index, self.process_count = process_index, process_count

        # Every shard is checked now (cheap: sizes against its index); its arrays are
        # memory-mapped when first read, and at most `max_open_shards` stay mapped.
        self._shards: list[tuple[Path, dict[str, Any]]] = []
        counts = []
        for entry in meta["shards"]:
            path = self.data_dir / entry["name"]
            if not path.is_dir():
                raise UserError(f"shard {path} is missing; re-create the dataset")
            index = shards.check_shard(path, verify=verify)
            if index["num_instances"] != entry["num_instances"]:
                raise UserError(f"shard {path} holds {index['num_instances']} instances, "
                                f"metadata.json says {entry['num_instances']}; re-create "
                                "the dataset")
            counts.append(entry["num_instances"])
            self._shards.append((path, index))
        self._open: collections.OrderedDict[int, dict[str, np.ndarray]] = (
            collections.OrderedDict())
        self._max_open = max_open_shards
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.num_examples = int(self._offsets[-1])

        self.masking = masking or meta["masking"]
        if self.masking not in ("static", "dynamic"):
            raise UserError(f"masking {self.masking!r} must be 'static' or 'dynamic'")
        if self.masking == "static" and meta["masking"] != "static":
            raise UserError(f"{self.data_dir} was made with dynamic masking (no stored "
                            "masks); load it with masking='dynamic'")
        stored_p = int(meta["max_predictions_per_seq"])
        self.max_predictions = int(max_predictions_per_seq or stored_p)
        if self.masking == "static" and self.max_predictions != stored_p:
            raise UserError(f"static masks hold {stored_p} predictions per sequence, not "
                            f"{self.max_predictions}; use masking='dynamic' to change it")
        wwm = meta["whole_word_masking"] if whole_word_masking is None else whole_word_masking
        self._rules = None
        if self.masking == "dynamic":
            table = np.load(self.data_dir / "is_continuation.npy") > 0
            self._rules = _masking_rules(meta, masked_lm_prob, self.max_predictions,
                                         bool(wwm), table)

        global_batch = self.batch_size * process_count
        n_batches = (self.num_examples // global_batch if drop_remainder
                     else math.ceil(self.num_examples / global_batch))
        if n_batches == 0:
            raise UserError(f"{self.data_dir} has {self.num_examples} instances, fewer than "
                            f"one global batch of {global_batch}; use a smaller batch or "
                            "drop_remainder=False")
        self._batches_per_epoch = n_batches
        self._epoch, self._position = 0, 0
        self._block_batches = max(1, _INDEX_BLOCK_ROWS // self.batch_size)
        self._index_block: tuple[tuple[int, int] | None, np.ndarray | None] = (None, None)

    # ---- state ------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch for this host."""
        return self._batches_per_epoch

    @property
    def pair_objective(self) -> str:
        """The sentence-pair task of the data: nsp, sop or none (`next_sentence_label`)."""
        return instances.pair_objective_of(self.metadata)

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed,
                "num_examples": self.num_examples, "batch_size": self.batch_size,
                "process_count": self.process_count, "shuffle": self.shuffle}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from `state` (from `get_state`); the data and layout must match."""
        mine = self.get_state()
        for key in ("seed", "num_examples", "batch_size", "process_count", "shuffle"):
            if key in state and state[key] != mine[key]:
                raise UserError(f"loader state has {key}={state[key]!r}, this loader "
                                f"{mine[key]!r}; restore with the same data and settings")
        self._epoch, self._position = int(state["epoch"]), int(state["position"])

    # ---- iteration --------------------------------------------------------------------

    def __iter__(self) -> PretrainingLoader:
        return self

    def plan(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(epoch, position, state after it) of each batch `next` would make from here,
        without making them or moving this loader: for worker processes, which make
        `batch(epoch, position)` each (see prefetch.py)."""
        epoch, position = self._epoch, self._position
        while True:
            if position >= self._batches_per_epoch:
                epoch, position = epoch + 1, 0
                if not self.repeat:
                    return
            yield epoch, position, {**self.get_state(), "epoch": epoch, "position": position + 1}
            position += 1

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a worker process: without the memory maps (it maps its own)."""
        state = dict(self.__dict__)
        state["_open"] = collections.OrderedDict()
        state["_index_block"] = (None, None)
        return state

    def __next__(self) -> dict[str, np.ndarray]:
        if self._position >= self._batches_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
            if not self.repeat:
                raise StopIteration
        batch = self.batch(self._epoch, self._position)
        self._position += 1
        return batch

    def example_indices(self, epoch: int, position: int) -> np.ndarray:
        """Global example indices of this host's batch (-1 for padding rows)."""
        block, row = divmod(position, self._block_batches)
        if self._index_block[0] != (epoch, block):
            self._index_block = ((epoch, block), self._block_indices(epoch, block))
        return self._index_block[1][row].copy()

    def _block_indices(self, epoch: int, block: int) -> np.ndarray:
        """[K, B] indices of this host's batches K*block ... K*block + K - 1 of `epoch`.

        One permutation call for K batches (about `_INDEX_BLOCK_ROWS` rows): its cycle
        walking takes a dozen rounds of small numpy calls whatever the size, so a call
        per batch would cost as much as masking the batch.
        """
        k = self._block_batches
        positions = np.arange(block * k, (block + 1) * k, dtype=np.int64)
        start = (positions * self.process_count + self.process_index) * self.batch_size
        slots = start[:, None] + np.arange(self.batch_size, dtype=np.int64)[None, :]
        valid = slots < self.num_examples
        out = np.full(slots.shape, -1, np.int64)
        if self.shuffle:
            key = derive_key(self.seed, epoch)
            out[valid] = feistel_permute(slots[valid], self.num_examples, key)
        else:
            out[valid] = slots[valid]
        return out

    def batch(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        """Batch `position` of `epoch` for this host (a pure function of its arguments)."""
        idx = self.example_indices(epoch, position)
        filled, example_weight = pad_rows(idx, len(idx))  # padding rows copy a real example
        real = example_weight > 0
        rows = self._gather(filled)
        L = rows["input_ids"].shape[1]
        pos = np.arange(L)[None, :]
        length = rows["lengths"].astype(np.int32)[:, None]
        a_len = rows["a_lengths"].astype(np.int32)[:, None]
        ids = rows["input_ids"]
        if int(ids.max(initial=0)) >= self.metadata["vocab_size"] or int(length.max()) > L:
            raise UserError(f"{self.data_dir}: batch {position} of epoch {epoch} holds "
                            "out-of-range values (corrupt shard?); run the loader with "
                            "verify=True to find it")
        if self.masking == "static":
            positions = rows["masked_lm_positions"].astype(np.int32)
            labels = rows["masked_lm_ids"].astype(np.int32)
            weights = (positions > 0).astype(np.float32)  # slot 0 is [CLS]: never masked
            input_ids = ids.astype(np.int32)
        else:
            if "masked_lm_positions" in rows:
                ids = masking_lib.unmask(ids, rows["masked_lm_positions"], rows["masked_lm_ids"],
                                     rows["masked_lm_positions"] > 0)
            keys = derive_key(self.seed, instances.DYNAMIC_MASK, epoch, np.where(real, idx, 0))
            m = masking_lib.mask_batch(ids.astype(np.int32), length[:, 0], keys, self._rules)
            input_ids, positions, labels, weights = m.input_ids, m.positions, m.ids, m.weights
        weights = weights * real[:, None]
        batch = {
            "input_ids": input_ids,
            "token_type_ids": ((pos >= a_len) & (pos < length)).astype(np.int32),
            "attention_mask": (pos < length).astype(np.int32),
            "masked_lm_positions": positions,
            "masked_lm_ids": labels,
            "masked_lm_weights": weights.astype(np.float32),
            "next_sentence_label": rows["next_sentence_labels"].astype(np.int32),
        }
        if not self.drop_remainder:
            batch["example_weight"] = example_weight
        return batch

    def _arrays(self, s: int) -> dict[str, np.ndarray]:
        """Shard s's memory-mapped arrays (least recently used ones are unmapped)."""
        arrays = self._open.pop(s, None)
        if arrays is None:
            arrays = shards.open_shard(*self._shards[s])
            while len(self._open) >= self._max_open:
                self._open.popitem(last=False)
        self._open[s] = arrays
        return arrays

    def _gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `idx` (global indices) of every array, read from the memory-mapped shards."""
        shard_of = np.searchsorted(self._offsets, idx, side="right") - 1
        out: dict[str, np.ndarray] = {}
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            local = idx[sel] - self._offsets[s]
            for name, array in self._arrays(int(s)).items():
                if name not in out:
                    out[name] = np.empty((len(idx),) + array.shape[1:], array.dtype)
                out[name][sel] = array[local]
        return out


def _masking_rules(meta: dict[str, Any], masked_lm_prob: float, max_predictions: int,
                   whole_word: bool, is_continuation: np.ndarray) -> masking_lib.MaskingRules:
    special = meta["special_ids"]
    if not 0.0 < masked_lm_prob < 1.0:
        raise UserError(f"masked_lm_prob {masked_lm_prob} must be in (0, 1)")
    return masking_lib.MaskingRules(
        vocab_size=int(meta["vocab_size"]), mask_id=int(special["mask"]),
        never_mask=(int(special["cls"]), int(special["sep"]), int(special["pad"])),
        max_predictions=max_predictions, masked_lm_prob=masked_lm_prob,
        whole_word=whole_word, is_continuation=is_continuation)
