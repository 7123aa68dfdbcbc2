"""The DuckDB offline engine: the only package that imports duckdb."""
