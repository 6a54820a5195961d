"""The product store and search engine: SQLite with an FTS5 full-text index ranked by bm25.

A catalog is one SQLite file, built once and cached on disk (see `cache_dir`); opening a cached catalog is
a file open. Connections are opened lazily per process and never pickled: a pickled catalog is its recipe
(the arguments that build or open it), so envs holding one pickle, deepcopy and cross process boundaries.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import unicodedata
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from creditgym.cache import cache_root
from creditgym.envs.shop.catalog import GENERATOR_VERSION, Product, generate_catalog, is_test_product

#: Bump when the schema or the ranking changes.
INDEX_VERSION = 2
#: Search returns at most this many results, as WebShop's engine does.
MAX_RESULTS = 50
MAX_QUERY_TERMS = 32
# Column weights for bm25: a word in the title or product type counts far more than one in the description.
_BM25 = "bm25(products_fts, 10.0, 6.0, 2.0, 3.0, 1.0, 0.5)"
_FTS_COLUMNS = ("title", "product_type", "category", "attributes", "features", "description")
_STOPWORDS = frozenset(
    "a an and are as at be but by can for from get have i i'm im in is it its looking me my need of on or "
    "please show some that the this to under want with would you dollars dollar price priced lower less than "
    "cost costs below max budget find buy".split()
)
_TERM = re.compile(r"[a-z0-9]+")
# Keep the product cache bounded for 100k-product catalogs; a results page touches ten products.
_PRODUCT_CACHE_LIMIT = 20_000
_BUILD_BATCH = 5_000


def cache_dir() -> Path:
    """Where catalogs are cached: `creditgym.cache.cache_root()`."""
    return cache_root()


def query_terms(query: str) -> list[str]:
    """The searchable words of a query: lower-case alphanumeric runs, stop words and repeats removed."""
    # Fold accents as the catalog's text is folded ("cafe" for "café"); FTS syntax never reaches SQLite.
    folded = unicodedata.normalize("NFKD", query).encode("ascii", "ignore").decode().lower()
    terms: list[str] = []
    for term in _TERM.findall(folded):
        if term not in _STOPWORDS and term not in terms:
            terms.append(term)
    return terms[:MAX_QUERY_TERMS]


class ShopCatalog:
    """Products, optional fixed goals (WebShop instructions) and a bm25 search over them, in one SQLite file.

    Use `ShopCatalog.generated(seed, size)` or `creditgym.envs.shop.webshop.load_webshop(...)`.
    """

    def __init__(self, path: str | Path, recipe: tuple[Callable[..., ShopCatalog], tuple[Any, ...]]) -> None:
        self.path = Path(path)
        self._recipe = recipe
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._products: dict[int, Product] = {}
        self._splits: dict[tuple[str, str], np.ndarray] = {}
        self._size = -1

    @classmethod
    def generated(cls, seed: int = 0, size: int = 2000, directory: str | Path | None = None) -> ShopCatalog:
        """The procedural catalog for (seed, size), built on first use and cached on disk."""
        folder = Path(directory) if directory is not None else cache_dir()
        path = folder / "shop" / f"catalog-s{seed}-n{size}-g{GENERATOR_VERSION}-i{INDEX_VERSION}.sqlite"
        if not usable_index(path):
            build_index(path, generate_catalog(seed, size))
        return shared(path, (ShopCatalog.generated, (seed, size, None if directory is None else str(directory))))

    def __reduce__(self) -> tuple[Callable[..., ShopCatalog], tuple[Any, ...]]:
        return self._recipe

    # -- queries ----------------------------------------------------------------------------------------
    def search(self, query: str, limit: int = MAX_RESULTS) -> list[int]:
        """Row ids of the best matches for `query` (any of its words), best first; [] when it has no words."""
        terms = query_terms(query)
        if not terms:
            return []
        match = " OR ".join(f'"{term}"' for term in terms)
        rows = self._db().execute(
            f"SELECT rowid FROM products_fts WHERE products_fts MATCH ? ORDER BY {_BM25} LIMIT ?",
            (match, limit),
        )
        return [row for (row,) in rows]

    def product(self, row: int) -> Product:
        product = self._products.get(row)
        if product is None:
            found = self._db().execute("SELECT data FROM products WHERE rowid = ?", (row,)).fetchone()
            if found is None:
                raise KeyError(f"no product at row {row} in {self.path}")
            if len(self._products) >= _PRODUCT_CACHE_LIMIT:  # the oldest goes: emptying it all made every
                del self._products[next(iter(self._products))]  # env of the catalog decode afresh at once
            product = self._products[row] = Product.from_json(found[0])
        return product

    def row_of(self, product_id: str) -> int:
        found = self._db().execute("SELECT rowid FROM products WHERE id = ?", (product_id,)).fetchone()
        if found is None:
            raise KeyError(f"no product {product_id!r} in {self.path}")
        return int(found[0])

    def goal_targets(self, split: str) -> np.ndarray:
        """Row ids of products whose generated goals belong to `split` ("train" or "test")."""
        return self._split_rows("products", split)

    def instruction_rows(self, split: str) -> np.ndarray:
        """Row ids of fixed instructions (WebShop files) in `split`; empty for generated catalogs."""
        return self._split_rows("instructions", split)

    @property
    def has_instructions(self) -> bool:
        """Whether goals come from fixed instructions (WebShop files) rather than the generator."""
        return bool(len(self.instruction_rows("train")) or len(self.instruction_rows("test")))

    def instruction(self, row: int) -> dict[str, Any]:
        found = self._db().execute("SELECT data FROM instructions WHERE rowid = ?", (row,)).fetchone()
        if found is None:
            raise KeyError(f"no instruction at row {row} in {self.path}")
        return json.loads(found[0])

    def __len__(self) -> int:
        if self._size < 0:
            self._size = int(self._db().execute("SELECT count(*) FROM products").fetchone()[0])
        return self._size

    # -- internals --------------------------------------------------------------------------------------
    def _split_rows(self, table: str, split: str) -> np.ndarray:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        key = (table, split)
        if key not in self._splits:
            rows = self._db().execute(f"SELECT rowid FROM {table} WHERE test = ? ORDER BY rowid", (split == "test",))
            self._splits[key] = np.fromiter((row for (row,) in rows), dtype=np.int64)
        return self._splits[key]

    def _db(self) -> sqlite3.Connection:
        # A connection inherited through fork must not be shared with the parent, so reopen per process.
        if self._conn is None or self._pid != os.getpid():
            uri = self.path.resolve().as_uri() + "?mode=ro&immutable=1"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._pid = os.getpid()
            # Close it when the last env using this catalog lets go of it.
            weakref.finalize(self, self._conn.close)
        return self._conn


_OPEN: weakref.WeakValueDictionary[Path, ShopCatalog] = weakref.WeakValueDictionary()


def shared(path: Path, recipe: tuple[Callable[..., ShopCatalog], tuple[Any, ...]]) -> ShopCatalog:
    """One catalog object per file and process, so envs (and their copies) share its product cache."""
    key = path.resolve()
    catalog = _OPEN.get(key)
    if catalog is None:
        catalog = _OPEN[key] = ShopCatalog(key, recipe)
    return catalog


def build_index(path: Path, products: Iterable[Product], instructions: Iterable[dict[str, Any]] = ()) -> None:
    """Write products (and fixed instructions, each with a "product_id") to a new SQLite file at `path`.

    The file is written under a temporary name and moved into place, so concurrent builders never see a
    half-written catalog.
    """
    # A name unique to this builder (process and thread), removed if the build fails.
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(tmp)
    except (OSError, sqlite3.Error) as error:
        raise OSError(f"cannot write the shop catalog cache {path} ({error}); set $CREDITGYM_CACHE to a writable "
                      "folder") from error
    try:
        conn.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
            "CREATE TABLE products (rowid INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, test INTEGER, data TEXT);"
            "CREATE TABLE instructions (rowid INTEGER PRIMARY KEY, test INTEGER, data TEXT);"
            f"CREATE VIRTUAL TABLE products_fts USING fts5({', '.join(_FTS_COLUMNS)}, content='',"
            " tokenize='porter unicode61 remove_diacritics 2');"
        )
        # Inserted in batches so a 100k-product catalog never holds all its rows (JSON and text) at once.
        batch: list[tuple[Any, ...]] = []
        for row, product in enumerate(products, start=1):
            batch.append((row, product.id, is_test_product(product.id), product.to_json(), *_fts_fields(product)))
            if len(batch) == _BUILD_BATCH:
                _insert(conn, batch)
        _insert(conn, batch)
        conn.executemany(
            "INSERT INTO instructions (test, data) VALUES (?, ?)",
            [(is_test_product(ins["product_id"]), json.dumps(ins)) for ins in instructions],
        )
        conn.execute("INSERT INTO products_fts (products_fts) VALUES ('optimize')")
        conn.commit()
        conn.close()
        os.replace(tmp, path)
    except BaseException:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise


def usable_index(path: Path) -> bool:
    """Whether `path` holds a complete catalog; a damaged one is deleted (with a warning), to be rebuilt."""
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            for table in ("products", "instructions", "products_fts"):
                conn.execute(f"SELECT rowid FROM {table} LIMIT 1").fetchall()
        finally:
            conn.close()
        return True
    except sqlite3.Error as error:
        warnings.warn(f"the shop catalog cache {path} is damaged ({error}); rebuilding it", stacklevel=3)
        path.unlink(missing_ok=True)
        return False


def _insert(conn: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
    """Insert rows (rowid, id, test, json, *fts fields) into both tables, then empty `batch`."""
    conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", [r[:4] for r in batch])
    conn.executemany(
        f"INSERT INTO products_fts (rowid, {', '.join(_FTS_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(r[0], *r[4:]) for r in batch],
    )
    batch.clear()


def _fts_fields(product: Product) -> tuple[str, ...]:
    return (
        product.title, product.product_type, product.category, " ".join(product.attributes),
        " ".join(product.features), product.description,
    )
