"""The offline store: point-in-time-correct training sets and per-hop tiles, computed in DuckDB."""
