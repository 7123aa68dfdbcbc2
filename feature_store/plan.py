"""Plans: the diff between the registry and the repo, as frozen data.

A plan is computed without side effects and applied by the registry in one transaction; the
same plan object can be printed, tested, or checked for what it invalidates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from feature_store.catalog import Catalog, SpecKey
from feature_store.definitions import to_spec

Action = Literal["add", "change", "remove"]
_COSMETIC = {"description", "tags", "nullable"}  # spec fields that do not determine materialized data


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: Action
    fields: tuple[str, ...] = ()  # top-level spec keys that differ, for "change"
    invalidates: tuple[str, ...] = ()  # views whose materialized state must be rebuilt

    def describe(self) -> str:
        what = f"{self.action} {self.kind.replace('_', ' ')} {self.name!r}"
        if self.fields:
            what += f" ({', '.join(self.fields)})"
        if self.invalidates:
            what += f"; rebuilds materialized data of {', '.join(self.invalidates)}"
        return what


@dataclass(frozen=True)
class Plan:
    project: str
    base_version: int
    changes: tuple[Change, ...]
    desired: Mapping[SpecKey, Mapping[str, Any]]

    @property
    def is_empty(self) -> bool:
        return not self.changes

    @property
    def invalidated_views(self) -> tuple[str, ...]:
        return tuple(sorted({v for c in self.changes for v in c.invalidates}))

    def __str__(self) -> str:
        if self.is_empty:
            return f"project {self.project!r}: no changes (registry version {self.base_version})."
        lines = [f"project {self.project!r}, registry version {self.base_version}:"]
        lines += [f"  {c.describe()}" for c in self.changes]
        return "\n".join(lines)


def view_signature(catalog: Catalog, view_name: str) -> str:
    """A hash of everything that determines a view's materialized data (not descriptions or tags).

    Materialized tables are tagged with it, so a changed definition never reads stale tiles.
    """
    view = catalog.view(view_name)
    source = catalog.source_of(view)
    payload = {
        "view": _without_cosmetics(view.to_spec()),
        "source": _without_cosmetics(to_spec(source)),
        "batch": _without_cosmetics(to_spec(catalog.batch_source(source))),
        "keys": catalog.join_keys(view),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def make_plan(project: str, base_version: int, current: Catalog, desired: Catalog) -> Plan:
    old, new = current.specs(), desired.specs()
    changes: list[Change] = []
    for key in sorted(set(old) | set(new)):
        kind, name = key
        if key not in old:
            changes.append(Change(kind, name, "add"))
        elif key not in new:
            invalid = (name,) if kind == "feature_view" else ()
            changes.append(Change(kind, name, "remove", invalidates=invalid))
        elif old[key] != new[key]:
            fields = tuple(sorted(k for k in set(old[key]) | set(new[key]) if old[key].get(k) != new[key].get(k)))
            changes.append(Change(kind, name, "change", fields, _invalidated(kind, name, current, desired)))
    return Plan(project, base_version, tuple(changes), new)


def _invalidated(kind: str, name: str, current: Catalog, desired: Catalog) -> tuple[str, ...]:
    """Views present in both catalogs whose data signature differs because of this change."""
    if kind == "feature_service":
        return ()
    if kind == "feature_view":
        candidates = [name]
    elif kind == "source":
        candidates = [v.name for v in desired.views.values() if v.source_name == name]
    else:
        candidates = [v.name for v in desired.views.values() if name in v.entity_names]
    return tuple(
        v for v in candidates
        if v in current.views and view_signature(current, v) != view_signature(desired, v)
    )


def _without_cosmetics(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _COSMETIC}
