"""Tile fields that no engine's SQL computes (sketches, percentiles: ``Compute("kernel")``), computed by each kind's
numpy code over the events of each tile, for any engine: the engine hands over the tiles its SQL computed and the
events grouped the same way, row for row."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from feature_store.aggregations import Partial
from feature_store.query import Group


def computed_by_kernel(partial: Partial) -> bool:
    return any(compute.op == "kernel" for compute in partial.of.compute(partial))


def kernel_partials(group: Group) -> list[Partial]:
    return [partial for partial in group.partials if computed_by_kernel(partial)]


def with_kernel_fields(table: pa.Table, events: pa.Table, group: Group, keys: Sequence[str]) -> pa.Table:
    """The group's table with the fields of its kernel partials, each computed by its kind's numpy code per
    (keys, position) run of the events."""
    import numpy as np
    import pyarrow.compute as pc

    rows = events.num_rows
    change = np.zeros(rows, dtype=bool)
    if rows:
        change[0] = True
        for name in [*keys, *(["__pos"] if group.hop else [])]:
            column = events.column(name).combine_chunks()
            change[1:] |= np.asarray(pc.not_equal(column.slice(1), column.slice(0, rows - 1)).fill_null(True)
                                     .to_numpy(zero_copy_only=False), dtype=bool)
    starts = np.append(np.flatnonzero(change), rows).astype(np.int64)
    ts = events.column("__ts").to_numpy()
    created = events.column("__cr").to_numpy()
    if len(starts) - 1 != table.num_rows:  # the two queries group the same events: a bug if they disagree
        raise RuntimeError(f"kernel groups ({len(starts) - 1}) and tiles ({table.num_rows}) disagree")
    for partial in kernel_partials(group):
        values = events.column(partial.column).combine_chunks() if partial.column else pa.nulls(rows)
        computed = partial.of.kernel(partial, values, ts, created, starts)
        table = table.append_column(partial.fields[0], pa.array(computed))
    return table
