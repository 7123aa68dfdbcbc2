"""A push's online writes: every view over the pushed source, each entity's base and delta in one atomic update.

An update may span any keys on one Redis or SQLite: the whole chunk of a push is one. A Redis Cluster makes a
transaction of the keys of one slot only, so there the chunk is applied slot by slot (an entity's values of every
view are one hash: one slot), all slots at once (store.update_each), each slot's part with a chunk marker of its own
placed in that slot (store.colocated).
A retry with the same push id skips exactly the slots whose part landed: a node failing midway never counts an
entity twice (docs/push.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from feature_store.online.push.merge import Event, PushTarget
from feature_store.online.stores.base import OnlineStore
from feature_store.online.stores.writes import Compute, Item
from feature_store.push_rows import PushRows

Work = dict[tuple[bytes, bytes], tuple[PushTarget, list[Event]]]


def write_pushes(store: OnlineStore, targets: Sequence[PushTarget], rows: PushRows, pushed_at: int,
                 now_us: int, marker: Item | None = None) -> int:
    """Merge pushed rows into every target view's values, atomically per transaction group of the store (one
    group, so all at once, but on a Redis Cluster); returns entities updated (0 for a group the marker says
    landed).

    ``marker``, when given, is written in the same update, and its key read first: when it is there already the
    update writes nothing (a retried push whose rows landed before: online/push/idempotency.py)."""
    work: Work = {}
    for target in targets:
        for entity, event in target.events(rows, pushed_at):
            work.setdefault((target.prefix, entity), (target, []))[1].append(event)
    pairs = list(work)
    groups = store.transaction_groups([prefix + entity for prefix, entity in pairs])
    if not groups:
        keys, compute, updated = _group_update(work, pairs, now_us, marker)
        store.update(keys, compute)
        return updated()
    updates = []
    for group in groups:
        mine = [pairs[i] for i in group]
        near = mine[0][0] + mine[0][1]
        own = None if marker is None else (store.colocated(marker[0], near), marker[1], marker[2])
        updates.append(_group_update(work, mine, now_us, own))
    store.update_each([(keys, compute) for keys, compute, _ in updates])
    return sum(updated() for _, _, updated in updates)


def _group_update(work: Work, pairs: list[tuple[bytes, bytes]], now_us: int,
                  marker: Item | None) -> tuple[list[bytes], Compute, Callable[[], int]]:
    """One atomic update of the pairs' base and delta keys (and the marker's): its keys, its compute, and how many
    entities it updated once it ran (0 when the marker said it had landed)."""
    keys = [key for prefix, entity in pairs for key in (prefix + entity, work[(prefix, entity)][0].delta + entity)]
    if marker is not None:
        keys.append(marker[0])
    done: dict[bytes, tuple[tuple[bytes | None, bytes | None], list[Item]]] = {}  # per key: inputs and the result
    landed = [False]  # as the last run of compute (the one whose writes the store made) found it

    def compute(current: Sequence[bytes | None]) -> list[Item]:
        landed[0] = marker is not None and current[-1] is not None
        if landed[0]:
            return []  # this chunk of the push landed already
        items: list[Item] = []
        for i, (prefix, entity) in enumerate(pairs):
            base, delta = current[2 * i], current[2 * i + 1]
            merged = done.get(prefix + entity)
            if merged is None or merged[0] != (base, delta):  # a retry merges again only what another writer changed
                target, events = work[(prefix, entity)]
                (value, expire), (pushed, pushed_expire) = target.apply(base, delta, events, now_us)
                out = [] if value is None else [(prefix + entity, value, expire)]
                if pushed is not None:  # always: a push always writes the delta
                    out.append((target.delta + entity, pushed, pushed_expire))
                merged = done[prefix + entity] = ((base, delta), out)
            items += merged[1]
        return items if marker is None else [*items, marker]

    return keys, compute, lambda: 0 if landed[0] else len(pairs)
