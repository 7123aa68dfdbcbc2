"""How a Spark partition's sorted rows are cut into chunks for the kernel (offline/spark/kernel.py), without Spark:
every row once, in order, and never one key in two chunks, whatever the batch sizes (empty batches too), the chunk
size and the key runs (a hot key longer than many chunks)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from feature_store.offline.spark import kernel


class _Plan:
    keys = ("k", "j")


def _chunks(monkeypatch: pytest.MonkeyPatch, batches: list[pa.RecordBatch], chunk_rows: int) -> list[pa.Table]:
    def whole(table: pa.Table, plan: Any, schema: Any, *_: Any) -> Iterator[pa.Table]:
        yield table

    monkeypatch.setattr(kernel, "_evaluate", whole)
    return list(kernel.evaluate_partition(iter(batches), _Plan(), pa.schema([]), chunk_rows=chunk_rows))  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(40))
def test_chunks_are_cut_only_between_keys(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 400))
    keys = np.sort(rng.choice([1, 2, 3, 4, 5, 7, 9, 9, 9, 9], n))  # 9: a hot key with ~40 % of the rows
    table = pa.table({"k": pa.array(keys, pa.int64()), "j": pa.array(["a"] * n), "i": pa.array(np.arange(n))})
    batches, offset = [], 0
    while offset < n or not batches:
        size = min(int(rng.integers(0, 40)), n - offset)
        batches.append(table.slice(offset, size).combine_chunks().to_batches()[0] if size else
                       pa.RecordBatch.from_pylist([], schema=table.schema))
        offset += size
    chunks = _chunks(monkeypatch, batches, int(rng.integers(1, 80)))
    assert [i for c in chunks for i in c.column("i").to_pylist()] == list(range(n))
    seen: set[int] = set()
    for chunk in chunks:
        held = set(chunk.column("k").to_pylist())
        assert not held & seen, "a key in two chunks"
        seen |= held
