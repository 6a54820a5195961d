"""The ToolUse world: a currency table, unit tables, and seeded store inventories in SQLite.

A world is a pure function of its index: `World.get(i)` builds it (stores, items, prices in each store's
currency, stock) into an in-memory SQLite database. Envs refer to worlds by index, so they pickle without the
database and a copy in another process rebuilds the same world. Each process keeps the `MAX_CACHED_WORLDS`
most recently used worlds (about 80 KB each); an evicted world is rebuilt, identically, in about 2 ms.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Bump when world generation changes.
WORLD_VERSION = 1
STORES_PER_WORLD = 5
ITEMS_PER_STORE = 24
MAX_QUERY_ROWS = 20
#: Worlds kept per process; without a bound, 10,000 worlds took about 0.8 GB in every vector-env worker.
MAX_CACHED_WORLDS = 256

#: Units of currency per US dollar (a fixed table; the tasks only need it to be consistent).
RATES: dict[str, float] = {
    "USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0, "NOK": 10.8, "SEK": 10.6, "CHF": 0.9, "CAD": 1.36,
    "AUD": 1.52, "PEN": 3.75, "INR": 83.2, "KRW": 1340.0, "EGP": 47.5, "BRL": 5.05, "MXN": 16.9,
}
CITIES: dict[str, str] = {
    "Oslo": "NOK", "Lima": "PEN", "Tokyo": "JPY", "Berlin": "EUR", "Toronto": "CAD", "Sydney": "AUD",
    "Cairo": "EGP", "Mumbai": "INR", "Seoul": "KRW", "Madrid": "EUR", "London": "GBP", "Stockholm": "SEK",
    "Zurich": "CHF", "Mexico City": "MXN", "Sao Paulo": "BRL",
}
#: Item -> (typical price in USD, plural).
ITEMS: dict[str, tuple[float, str]] = {
    "mug": (12.0, "mugs"), "lamp": (35.0, "lamps"), "backpack": (48.0, "backpacks"),
    "notebook": (6.0, "notebooks"), "umbrella": (18.0, "umbrellas"), "water bottle": (15.0, "water bottles"),
    "scarf": (22.0, "scarves"), "kettle": (30.0, "kettles"), "chair": (85.0, "chairs"),
    "speaker": (55.0, "speakers"), "candle": (9.0, "candles"), "towel": (14.0, "towels"),
    "pillow": (20.0, "pillows"), "jacket": (90.0, "jackets"), "clock": (25.0, "clocks"),
}
COLORS: tuple[str, ...] = ("red", "blue", "green", "black", "white", "yellow", "grey", "orange")

#: Unit -> (dimension, size in the dimension's base unit). Temperatures are handled separately.
UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001), "cm": ("length", 0.01), "m": ("length", 1.0), "km": ("length", 1000.0),
    "in": ("length", 0.0254), "ft": ("length", 0.3048), "yd": ("length", 0.9144), "mi": ("length", 1609.344),
    "mg": ("mass", 1e-6), "g": ("mass", 0.001), "kg": ("mass", 1.0), "t": ("mass", 1000.0),
    "oz": ("mass", 0.028349523125), "lb": ("mass", 0.45359237),
    "ml": ("volume", 0.001), "l": ("volume", 1.0), "cup": ("volume", 0.2365882365),
    "fl oz": ("volume", 0.0295735295625), "gal": ("volume", 3.785411784),
    "c": ("temperature", 1.0), "f": ("temperature", 1.0), "k": ("temperature", 1.0),
}
UNIT_ALIASES: dict[str, str] = {
    "millimeter": "mm", "centimeter": "cm", "meter": "m", "metre": "m", "kilometer": "km", "kilometre": "km",
    "inch": "in", "inches": "in", "foot": "ft", "feet": "ft", "yard": "yd", "mile": "mi", "miles": "mi",
    "milligram": "mg", "gram": "g", "kilogram": "kg", "tonne": "t", "ounce": "oz", "pound": "lb", "lbs": "lb",
    "milliliter": "ml", "liter": "l", "litre": "l", "cups": "cup", "fluid ounce": "fl oz", "gallon": "gal",
    "celsius": "c", "fahrenheit": "f", "kelvin": "k",
}

_COLUMNS = ("store", "item", "color", "price", "currency", "stock")
ORDER_COLUMNS = ("price", "stock", "item", "color", "store")
_MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class InventoryRow:
    store: str
    item: str
    color: str
    price: float
    currency: str
    stock: int

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _COLUMNS}


class World:
    """Stores and their inventories; `query` is the only way tools read them."""

    _cache: OrderedDict[tuple[int, int], World] = OrderedDict()
    _cache_lock = threading.Lock()

    def __init__(self, index: int) -> None:
        rng = np.random.default_rng([index, WORLD_VERSION])
        cities = list(CITIES)
        self.stores = tuple(cities[i] for i in sorted(rng.choice(len(cities), STORES_PER_WORLD, replace=False)))
        combos = [(item, color) for item in ITEMS for color in COLORS]
        rows = []
        for store in self.stores:
            currency = CITIES[store]
            for k in sorted(rng.choice(len(combos), ITEMS_PER_STORE, replace=False)):
                item, color = combos[k]
                price = round(ITEMS[item][0] * float(rng.uniform(0.8, 1.25)) * RATES[currency], 2)
                rows.append(InventoryRow(store, item, color, price, currency, int(rng.integers(0, 41))))
        self.rows = tuple(rows)
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(f"CREATE TABLE inventory ({', '.join(_COLUMNS)})")
        self._db.executemany("INSERT INTO inventory VALUES (?, ?, ?, ?, ?, ?)",
                             [tuple(row.to_dict().values()) for row in rows])
        self._db.execute("PRAGMA query_only = ON")
        # A world never changes, so a query's answer never does: remember recent ones (most tasks repeat them), as
        # references to the world's own rows, so that a full memo holds pointers (about 2 MB), not row copies (80 MB).
        self._answers: dict[tuple[Any, ...], tuple[InventoryRow, ...]] = {}

    @classmethod
    def get(cls, index: int) -> World:
        """World `index`, from this process's cache of recently used worlds or built anew (a database inherited
        through fork is not reused)."""
        key = (os.getpid(), index)
        with cls._cache_lock:
            world = cls._cache.get(key)
            if world is None:
                world = cls._cache[key] = World(index)
                while len(cls._cache) > MAX_CACHED_WORLDS:
                    cls._cache.popitem(last=False)
            else:
                cls._cache.move_to_end(key)
        return world

    def query(
        self,
        *,
        store: str | None = None,
        item: str | None = None,
        color: str | None = None,
        order_by: str = "store",
        descending: bool = False,
        limit: int = MAX_QUERY_ROWS,
    ) -> list[InventoryRow]:
        """Rows matching every given filter (case-insensitive), sorted, at most `limit` (<= 20)."""
        if order_by not in ORDER_COLUMNS:
            raise ValueError(f"order_by must be one of {ORDER_COLUMNS}, got {order_by!r}")
        key = (_nocase(store), _nocase(item), _nocase(color), order_by, descending, limit)
        if key not in self._answers:
            if len(self._answers) >= _MAX_REMEMBERED:
                self._answers.clear()
            self._answers[key] = self._select(store, item, color, order_by, descending, limit)
        return list(self._answers[key])

    def _select(
        self, store: str | None, item: str | None, color: str | None, order_by: str, descending: bool, limit: int
    ) -> tuple[InventoryRow, ...]:
        filters = [(name, value) for name, value in (("store", store), ("item", item), ("color", color)) if value]
        where = " AND ".join(f"{name} = ? COLLATE NOCASE" for name, _ in filters) or "1"
        # Columns and direction come from fixed lists above; user values only ever travel as bound parameters.
        direction = "DESC" if descending else "ASC"
        sql = (
            f"SELECT rowid FROM inventory WHERE {where} "
            f"ORDER BY {order_by} {direction}, store, item, color LIMIT ?"
        )
        params = [value for _, value in filters] + [max(1, min(limit, MAX_QUERY_ROWS))]
        return tuple(self.rows[rowid - 1] for (rowid,) in self._db.execute(sql, params))  # inserted in order: 1, 2, ...


def _nocase(text: str | None) -> str | None:
    """A cache key that folds case exactly as SQLite's NOCASE does (ASCII letters only)."""
    return text.lower() if text and text.isascii() else text
