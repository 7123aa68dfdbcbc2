"""feature_store.yaml: typed configuration, with backends chosen by a ``type`` discriminator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from feature_store.errors import ConfigError, validation_problems
from feature_store.identifiers import validate_identifier

CONFIG_FILE = "feature_store.yaml"
REGISTRY_ENV = "FEATURE_STORE_REGISTRY"


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DuckDBOfflineConfig(_Config):
    type: Literal["duckdb"] = "duckdb"
    path: str = "data/offline.duckdb"
    memory_limit: str | None = None  # e.g. "4GB"; DuckDB spills to disk beyond it
    threads: int | None = None


class SqliteOnlineConfig(_Config):
    type: Literal["sqlite"] = "sqlite"
    path: str = "data/online.db"


class RedisOnlineConfig(_Config):
    type: Literal["redis"] = "redis"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "fs"
    timeout_seconds: float = 1.0


OnlineConfig = Annotated[SqliteOnlineConfig | RedisOnlineConfig, Field(discriminator="type")]


class RepoConfig(_Config):
    project: str
    registry: str = "data/registry.db"
    offline_store: DuckDBOfflineConfig = DuckDBOfflineConfig()
    online_store: OnlineConfig = SqliteOnlineConfig()

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
    try:
        config = RepoConfig.model_validate(raw)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError(f"{path}: {problems}", path=str(path)) from exc
    validate_identifier(config.project, f"project in {path}")
    return config


def _expand_env(value: object) -> object:
    """${VAR} in string values, so secrets (passwords in URLs) can stay out of the file."""
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value
