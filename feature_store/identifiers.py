"""Names that reach SQL: validated once at definition time, always quoted when used."""

from __future__ import annotations

import re

from feature_store.errors import InvalidIdentifierError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def validate_identifier(value: str, what: str) -> str:
    """Return value when it is a plain identifier (letters, digits, underscore; not starting with a digit)."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise InvalidIdentifierError(
            f"{what} {value!r} is not a valid name: use letters, digits and underscores, starting with a "
            "letter or underscore, at most 63 characters (e.g. 'customer_id').",
            name=str(value),
        )
    if value.startswith("__"):
        raise InvalidIdentifierError(
            f"{what} {value!r}: names starting with '__' are reserved for the feature store's own columns.",
            name=value,
        )
    return value


def quote(name: str) -> str:
    """A double-quoted SQL identifier. Names are validated earlier; quoting is the second fence."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A single-quoted SQL string literal, for the few places DuckDB takes no bound parameter (paths)."""
    return "'" + value.replace("'", "''") + "'"
