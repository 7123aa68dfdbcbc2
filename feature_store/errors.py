"""The one error hierarchy of the feature store.

Every error a user can cause derives from :class:`FeatureStoreError` and carries the HTTP
status a server should answer with, so the CLI, the SDK and the feature server report the
same failure the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, ClassVar


class FeatureStoreError(Exception):
    """Base class: a message that says what failed, on which object, and how to fix it."""

    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": self.message, "details": self.details}


# --- definitions and repo -------------------------------------------------------------------


class DefinitionError(FeatureStoreError):
    """A feature definition is invalid on its own (bad name, window, hop, mixed feature kinds)."""

    http_status = 422


class InvalidIdentifierError(DefinitionError):
    """A name that would reach SQL is not a plain identifier."""


class ConfigError(FeatureStoreError):
    """feature_store.yaml is missing or invalid."""

    http_status = 500


class RepoLoadError(FeatureStoreError):
    """A Python file of the feature repo could not be imported."""

    http_status = 422


class DuplicateObjectError(RepoLoadError):
    """Two different definitions share one name."""


class UnknownReferenceError(DefinitionError):
    """A definition refers to an entity, source or view that does not exist."""

    http_status = 404


# --- sources and data -----------------------------------------------------------------------


class SourceError(FeatureStoreError):
    """A data source cannot be read or does not have the columns a definition needs."""

    http_status = 422


class SourceNotFoundError(SourceError):
    """A file source's path matches no file."""


class SchemaError(SourceError):
    """A column is missing or has a type the definition cannot use."""


class SchemaNotRecordedError(SourceError):
    """The registry holds no column types for a source (recorded at apply since this version)."""

    http_status = 503


class EntityDataFrameError(FeatureStoreError):
    """The entity rows given to get_historical_features are unusable."""

    http_status = 400


class MissingDependencyError(FeatureStoreError):
    """A feature needs an optional package that is not installed (the message names the extra to install)."""

    http_status = 500


# --- features -------------------------------------------------------------------------------


class FeatureNotFoundError(FeatureStoreError):
    """A feature reference names no registered view or feature."""

    http_status = 404


class FeatureNameCollisionError(FeatureStoreError):
    """Two requested features would produce the same output column."""

    http_status = 400


# --- registry -------------------------------------------------------------------------------


class RegistryError(FeatureStoreError):
    """The registry database cannot be read or written."""

    http_status = 503


class ConcurrentApplyError(RegistryError):
    """Another apply changed the registry since this plan was made."""

    http_status = 409


class NotAppliedError(FeatureStoreError):
    """The registry has no definitions for this project yet."""

    http_status = 404


# --- stores ---------------------------------------------------------------------------------


class OfflineStoreError(FeatureStoreError):
    """The offline engine failed on a query the store generated."""

    http_status = 500


class OnlineStoreUnavailable(FeatureStoreError):
    """The online store cannot be reached."""

    http_status = 503


class OnlineStoreConflict(OnlineStoreUnavailable):
    """An atomic update kept losing to concurrent writers of the same entities; retrying later succeeds."""

    http_status = 503


# --- push -----------------------------------------------------------------------------------


class PushSourceNotFoundError(FeatureStoreError):
    """A push names no registered PushSource."""

    http_status = 404


class PushDataError(FeatureStoreError):
    """Pushed rows do not fit the push source's columns (missing, unknown or mistyped values)."""

    http_status = 422


class PushIdConflictError(FeatureStoreError):
    """A push reuses the idempotency key (push id) of an earlier push with other rows, or another ``to``."""

    http_status = 409


class PushLogUnavailable(FeatureStoreError):
    """The push log (e.g. its PostgreSQL database) cannot be reached: nothing of the push was acknowledged."""

    http_status = 503


class PushStalledError(FeatureStoreError):
    """A push with a push id stalled past its key's lease before reaching the push log; nothing was logged."""

    http_status = 503


def validation_problems(exc: Any) -> str:
    """'field: message; ...' from a pydantic ValidationError."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())


def closest(name: str, candidates: Iterable[str]) -> str:
    """' Did you mean X?' for the nearest candidate, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" Did you mean {matches[0]!r}?" if matches else ""


# --- feature server -------------------------------------------------------------------------


class AuthenticationError(FeatureStoreError):
    """A feature server request has no API key, or a key the server does not know."""

    http_status = 401


class PermissionDeniedError(FeatureStoreError):
    """The request's API key lacks the scope (read, write) the endpoint needs."""

    http_status = 403


class RouteNotFoundError(FeatureStoreError):
    """No feature server endpoint has this path."""

    http_status = 404


class MethodNotAllowedError(FeatureStoreError):
    """The endpoint exists but not for this HTTP method."""

    http_status = 405


class RequestTooLargeError(FeatureStoreError):
    """A request body, or its number of entities, exceeds the server's limits."""

    http_status = 413


class RequestTimeoutError(FeatureStoreError):
    """A request's headers and body did not arrive whole within server.body_timeout_seconds."""

    http_status = 408


class ClientDisconnectedError(FeatureStoreError):
    """The client closed the connection before its request body arrived; nobody reads the answer (nginx's 499,
    for the metrics)."""

    http_status = 499


class CrossSiteRequestError(FeatureStoreError):
    """A browser sent a request with side effects (a POST) from a page of another origin than the server's own
    and those of server.cors_origins: refused, so that no web page can act through its visitors' browsers."""

    http_status = 403


class InvalidRequestError(FeatureStoreError):
    """A request body is not valid JSON or does not match the endpoint's schema."""

    http_status = 422


class OfflineStoreBusyError(FeatureStoreError):
    """Another process (a materialize, another server worker) holds the offline DuckDB file right now."""

    http_status = 503


class ServerNotReadyError(FeatureStoreError):
    """The feature server cannot serve yet: no registry loaded, or the online store is unreachable."""

    http_status = 503


class InsecureServerError(ConfigError):
    """``feature-store serve`` was asked to listen beyond loopback without API keys (and without --insecure)."""


class UntrustedHostError(FeatureStoreError):
    """The request's Host header is not one the server accepts (protection against DNS rebinding)."""

    http_status = 400


# --- monitoring -------------------------------------------------------------------------------


class MonitoringError(FeatureStoreError):
    """A monitoring input cannot be used: an unreadable table, a malformed time range, nothing to compare."""

    http_status = 422


class ProfileNotFoundError(MonitoringError):
    """No profile of that name is saved in the project's registry."""

    http_status = 404
