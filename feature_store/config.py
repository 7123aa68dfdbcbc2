"""feature_store.yaml: typed configuration, with backends chosen by a ``type`` discriminator."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from feature_store.errors import ConfigError, validation_problems
from feature_store.identifiers import validate_identifier

CONFIG_FILE = "feature_store.yaml"
REGISTRY_ENV = "FEATURE_STORE_REGISTRY"
API_KEYS_ENV = "FEATURE_STORE_API_KEYS"
MIN_API_KEY_LENGTH = 16


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FilePushLogConfig(_Config):
    """The embedded push log: JSON-lines files on this host's disk (offline/push_log/files.py)."""

    type: Literal["file"] = "file"
    path: str | None = None  # default: push_log/ beside the offline database
    rotate_seconds: float = Field(60.0, gt=0)  # each process starts a new file this often; older ones get compacted
    delete_grace_seconds: float = Field(900.0, ge=0)  # files compaction replaced stay readable this long


class PostgresPushLogConfig(_Config):
    """A push log that several hosts share: rows in a PostgreSQL table (offline/push_log/postgres.py)."""

    type: Literal["postgres"]
    url: str  # postgresql://user@host:5432/db
    table: str = "fs_push_log"
    # Compacted parquet parts: storage every host that reads training sets can reach (default beside the offline db)
    compacted_path: str | None = None
    delete_grace_seconds: float = Field(900.0, ge=0)
    # Pushes arriving within this window of each other share one commit (group commit); 0 commits at once
    commit_delay_ms: float = Field(0.0, ge=0, le=100)

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):  # it is put into SQL: a plain name only
            raise ValueError("push_log.table must be a plain name: letters, digits, underscores (e.g. 'fs_push_log')")
        return value


def _type_or(default: str) -> Callable[[Any], str]:
    """A discriminator that reads ``type`` and falls back to the default backend when it is left out."""
    def tag(value: Any) -> str:
        found = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
        return str(found)
    return tag


PushLogConfig = Annotated[Annotated[FilePushLogConfig, Tag("file")] | Annotated[PostgresPushLogConfig, Tag("postgres")],
                          Discriminator(_type_or("file"), custom_error_type="backend_type",
                                        custom_error_message="type must be 'file' or 'postgres'")]


class DuckDBOfflineConfig(_Config):
    type: Literal["duckdb"] = "duckdb"
    path: str = "data/offline.duckdb"
    memory_limit: str | None = None  # e.g. "4GB"; DuckDB spills to disk beyond it
    threads: int | None = None
    push_fsync: bool = True  # pushed rows reach the disk (fdatasync) before a push is acknowledged
    push_log: PushLogConfig = FilePushLogConfig()


class SparkOfflineConfig(_Config):
    """Apache Spark (offline/spark): ``master`` is anything Spark takes (``local[N]``, ``spark://host:7077``,
    ``yarn``, ``k8s://...``); ``conf`` goes to the session builder as it is."""

    type: Literal["spark"]
    master: str = "local[2]"
    conf: dict[str, str] = Field(default_factory=dict)
    warehouse: str = "data/spark"  # a local path or any URI Spark's Hadoop layer writes (hdfs://, s3a://)
    app_name: str = "feature-store"
    push_fsync: bool = True
    push_log: PushLogConfig = FilePushLogConfig()


OfflineConfig = Annotated[Annotated[DuckDBOfflineConfig, Tag("duckdb")] | Annotated[SparkOfflineConfig, Tag("spark")],
                          Discriminator(_type_or("duckdb"), custom_error_type="engine_type",
                                        custom_error_message="type must be 'duckdb' or 'spark'")]


def offline_data_dir(config: DuckDBOfflineConfig | SparkOfflineConfig, repo: Path) -> Path:
    """The local folder the offline side keeps its files beside (push log, served log): the DuckDB database's, or
    the Spark warehouse's parent (a remote warehouse: the repo's data/ folder)."""
    if isinstance(config, SparkOfflineConfig):
        return resolve_path(repo, config.warehouse).parent if "://" not in config.warehouse else repo / "data"
    return resolve_path(repo, config.path).parent


def push_log_dir(config: DuckDBOfflineConfig | SparkOfflineConfig, repo: Path) -> Path:
    """Where the local push log keeps its files (and any push log its compacted parts): beside the offline
    database unless configured."""
    log = config.push_log
    path = log.path if isinstance(log, FilePushLogConfig) else log.compacted_path
    if path is not None:
        return resolve_path(repo, path)
    return offline_data_dir(config, repo) / "push_log"


def served_log_dir(config: RepoConfig, repo: Path) -> Path:
    """Where served feature values are logged: a folder per project, beside the offline database."""
    if config.monitoring.path is not None:
        return resolve_path(repo, config.monitoring.path) / config.project
    return offline_data_dir(config.offline_store, repo) / "served_log" / config.project


class SqliteOnlineConfig(_Config):
    type: Literal["sqlite"] = "sqlite"
    path: str = "data/online.db"


class RedisOnlineConfig(_Config):
    type: Literal["redis"] = "redis"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "fs"
    timeout_seconds: float = 1.0
    # A Redis Cluster: ``url`` names any of its nodes (several, comma-separated, in case one is down).
    cluster: bool = False

    @field_validator("key_prefix")
    @classmethod
    def _check_key_prefix(cls, prefix: str) -> str:
        if "\x00" in prefix:  # online/keys.py separates the parts of a key with NUL
            raise ValueError("key_prefix must not contain the NUL character; use letters, digits, ':', '-' or '_'")
        return prefix

    @model_validator(mode="after")
    def _check_cluster(self) -> RedisOnlineConfig:
        if self.cluster:
            # A hash tag in the prefix would put every key of the store in one slot: one node.
            if "{" in self.key_prefix or "}" in self.key_prefix:
                raise ValueError("with cluster: true, key_prefix must not contain '{' or '}' (Redis Cluster reads "
                                 "them as a hash tag, which would put every key in one slot)")
            for url in cluster_urls(self.url):
                if url.partition("://")[2].partition("/")[2].strip("/") not in ("", "0"):
                    raise ValueError(f"a Redis Cluster has database 0 only: drop the database from {url!r}")
        elif "," in self.url:
            raise ValueError("several comma-separated URLs name the nodes of a Redis Cluster: add cluster: true")
        return self


def cluster_urls(url: str) -> list[str]:
    """The node URLs of ``url`` (``redis://a:7000,b:7001`` or ``redis://a:7000,redis://b:7001``): each one gets the
    first's scheme and credentials when it has none."""
    parts = [part.strip() for part in url.split(",") if part.strip()]
    if not parts:
        return [url]
    scheme, _, rest = parts[0].partition("://")
    credentials = rest.rpartition("@")[0] + "@" if "@" in rest.partition("/")[0] else ""
    return [parts[0], *(part if "://" in part else f"{scheme}://{credentials}{part}" for part in parts[1:])]


OnlineConfig = Annotated[SqliteOnlineConfig | RedisOnlineConfig, Field(discriminator="type")]


Scope = Literal["read", "write"]


class ApiKeyConfig(_Config):
    """One key of the feature server: ``Authorization: Bearer <key>`` grants its scopes."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    key: str = Field(repr=False)  # never in reprs, logs or error messages
    scopes: tuple[Scope, ...] = ("read",)
    name: str = ""  # a label for logs; the key itself is never logged

    @field_validator("key")
    @classmethod
    def _check_key(cls, key: str) -> str:
        # An unset ${VAR} is left as is by the expansion: a key anyone can read in the file is no key.
        if re.search(r"\$\{?[A-Za-z_]", key):
            raise ValueError("the key refers to an environment variable that is not set")
        if len(key) < MIN_API_KEY_LENGTH:
            raise ValueError(
                f"API keys need at least {MIN_API_KEY_LENGTH} characters; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return key


class ServerConfig(_Config):
    """The ``server:`` section: settings of ``feature-store serve``."""

    api_keys: tuple[ApiKeyConfig, ...] = ()  # empty: no authentication
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_entities: int = Field(10_000, gt=0)  # entity rows per get-online-features request
    registry_refresh_seconds: float = Field(10.0, gt=0)
    # A request must arrive whole (headers and body) within this time, from its connection's opening or its
    # first byte: slow clients cannot hold connections and memory (408, connection closed).
    body_timeout_seconds: float = Field(5.0, gt=0)
    # Connections (and requests in progress) per worker process; beyond it uvicorn answers 503 at once.
    max_connections: int = Field(1000, gt=0)
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers at all
    allowed_hosts: tuple[str, ...] = ()  # Host headers accepted; empty: loopback names when bound to loopback
    # Online reads run on the event loop (a thread hop costs as much as the read); True moves them to threads,
    # so that a Redis that hangs (rather than refuses) stalls one request instead of the whole worker.
    threadpool: bool = False


class PushConfig(_Config):
    # How long the online store keeps a push id (idempotency key) after its first attempt: a retry within it
    # counts once; after it, the same id is a new push online (training sets still count its rows once).
    idempotency_retention_seconds: float = Field(24 * 3600.0, ge=60)


class MonitoringConfig(_Config):
    """The ``monitoring:`` section: logging of served feature values (docs/monitoring.md)."""

    log_served: bool = False  # the SDK's and the feature server's online reads are logged
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)  # the share of reads logged (each read whole, or not at all)
    queue_size: int = Field(10_000, gt=0)  # reads waiting for the writer; beyond it a read is dropped, not delayed
    flush_seconds: float = Field(5.0, gt=0)  # how often the writer thread writes a parquet file
    path: str | None = None  # default: served_log/ beside the offline database


class RepoConfig(_Config):
    project: str
    registry: str = "data/registry.db"
    offline_store: OfflineConfig = DuckDBOfflineConfig()
    online_store: OnlineConfig = SqliteOnlineConfig()
    server: ServerConfig = ServerConfig()
    push: PushConfig = PushConfig()
    monitoring: MonitoringConfig = MonitoringConfig()

    def registry_url(self, repo: Path) -> str:
        """A SQLAlchemy URL; a plain path is a SQLite file relative to the repo."""
        if "://" in self.registry:
            return self.registry
        return f"sqlite:///{resolve_path(repo, self.registry)}"


def resolve_path(repo: Path, path: str) -> Path:
    candidate = Path(os.path.expanduser(path))
    return candidate if candidate.is_absolute() else (repo / candidate)


def load_config(repo: Path) -> RepoConfig:
    path = repo / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"no {CONFIG_FILE} in {repo}: run 'feature-store init' there, or pass the repo with --repo PATH.",
            path=str(path),
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", path=str(path)) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of keys (project, registry, ...).", path=str(path))
    raw = dict(_expand_env(raw))  # type: ignore[call-overload]
    if os.environ.get(REGISTRY_ENV):  # deployments point the same repo at their registry without editing it
        raw["registry"] = os.environ[REGISTRY_ENV]
    if os.environ.get(API_KEYS_ENV):  # and give the server its keys without writing them into the repo
        server = raw.get("server") if isinstance(raw.get("server"), dict) else {}
        raw["server"] = {**server, "api_keys": api_keys_from_env(os.environ[API_KEYS_ENV])}
    try:
        config = RepoConfig.model_validate(raw)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError(f"{path}: {problems}", path=str(path)) from exc
    validate_identifier(config.project, f"project in {path}")
    return config


def api_keys_from_env(value: str) -> list[dict[str, object]]:
    """``KEY1:read;KEY2:read,write`` (scopes default to read) as api_keys entries."""
    keys: list[dict[str, object]] = []
    for number, entry in enumerate(e.strip() for e in value.split(";")):
        if not entry:
            continue
        key, colon, scopes = entry.rpartition(":")
        if not colon:
            key, scopes = entry, "read"
        names = [s.strip() for s in scopes.split(",") if s.strip()]
        keys.append({"key": key.strip(), "scopes": names, "name": f"{API_KEYS_ENV}[{number}]"})
    return keys


def _expand_env(value: object) -> object:
    """${VAR} in string values, so secrets (passwords in URLs) can stay out of the file."""
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value
