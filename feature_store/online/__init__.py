"""The online store: per-entity tiles and snapshot rows, read back at serving time."""
