"""What a compiled program communicates: collectives and their sizes, from optimized HLO.

`collectives(compiled.as_text())` lists every all-reduce, all-gather, reduce-scatter,
all-to-all and collective-permute of the program with the bytes it moves and how many
times it runs per call: an op inside a while loop counts its trip count times (nested
loops multiply), an op inside a conditional's branch counts once (an upper bound: the
branch may not run). `loop_depth` > 0 marks an op inside a loop, e.g. the scan of
gradient accumulation.

Bytes are the size of the whole tensor the collective assembles or reduces, per device:
an all-gather's result, a reduce-scatter's operand (result x group), an all-reduce's
operand. So data parallelism ideally moves P (one all-reduce of the gradients, P the
parameters' bytes), FSDP 3 P (gather the weights for the forward pass and again for the
backward pass, reduce-scatter the gradients). Wire traffic of a ring is (n-1)/n of that
(x2 for an all-reduce).

Used by tests/test_sharding_program.py and benchmarks/sharding_report.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import jax

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# XLA's warning when its SPMD partitioner must replicate a whole array to reshard it.
INVOLUNTARY_REMAT = "Involuntary full rematerialization"

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_CALLEE = re.compile(r"\b(body|to_apply|true_computation|false_computation|calls)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # one of KINDS
    bytes: int  # the whole tensor, per device, per execution
    times: int  # executions per program run (loop trip counts multiplied)
    loop_depth: int  # how many while loops it sits in
    computation: str

    @property
    def total_bytes(self) -> int:
        return self.bytes * self.times


def _arrays(type_text: str) -> list[int]:
    """Bytes of each array in an HLO type (`f32[2,3]{1,0}` or a tuple of them)."""
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else None)
        if size is None:
            continue
        out.append(size * math.prod(int(d) for d in dims.split(",") if d))
    return out


def _group_size(attrs: str) -> int:
    """Devices per replica group: mesh[...] {'axis_0'}, iota [2,4]<=[8], or {{0,1},{2,3}}."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if m:
        sizes = dict((k.strip("' "), int(v)) for k, v in
                     (x.split("=") for x in m.group(1).split(",") if "=" in x))
        axes = [a.strip("' ") for a in m.group(2).split(",") if a.strip("' ")]
        return math.prod(sizes[a] for a in axes)
    m = re.search(r"replica_groups=\[([0-9,]+)\]<=", attrs)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", attrs)
    if m:
        return len(m.group(1).split(","))
    return 1


def _bytes(kind: str, start: bool, type_text: str, attrs: str) -> int:
    arrays = _arrays(type_text)
    if start and kind == "all-gather":  # (operands..., results...)
        arrays = arrays[len(arrays) // 2:]
    elif start and kind == "collective-permute":  # (operand, result, contexts...)
        arrays = arrays[:1]
    total = sum(arrays)
    return total * _group_size(attrs) if kind == "reduce-scatter" else total


def _parse(hlo_text: str) -> tuple[dict[str, list[str]], str]:
    computations: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif line.strip() == "}":
            current = None
        elif current is not None:
            computations[current].append(line)
    return computations, entry


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective the program runs, walking the call graph from the entry."""
    computations, entry = _parse(hlo_text)
    found: list[Collective] = []

    def walk(name: str, times: int, depth: int, seen: tuple[str, ...]) -> None:
        if name in seen:
            return
        for line in computations.get(name, ()):
            m = _INSTR.match(line)
            if not m:
                continue
            type_text, opcode, rest = m.groups()
            base = opcode.removesuffix("-start")
            if base in KINDS and not opcode.endswith("-done"):
                found.append(Collective(base, _bytes(base, opcode != base, type_text, rest),
                                        times, depth, name))
            trip = _TRIP.search(rest)
            for role, callee in _CALLEE.findall(rest):
                if role == "body":
                    n = int(trip.group(1)) if trip else 1
                    walk(callee, times * n, depth + 1, seen + (name,))
                else:
                    walk(callee, times, depth, seen + (name,))
            branches = _BRANCHES.search(rest)
            if branches:
                for callee in branches.group(1).split(","):
                    walk(callee.strip().lstrip("%"), times, depth, seen + (name,))

    walk(entry, 1, 0, ())
    return found


def summary(found: list[Collective]) -> dict[str, Any]:
    """Bytes per step by kind, their total, and what runs inside loops."""
    by_kind = {k: sum(c.total_bytes for c in found if c.kind == k) for k in KINDS}
    return {"bytes": by_kind, "total_bytes": sum(by_kind.values()),
            "ops": sum(c.times for c in found),
            "in_loop_ops": sum(c.times for c in found if c.loop_depth),
            "in_loop_bytes": sum(c.total_bytes for c in found if c.loop_depth)}


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs or arrays (the
    largest shard: uneven shardings hold at most that)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def total_bytes(tree: Any) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Captures file descriptor 2 (where XLA's C++ logging writes, e.g. the involuntary
    rematerialisation warning); the text is in the yielded list after the block."""
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))
