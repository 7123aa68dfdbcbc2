"""The served-value log's spool: what the writer thread of a serving process writes, and how it becomes Arrow.

A serving process does as little as it can: a logged read becomes one JSON line, ``[kind, request_us, shape,
watermarks, body]`` (the read encodes only its body; the writer thread joins the parts), appended
zstd-compressed (a frame per append) to a file renamed into view every ``flush_seconds``. ``kind`` "F" is the
feature server's own response body (Feast's wire format, already encoded for the client: logged as it is, no
second encoding); "C" is an SDK read's ``[entity columns, values, statuses]``, encoded by orjson in C. ``shape``
says which features were read under which output names, and how many entity columns lead the body; both are
encoded once per request shape and per serving state, not per read.

Turning lines into typed columns (the costly part, in Python) happens where the log is read (``served_features``,
``monitor``) or compacted (``feature-store compact``), not on the serving host's read path: a spool file is then
replaced by a parquet file of the same name, with the columns documented in served_log.py.
"""

from __future__ import annotations

import decimal
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from feature_store.definitions import FeatureService

if TYPE_CHECKING:
    import pyarrow as pa

    from feature_store.online.service import State

SPOOL_SUFFIX = ".jsonl.zst"
REQUEST_TIME = "request_time"
REQUEST_ID = "_fs_request"
WATERMARK_PREFIX = "_fs_watermark__"  # + view: the view's online watermark (epoch us) when the read was served
STATUS_SUFFIX = "__status"
FEAST_BODY, COLUMNS = b"F", b"C"
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_ANY_KEYS = _OPTIONS | orjson.OPT_NON_STR_KEYS  # a third slower: only where a value is a dict with other keys
_CACHE_LIMIT = 1024  # request shapes remembered (clients may send any feature lists)


def _default(value: Any) -> Any:
    """What orjson does not encode natively: decimals, sets, and anything else as its text (NaN and
    infinities it already writes as null)."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def dumps(content: Any) -> bytes:
    """JSON as the feature server writes its bodies (server/encode.py uses this one)."""
    try:
        return orjson.dumps(content, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return orjson.dumps(content, default=_default, option=_ANY_KEYS)


def feature_pairs(features: Any) -> list[tuple[str, str]]:
    """(view, feature) of each requested feature, as the read resolved them (references were checked)."""
    if isinstance(features, FeatureService):
        return [(p.view, f) for p in features.projections for f in p.features]
    refs = [features] if isinstance(features, str) else list(features)
    return [(ref.split(":", 1)[0], ref.split(":", 1)[1]) for ref in refs]


class LineEncoder:
    """Encodes queued reads as spool lines; remembers each request shape's and serving state's encoding."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[Any, ...], bytes] = {}
        self._states: dict[int, tuple[Any, bytes]] = {}  # id(state): (state, its watermarks as JSON)
        self._last: tuple[Any, bool, int, bytes] = (None, False, -1, b"")

    def parts(self, kind: bytes, features: Any, full: bool, keys: int, payload: Any,
              state: State | None) -> tuple[bytes, bytes, bytes]:
        """What the read path encodes of a read: its shape and watermarks (cached) and its body. The writer
        thread joins them into lines (served_log.py), so a read copies nothing into a line."""
        if kind == FEAST_BODY:
            return self._shape(features, full, keys), self._marks(state), payload
        body = dumps([payload.entity_columns, payload.values, payload.statuses])
        return self._shape(features, full, keys), self._marks(state), body

    def _shape(self, features: Any, full: bool, keys: int) -> bytes:
        last = self._last  # a client sending the same list object again: no tuple to build and hash
        if last[0] is features and last[1] == full and last[2] == keys:
            return last[3]
        what = ("service", features.name) if isinstance(features, FeatureService) else \
            (features,) if isinstance(features, str) else tuple(features)
        cache_key = (what, full, keys)
        shape = self._shapes.get(cache_key)
        if shape is None:
            pairs = [[view, feature, f"{view}__{feature}" if full else feature]
                     for view, feature in feature_pairs(features)]
            if len(self._shapes) >= _CACHE_LIMIT:
                self._shapes.clear()
            shape = self._shapes[cache_key] = orjson.dumps({"pairs": pairs, "keys": keys})
        self._last = (features, full, keys, shape)
        return shape

    def _marks(self, state: State | None) -> bytes:
        entry = self._states.get(id(state))
        if entry is None or entry[0] is not state:  # a new state (or a reused id): encode its watermarks
            marks = {} if state is None else {view: g.watermark for view, g in state.live.items()}
            if len(self._states) >= _CACHE_LIMIT:
                self._states.clear()
            entry = self._states[id(state)] = (state, orjson.dumps(marks))
        return entry[1]


def spool_table(path: Path) -> pa.Table:
    """A spool file's reads as one table of the log's columns (reads of other features: other columns)."""
    import pyarrow as pa

    with pa.input_stream(str(path), compression="zstd") as source:
        data = source.read()
    base = zlib.crc32(path.name.encode()) << 24  # read ids unique across files: rows of one read stay together
    groups: dict[bytes, list[tuple[int, list[Any]]]] = {}
    for number, raw in enumerate(data.splitlines()):
        if raw:
            line = orjson.loads(raw)
            groups.setdefault(orjson.dumps(line[2]), []).append((base + number, line))
    tables = [_table(orjson.loads(shape), reads) for shape, reads in groups.items()]
    if not tables:
        return pa.table({REQUEST_TIME: pa.array([], pa.timestamp("us", tz="UTC"))})
    return pa.concat_tables(tables, promote_options="permissive")


def _table(shape: dict[str, Any], reads: list[tuple[int, list[Any]]]) -> pa.Table:
    import pyarrow as pa

    keys, pairs = int(shape["keys"]), shape["pairs"]
    parsed = [_parts(line, keys) for _, line in reads]
    sizes = [len(next(iter(entities.values()), [])) for entities, _, _ in parsed]
    columns: dict[str, list[Any]] = {
        REQUEST_TIME: [line[1] for (_, line), n in zip(reads, sizes, strict=True) for _ in range(n)],
        REQUEST_ID: [read_id for (read_id, _), n in zip(reads, sizes, strict=True) for _ in range(n)],
    }
    for key in (parsed[0][0] if parsed else {}):
        columns[key] = [v for entities, _, _ in parsed for v in entities.get(key, [])]
    views: set[str] = set()
    for view, feature, output in pairs:
        if parsed and output not in parsed[0][1]:
            continue
        columns[f"{view}__{feature}"] = [v for _, values, _ in parsed for v in values[output]]
        columns[f"{view}__{feature}{STATUS_SUFFIX}"] = [s for _, _, statuses in parsed for s in statuses[output]]
        views.add(view)
    for view in sorted(views):
        columns[f"{WATERMARK_PREFIX}{view}"] = [line[3].get(view) for (_, line), n in zip(reads, sizes, strict=True)
                                                for _ in range(n)]
    return pa.table({name: _array(name, values) for name, values in columns.items()})


def _parts(line: list[Any], keys: int) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, list[Any]]]:
    """(entity columns, values, statuses) of one logged read, from either kind of line."""
    body = line[4]
    if line[0] == "C":  # COLUMNS
        return body[0], body[1], body[2]
    names, results = body["metadata"]["feature_names"], body["results"]
    entities = {name: result["values"] for name, result in zip(names[:keys], results[:keys], strict=True)}
    values = {name: result["values"] for name, result in zip(names[keys:], results[keys:], strict=True)}
    statuses = {name: result["statuses"] for name, result in zip(names[keys:], results[keys:], strict=True)}
    return entities, values, statuses


def _array(name: str, values: list[Any]) -> pa.Array:
    import pyarrow as pa

    if name == REQUEST_TIME:
        return pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    if name.startswith(WATERMARK_PREFIX) or name == REQUEST_ID:
        return pa.array(values, pa.int64())
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds in one column (a key sent as int and as text)
        return pa.array([None if v is None else str(v) for v in values], pa.string())
