"""Read the real WebShop product and instruction files into a Shop catalog.

WebShop (Yao et al. 2022) ships its data as JSON files; point `load_webshop` (or `ShopEnv(webshop_dir=...)`)
at a folder holding them. Expected format:

- `items_shuffle.json` (or any `items_shuffle*.json`, such as `items_shuffle_1000.json`): a JSON list of
  products, each an object with
  `asin` (str, at most 10 characters; others are skipped, as are repeats), `name` (the title), `query` (the
  search query the product was scraped for; used as its product type), `category` (e.g. "beauty"),
  `full_description` (str), `small_description` (str or list of bullet points, the features), `pricing`
  (str such as "$10.99" or "$10.99 - $20.00"; the first price is used, $100 when missing), optional
  `average_rating` (number) and `customization_options` (null or {option name: [{"value": str, ...}, ...]}).
- `items_ins_v2.json` (optional): {asin: {"attributes": [str], "instruction": str, "instruction_attributes":
  [str]}}. `attributes` are the product's attributes; `instruction` is a synthetic goal.
- `items_human_ins.json` (optional): {asin: [{"instruction": str, "instruction_attributes": [str],
  "instruction_options": [str]}, ...]}, the 12,087 human-written goals.

With `goals="human"` each human instruction with at least one attribute becomes a goal; with
`goals="synthetic"` each product with a synthetic instruction does, and an option value per option is drawn
at reset and appended as WebShop does (" with color: red, and size: large"). As in WebShop, a price limit
is drawn at reset from the round tens above the product's price and appended to the instruction.
Text is folded to printable ASCII. The catalog is indexed once and cached, keyed by the files' paths, sizes
and modification times.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from creditgym.envs.shop.catalog import Product
from creditgym.envs.shop.goals import Goal
from creditgym.envs.shop.index import INDEX_VERSION, ShopCatalog, build_index, cache_dir, shared

PRODUCTS_GLOB = "items_shuffle*.json"
ATTRIBUTES_FILE = "items_ins_v2.json"
HUMAN_FILE = "items_human_ins.json"
GOAL_KINDS = ("human", "synthetic")
_PRICE_STEPS = [10.0 * i for i in range(1, 100)]
_PRICE = re.compile(r"\$\s*([0-9][0-9,]*(?:\.[0-9]+)?)")
_SPACES = re.compile(r"\s+")
# Punctuation that NFKD does not fold to ASCII and that would otherwise vanish from titles.
_PUNCTUATION = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"',
                              "\u201d": '"', "\u2026": "...", "\u00d7": "x", "\u2022": "-", "\u203a": ">"})


def load_webshop(directory: str | Path, *, goals: str = "human", num_products: int | None = None) -> ShopCatalog:
    """A catalog of WebShop's products (the first `num_products` when given) and goals of kind `goals`."""
    if goals not in GOAL_KINDS:
        raise ValueError(f"goals must be one of {GOAL_KINDS}, got {goals!r}")
    folder = Path(directory).expanduser()
    products_file = _products_file(folder)
    needed = [products_file, folder / (HUMAN_FILE if goals == "human" else ATTRIBUTES_FILE)]
    if not needed[1].exists():
        raise FileNotFoundError(f"goals={goals!r} needs {needed[1]}; see creditgym.envs.shop.webshop for the format")
    sources = [*needed, folder / ATTRIBUTES_FILE]
    key = hashlib.sha256(
        json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in sources if p.exists()]
                   + [goals, num_products, INDEX_VERSION]).encode()
    ).hexdigest()[:16]
    path = cache_dir() / "shop" / f"webshop-{key}.sqlite"
    if not path.exists():
        products, instructions = read_webshop(folder, goals=goals, num_products=num_products)
        build_index(path, products, instructions)
    return shared(path, (_reopen, (str(folder), goals, num_products)))


def _reopen(directory: str, goals: str, num_products: int | None) -> ShopCatalog:
    return load_webshop(directory, goals=goals, num_products=num_products)


def read_webshop(
    directory: Path, *, goals: str = "human", num_products: int | None = None
) -> tuple[list[Product], list[dict[str, Any]]]:
    """Parse the WebShop files into products and goal records (each with "product_id")."""
    attributes_path = directory / ATTRIBUTES_FILE
    synthetic = json.loads(attributes_path.read_text()) if attributes_path.exists() else {}
    raw = json.loads(_products_file(directory).read_text())
    products: list[Product] = []
    seen: set[str] = set()
    for item in raw[:num_products] if num_products is not None else raw:
        asin = str(item.get("asin", ""))
        if not asin or asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        products.append(_product(item, synthetic.get(asin, {}).get("attributes", [])))
    records: list[dict[str, Any]] = []
    if goals == "human":
        human = json.loads((directory / HUMAN_FILE).read_text())
        for product in products:
            for entry in human.get(product.id, []):
                if entry.get("instruction_attributes"):
                    records.append(_record(product.id, entry["instruction"], entry["instruction_attributes"],
                                           [_option_value(v) for v in entry.get("instruction_options", [])]))
    else:
        for product in products:
            entry = synthetic.get(product.id, {})
            if entry.get("instruction") and entry.get("instruction_attributes"):
                records.append(_record(product.id, entry["instruction"], entry["instruction_attributes"], None))
    return products, records


def webshop_goal(record: dict[str, Any], product: Product, rng: np.random.Generator) -> Goal:
    """The goal for one WebShop instruction record, with options (synthetic goals) and price limit drawn."""
    text = record["instruction"]
    if record["options"] is None:
        options = {name: values[int(rng.integers(len(values)))] for name, values in product.options.items()}
        if options:
            text += " with " + ", and ".join(f"{name}: {value}" for name, value in options.items())
    else:
        options = {}
        for i, value in enumerate(record["options"]):
            name = next((n for n, values in product.options.items() if value in values), f"option {i + 1}")
            options.setdefault(name, value)
    above = [step for step in _PRICE_STEPS if step > product.price][:4]
    price_upper = math.inf
    if len(above) >= 2:
        price_upper = float(max(rng.choice(above, size=2, replace=False)))
        text += f", and price lower than {price_upper:.2f} dollars"
    return Goal(
        instruction=text, product_id=product.id, product_type=product.product_type, category=product.category,
        attributes=tuple(record["attributes"]), options=options, price_upper=price_upper,
    )


def _products_file(directory: Path) -> Path:
    preferred = directory / "items_shuffle.json"
    candidates = [preferred] if preferred.exists() else sorted(directory.glob(PRODUCTS_GLOB))
    if not candidates:
        raise FileNotFoundError(f"no {PRODUCTS_GLOB} in {directory}; see creditgym.envs.shop.webshop for the format")
    return candidates[0]


def _record(product_id: str, instruction: str, attributes: list[str], options: list[str] | None) -> dict[str, Any]:
    return {
        "product_id": product_id,
        "instruction": _ascii(instruction).strip().strip(".").lower(),
        "attributes": [_ascii(a).lower() for a in attributes],
        "options": options,
    }


def _product(item: dict[str, Any], attributes: list[str]) -> Product:
    options: dict[str, tuple[str, ...]] = {}
    for name, contents in (item.get("customization_options") or {}).items():
        if contents:
            values = tuple(dict.fromkeys(_option_value(c["value"]) for c in contents if c.get("value")))
            options[_ascii(name).lower()] = values
    features = item.get("small_description") or []
    features = [features] if isinstance(features, str) else features
    found = _PRICE.search(str(item.get("pricing") or ""))
    rating = item.get("average_rating")
    return Product(
        id=str(item["asin"]),
        title=_ascii(item.get("name") or ""),
        category=_ascii(item.get("category") or "").lower(),
        product_type=_ascii(item.get("query") or "").lower(),
        price=float(found.group(1).replace(",", "")) if found else 100.0,
        attributes=tuple(_ascii(a).lower() for a in attributes),
        options=options,
        description=_ascii(item.get("full_description") or ""),
        features=tuple(_ascii(f) for f in features if f),
        rating=float(rating) if isinstance(rating, int | float) else None,
    )


def _option_value(value: str) -> str:
    # WebShop shows "/" in option values as " | "; brackets would break click[...] labels.
    return _ascii(value).replace("/", " | ").replace("[", "(").replace("]", ")").lower()


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", str(text).translate(_PUNCTUATION)).encode("ascii", "ignore").decode()
    return _SPACES.sub(" ", folded).strip()
