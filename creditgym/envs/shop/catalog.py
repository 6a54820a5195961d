"""Products and the seeded procedural catalog generator.

`generate_catalog(seed, size)` is a pure function of its arguments: the same (seed, size) always gives the
same products in the same order, which is what lets the search index be cached on disk per (seed, size).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from creditgym.envs.shop.taxonomy import CATEGORIES, OPTION_DISPLAY, OPTION_VALUES, PRODUCT_LINES, ProductType

#: Bump when the generator's output changes, so cached indexes are rebuilt.
GENERATOR_VERSION = 2
#: One product in this many is a test-split goal target (chosen by a hash of its id, so it is stable).
TEST_FRACTION = 10
_ID_ALPHABET = np.array(list("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"))


@dataclass(frozen=True)
class Product:
    id: str
    """ASIN-like identifier, also the label clicked on the results page."""
    title: str
    category: str
    product_type: str
    price: float
    attributes: tuple[str, ...]
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Option name (as shown, e.g. "size") -> the values the shopper can pick."""
    description: str = ""
    features: tuple[str, ...] = ()
    rating: float | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id, "title": self.title, "category": self.category, "product_type": self.product_type,
                "price": self.price, "attributes": list(self.attributes),
                "options": {k: list(v) for k, v in self.options.items()}, "description": self.description,
                "features": list(self.features), "rating": self.rating,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Product:
        data: dict[str, Any] = json.loads(text)
        return cls(
            id=data["id"], title=data["title"], category=data["category"], product_type=data["product_type"],
            price=float(data["price"]), attributes=tuple(data["attributes"]),
            options={k: tuple(v) for k, v in data["options"].items()}, description=data["description"],
            features=tuple(data["features"]), rating=data["rating"],
        )


def is_test_product(product_id: str) -> bool:
    """Whether goals for this product belong to the test split (a stable hash, independent of catalog order)."""
    return zlib.crc32(product_id.encode()) % TEST_FRACTION == 0


def generate_catalog(seed: int, size: int) -> list[Product]:
    """`size` products spread evenly over every product type, with unique ids."""
    if size < 1:
        raise ValueError(f"a catalog needs at least one product, got size={size}")
    rng = np.random.default_rng([seed, GENERATOR_VERSION])
    kinds = [(category, ptype) for category in CATEGORIES for ptype in category.types]
    order = rng.permutation(np.arange(size) % len(kinds))
    ids = _unique_ids(rng, size)
    return [_product(rng, ids[i], *kinds[k]) for i, k in enumerate(order)]


def _unique_ids(rng: np.random.Generator, size: int) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < size:
        for row in rng.choice(_ID_ALPHABET, size=(size, 8)):
            candidate = "B0" + "".join(row)
            if candidate not in seen:
                seen.add(candidate)
                ids.append(candidate)
                if len(ids) == size:
                    break
    return ids


def _pick(rng: np.random.Generator, values: tuple[str, ...], low: int, high: int) -> tuple[str, ...]:
    """Between low and high distinct values, in the pool's order (so listings read naturally)."""
    count = min(len(values), int(rng.integers(low, high + 1)))
    return tuple(values[i] for i in sorted(rng.choice(len(values), size=count, replace=False)))


def _product(rng: np.random.Generator, product_id: str, category: Any, ptype: ProductType) -> Product:
    attributes = tuple(category.attributes[i] for i in rng.choice(len(category.attributes), 4, replace=False))
    attributes = attributes[: int(rng.integers(2, 5))]
    options = {OPTION_DISPLAY.get(name, name): _pick(rng, OPTION_VALUES[name], 2, 5) for name in ptype.options}
    # Listings end in .99, as shop prices do.
    price = max(round(round(float(ptype.base_price * rng.lognormal(0.0, 0.35))) - 0.01, 2), 0.99)
    brand = category.brands[int(rng.integers(len(category.brands)))]
    line = PRODUCT_LINES[int(rng.integers(len(PRODUCT_LINES)))]
    first_values = [values[0] for values in options.values()]
    noun = ptype.name.title()
    title = f"{brand} {line} {attributes[0].title()} {noun}, {' / '.join(v.title() for v in first_values)}"
    if len(attributes) > 1:
        title += f", {attributes[1].title()}"
    description = (
        f"The {brand} {line} {ptype.name} is made for people who want {_and(attributes)}. "
        f"Choose from {sum(len(v) for v in options.values())} variations of {_and(list(options))}."
    )
    features = tuple(f"{attribute.capitalize()}." for attribute in attributes) + tuple(
        f"Available {name}: {', '.join(values)}." for name, values in options.items()
    )
    rating = round(float(rng.uniform(2.5, 5.0)), 1)
    return Product(
        id=product_id, title=title, category=category.name, product_type=ptype.name, price=price,
        attributes=attributes, options=options, description=description, features=features, rating=rating,
    )


def _and(words: list[str] | tuple[str, ...]) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
