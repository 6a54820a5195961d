"""Shop: a WebShop-like shopping env over an offline catalog with SQLite FTS5 (bm25) search."""
