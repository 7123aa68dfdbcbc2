"""Plans: the diff between the registry and the repo, as frozen data.

A plan is computed without side effects and applied by the registry in one transaction; the
same plan object can be printed, tested, or checked for what it invalidates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from feature_store.aggregations import Aggregation
from feature_store.catalog import Catalog, SpecKey
from feature_store.definitions import FeatureView, to_spec

Action = Literal["add", "change", "remove"]
# spec fields that do not determine materialized data
_COSMETIC = {"description", "tags", "nullable", "drift_thresholds"}
# Spec lists whose items are objects with a name of their own (a view's features by "name", a service's
# projections by "view"): compared item by item, by that name.
_LISTS_BY_NAME = {"features"}
_ITEM_KEYS = ("name", "view")


@dataclass(frozen=True)
class FieldChange:
    """One difference inside a changed definition, e.g. ``features[spend_7d].window``: ``7d`` -> ``14d``.

    ``path`` leads from the spec to the field: keys, and the names of items of a list (a view's features by
    name, a service's projections by view). ``old`` and ``new`` are spec values (JSON); an added item has no
    ``old``, a removed one no ``new`` (both None, told apart by ``action``).
    """

    path: tuple[str, ...]
    action: Action
    old: Any = None
    new: Any = None

    @property
    def field(self) -> str:
        """``ttl``, ``features[spend_7d].window``, ``features[customer_spend]``."""
        text, item = "", False
        for i, part in enumerate(self.path):
            if item:  # the name of an item of the list before it
                text, item = f"{text}[{part}]", False
            else:
                text, item = f"{text}.{part}" if i else part, part in _LISTS_BY_NAME
        return text

    def describe(self) -> str:
        key = self.path[-1]
        if self.action == "add":
            return f"{self.field} added: {show(self.new, key)}"
        if self.action == "remove":
            return f"{self.field} removed (was {show(self.old, key)})"
        if _names(self.old) and _names(self.new) and set(self.old) != set(self.new):  # join keys, features
            added = [n for n in self.new if n not in self.old]
            removed = [n for n in self.old if n not in self.new]
            parts = ([f"added {', '.join(added)}"] if added else []) + (
                [f"removed {', '.join(removed)}"] if removed else [])
            return f"{self.field}: {'; '.join(parts)}"
        return f"{self.field}: {show(self.old, key)} \u2192 {show(self.new, key)}"


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: Action
    fields: tuple[str, ...] = ()  # top-level spec keys that differ, for "change"
    invalidates: tuple[str, ...] = ()  # views whose materialized state must be rebuilt
    diffs: tuple[FieldChange, ...] = ()  # what differs, field by field, for "change"

    def describe(self) -> str:
        """One line: the action, the object, its changed top-level fields and what it rebuilds."""
        what = f"{self.action} {self.kind.replace('_', ' ')} {self.name!r}"
        if self.fields:
            what += f" ({', '.join(self.fields)})"
        if self.invalidates:
            what += f"; rebuilds materialized data of {', '.join(self.invalidates)}"
        return what


@dataclass(frozen=True)
class ReadersSee:
    """What online readers of one view see from ``apply`` until ``materialize`` has built the view's new
    generation (then they switch to it atomically; online/generations.py).

    ``kept``: features whose definition is unchanged, served from the previous generation (the same values as
    before; pushes keep counting). ``previous``: features whose definition changed, still served with their
    *previous* definition's values. ``not_materialized``: features the previous generation lacks (a new view, a
    new feature): status ``NOT_MATERIALIZED``. ``dropped``: features no longer defined (requests name unknown
    features). All of it assumes the view was materialized before; a store that never held it reads
    ``NOT_MATERIALIZED`` for every feature of it until ``materialize``.
    """

    view: str
    kept: tuple[str, ...] = ()
    previous: tuple[str, ...] = ()
    not_materialized: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()

    def rows(self) -> list[tuple[str, str]]:
        """(features, what readers see of them), for each group of features that has any."""
        parts = [(self.kept, "previous values (definition unchanged)"),
                 (self.previous, "values of their previous definition"),
                 (self.not_materialized, "NOT_MATERIALIZED"),
                 (self.dropped, "unknown (no longer defined)")]
        return [(", ".join(names), what) for names, what in parts if names]

    def describe(self) -> list[str]:
        return [f"{names}: {what}" for names, what in self.rows()]


@dataclass(frozen=True)
class Plan:
    project: str
    base_version: int
    changes: tuple[Change, ...]
    desired: Mapping[SpecKey, Mapping[str, Any]]
    # batch source -> its columns' engine-neutral types, as read at plan time: recorded by apply, so that serving
    # never reads the data
    schemas: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    records_columns: bool = False  # the registry lacks some of them (an earlier version did not record them)
    readers: tuple[ReadersSee, ...] = ()  # per view whose online values change: what readers see meanwhile

    @property
    def is_empty(self) -> bool:
        return not self.changes and not self.records_columns

    @property
    def invalidated_views(self) -> tuple[str, ...]:
        return tuple(sorted({v for c in self.changes for v in c.invalidates}))

    def __str__(self) -> str:
        if self.is_empty:
            return f"project {self.project!r}: no changes (registry version {self.base_version})."
        if not self.changes:
            return (f"project {self.project!r}, registry version {self.base_version}: no changes of definitions; "
                    "apply records the sources' columns.")
        lines = [f"project {self.project!r}, registry version {self.base_version}:"]
        for change in self.changes:
            lines.append(f"  {change.describe()}")
            lines += [f"    {diff.describe()}" for diff in change.diffs]
        if self.readers:
            lines.append("  until materialize builds them, online readers see:")
            for seen in self.readers:
                lines += [f"    {seen.view}: {line}" for line in seen.describe()]
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
    columns = catalog.schemas.get(catalog.batch_source(source).name)
    if columns is not None:  # the types of what the view reads: another type is another stored layout
        payload["types"] = {c: columns.get(c) for c in sorted(_columns_read(catalog, view))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _columns_read(catalog: Catalog, view: FeatureView) -> set[str]:
    batch = catalog.batch_source(catalog.source_of(view))
    names = {*catalog.join_keys(view), batch.timestamp_field, *filter(None, [batch.created_timestamp_field])}
    for feature in view.features:
        column = feature.column if isinstance(feature, Aggregation) else feature.name
        if column:
            names.add(column)
    return names


def make_plan(project: str, base_version: int, current: Catalog, desired: Catalog) -> Plan:
    """The changes from ``current`` (the registry) to ``desired`` (the repo), definitions and recorded columns."""
    old, new = current.specs(), desired.specs()
    for name, columns in current.schemas.items():  # recorded columns compare as a field of their source
        if ("source", name) in old:
            old[("source", name)] = {**old[("source", name)], "columns": dict(columns)}
    for name, columns in desired.schemas.items():
        if ("source", name) in new:
            new[("source", name)] = {**new[("source", name)], "columns": dict(columns)}
    changes: list[Change] = []
    for key in sorted(set(old) | set(new)):
        kind, name = key
        if key not in old:
            changes.append(Change(kind, name, "add"))
        elif key not in new:
            invalid = (name,) if kind == "feature_view" else ()
            changes.append(Change(kind, name, "remove", invalidates=invalid))
        elif old[key] != new[key] and (kind, name, "columns") not in _unrecorded(current, old, new, key):
            fields = tuple(sorted(k for k in set(old[key]) | set(new[key]) if old[key].get(k) != new[key].get(k)))
            changes.append(Change(kind, name, "change", fields, _invalidated(kind, name, current, desired),
                                  tuple(diff_specs(old[key], new[key]))))
    unrecorded = any(current.schemas.get(name) != columns for name, columns in desired.schemas.items())
    return Plan(project, base_version, tuple(changes), desired.specs(), dict(desired.schemas), unrecorded,
                readers_see(changes, current, desired))


def readers_see(changes: list[Change], current: Catalog, desired: Catalog) -> tuple[ReadersSee, ...]:
    """For each view added or rebuilt by these changes, what online readers see until it is materialized."""
    out = []
    rebuilt = {v for c in changes for v in c.invalidates}
    added = {c.name for c in changes if c.kind == "feature_view" and c.action == "add"}
    for name in sorted(rebuilt | added):
        if name not in desired.views:
            continue  # a removed view: nothing of it is served
        new = _feature_specs(desired.views[name])
        old = _feature_specs(current.views[name]) if name in current.views and name not in added else {}
        out.append(ReadersSee(
            name,
            kept=tuple(f for f in new if f in old and old[f] == new[f]),
            previous=tuple(f for f in new if f in old and old[f] != new[f]),
            not_materialized=tuple(f for f in new if f not in old),
            dropped=tuple(f for f in old if f not in new),
        ))
    return tuple(out)


def _feature_specs(view: FeatureView) -> dict[str, Any]:
    return {f["name"]: _without_cosmetics(f) for f in view.to_spec()["features"]}


def _unrecorded(current: Catalog, old: Mapping[SpecKey, Any], new: Mapping[SpecKey, Any],
                key: SpecKey) -> set[tuple[str, str, str]]:
    """A source whose only difference is columns the registry never recorded (written by an earlier version):
    nothing to show, though apply records them."""
    a, b = dict(old[key]), dict(new[key])
    if key[0] == "source" and "columns" not in a and {k: v for k, v in b.items() if k != "columns"} == a:
        return {(key[0], key[1], "columns")}
    return set()


def diff_specs(old: Any, new: Any, path: tuple[str, ...] = ()) -> list[FieldChange]:
    """Field-by-field differences of two specs: into dicts by key, into lists of named items by name."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in [*new, *(k for k in old if k not in new)]:  # the new spec's order, then what it dropped
            if key not in old:
                out.append(FieldChange((*path, key), "add", new=new[key]))
            elif key not in new:
                out.append(FieldChange((*path, key), "remove", old=old[key]))
            else:
                out += diff_specs(old[key], new[key], (*path, key))
        return out
    old_items, new_items = _named(old), _named(new)
    if path and path[-1] in _LISTS_BY_NAME and old_items is not None and new_items is not None:
        out = []
        for name in [*new_items, *(n for n in old_items if n not in new_items)]:
            if name not in old_items:
                out.append(FieldChange((*path, name), "add", new=new_items[name]))
            elif name not in new_items:
                out.append(FieldChange((*path, name), "remove", old=old_items[name]))
            else:
                out += diff_specs(old_items[name], new_items[name], (*path, name))
        if not out:  # the same items in another order (the order of a view's columns)
            out.append(FieldChange(path, "change", list(old_items), list(new_items)))
        return out
    return [FieldChange(path, "change", old, new)]


def _named(value: Any) -> dict[str, Any] | None:
    """A list of objects that each have a name (or a view), as {name: object}; None for any other value.

    A service's projection ({"view": ..., "features": [...]}) stands for its list of features.
    """
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        return None
    for key in _ITEM_KEYS:
        if all(isinstance(item.get(key), str) for item in value):
            named = {item[key]: item["features"] if set(item) == {"view", "features"} else item for item in value}
            return named if len(named) == len(value) else None
    return None


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def show(value: Any, key: str = "") -> str:
    """A spec value as plan output prints it: a feature as ``sum(amount) over 7d``, a list comma-separated."""
    if value is None:
        return "lifetime" if key == "window" else "none"
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, list):
        return ", ".join(show(item) for item in value) if value else "(none)"
    if isinstance(value, dict):
        if "kind" in value:  # an aggregation
            text = f"{value['kind']}({value.get('column') or '*'}) over {show(value.get('window'), 'window')}"
            return text + (f", hop {value['hop']}" if value.get("hop") else "")
        if "dtype" in value:  # a snapshot field
            return str(value["dtype"])
    return json.dumps(value, sort_keys=True)


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
