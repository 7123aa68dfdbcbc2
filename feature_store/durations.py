"""Windows and hops: parsing "90d"-style strings, naming, and the default hop rule."""

from __future__ import annotations

import re
from datetime import timedelta

from feature_store.errors import DefinitionError

_UNITS: dict[str, timedelta] = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "us": timedelta(microseconds=1),
}
_DURATION = re.compile(r"^\s*(\d+)\s*(us|[wdhms])\s*$")

# Largest first: the default hop is the largest of these that is at most W/24.
HOP_LADDER: tuple[timedelta, ...] = (
    timedelta(days=1),
    timedelta(hours=1),
    timedelta(minutes=5),
    timedelta(minutes=1),
    timedelta(seconds=1),
)
UNBOUNDED_DEFAULT_HOP = timedelta(days=1)

MICROS_PER_SECOND = 1_000_000


def parse_duration(value: object, what: str) -> timedelta:
    """A positive timedelta from a timedelta or a string such as "90d", "12h", "30m", "45s", "2w"."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise DefinitionError(
                f"{what}: cannot read duration {value!r}; write a number and a unit, e.g. '90d', '12h', "
                "'30m', '45s' or '2w', or pass a datetime.timedelta."
            )
        result = int(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise DefinitionError(f"{what}: expected a timedelta or a string like '7d', got {value!r}.")
    if result <= timedelta(0):
        shown = repr(value) if isinstance(value, str) else repr(result)
        raise DefinitionError(f"{what}: must be positive, got {shown}; use e.g. '7d' or timedelta(days=7).")
    if result % timedelta(microseconds=1):
        raise DefinitionError(f"{what}: finer than a microsecond is not supported.")
    return result


def format_duration(value: timedelta | None) -> str:
    """The shortest exact spelling: 7d, 36h, 90m, 45s; 'lifetime' for an unbounded window."""
    if value is None:
        return "lifetime"
    micros = to_micros(value)
    for unit in ("d", "h", "m", "s"):
        size = to_micros(_UNITS[unit])
        if micros % size == 0 and micros != 0:
            return f"{micros // size}{unit}"
    return f"{micros}us"


def default_hop(window: timedelta | None) -> timedelta:
    """The largest hop on the ladder that is at most window/24 (1 s below 24 s; 1 day when unbounded)."""
    if window is None:
        return UNBOUNDED_DEFAULT_HOP
    limit = window / 24
    for hop in HOP_LADDER:
        if hop <= limit:
            return hop
    return HOP_LADDER[-1]


def to_micros(value: timedelta) -> int:
    return (value.days * 86_400 + value.seconds) * MICROS_PER_SECOND + value.microseconds
