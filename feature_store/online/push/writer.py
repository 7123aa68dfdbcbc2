"""A push's online writes: every view over the pushed source, each entity's base and delta in one atomic update."""

from __future__ import annotations

from collections.abc import Sequence

from feature_store.online.push.merge import Event, PushTarget
from feature_store.online.stores.base import OnlineStore
from feature_store.online.stores.writes import Item
from feature_store.push_rows import PushRows


def write_pushes(store: OnlineStore, targets: Sequence[PushTarget], rows: PushRows, pushed_at: int,
                 now_us: int, marker: Item | None = None) -> int:
    """Merge pushed rows into every target view's values in one atomic update; returns entities updated (0 when
    the marker says they were).

    ``marker``, when given, is written in the same update, and its key read first: when it is there already the
    update writes nothing (a retried push whose rows landed before: online/push/idempotency.py)."""
    work: dict[tuple[bytes, bytes], tuple[PushTarget, list[Event]]] = {}
    for target in targets:
        for entity, event in target.events(rows, pushed_at):
            work.setdefault((target.prefix, entity), (target, []))[1].append(event)
    pairs = list(work)
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

    store.update(keys, compute)
    return 0 if landed[0] else len(pairs)
