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
and modification times. A malformed file raises `WebShopFormatError` (a ValueError) naming the file, the item
and the field, and what it must be.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from creditgym.envs.shop.catalog import Product
from creditgym.envs.shop.goals import Goal
from creditgym.envs.shop.index import INDEX_VERSION, ShopCatalog, build_index, cache_dir, shared, usable_index

PRODUCTS_GLOB = "items_shuffle*.json"
ATTRIBUTES_FILE = "items_ins_v2.json"
HUMAN_FILE = "items_human_ins.json"
GOAL_KINDS = ("human", "synthetic")
_PRICE_STEPS = [10.0 * i for i in range(1, 100)]
# WebShop reads the numbers after each "$"; the first is the price. A bare number is accepted too.
_PRICE = re.compile(r"(-?)\$\s*([0-9][0-9,]*(?:\.[0-9]+)?)")
_BARE_PRICE = re.compile(r"\s*()([0-9][0-9,]*(?:\.[0-9]+)?)\s*")
#: Prices above this are rejected as malformed (WebShop's dearest products cost a few thousand dollars).
MAX_PRICE = 1_000_000.0
_JSON_NAMES = {list: "list (of product objects)", dict: "object (keyed by asin)"}
_SPACES = re.compile(r"\s+")
# Punctuation that NFKD does not fold to ASCII and that would otherwise vanish from titles.
_PUNCTUATION = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"',
                              "\u201d": '"', "\u2026": "...", "\u00d7": "x", "\u2022": "-", "\u203a": ">"})


class WebShopFormatError(ValueError):
    """A WebShop data file that cannot be read; the message names the file, the entry and what to change."""


def load_webshop(directory: str | Path, *, goals: str = "human", num_products: int | None = None) -> ShopCatalog:
    """A catalog of WebShop's products (the first `num_products` when given) and goals of kind `goals`.

    Raises FileNotFoundError for a missing file and `WebShopFormatError` (a ValueError) for a malformed one.
    """
    if goals not in GOAL_KINDS:
        raise ValueError(f"goals must be one of {GOAL_KINDS}, got {goals!r}")
    if num_products is not None and (isinstance(num_products, bool) or not isinstance(num_products, int)
                                     or num_products < 1):
        raise ValueError(f"num_products must be a positive integer or None, got {num_products!r}")
    folder = Path(directory).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"the WebShop data folder {folder} does not exist or is not a folder")
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
    if not usable_index(path):
        products, instructions = read_webshop(folder, goals=goals, num_products=num_products)
        build_index(path, products, instructions)
    return shared(path, (_reopen, (str(folder), goals, num_products)))


def _reopen(directory: str, goals: str, num_products: int | None) -> ShopCatalog:
    return load_webshop(directory, goals=goals, num_products=num_products)


def read_webshop(
    directory: Path, *, goals: str = "human", num_products: int | None = None
) -> tuple[list[Product], list[dict[str, Any]]]:
    """Parse the WebShop files into products and goal records (each with "product_id").

    As WebShop does, products whose asin is missing, "nan" or longer than 10 characters are skipped, and so
    are repeats of an asin (the first is kept), instructions without attributes and goals for products not
    loaded; a warning counts what was skipped. Anything else malformed raises `WebShopFormatError`.
    """
    directory = Path(directory)
    attributes_path = directory / ATTRIBUTES_FILE
    synthetic = _read_json(attributes_path, dict) if attributes_path.exists() else {}
    products_path = _products_file(directory)
    raw = _read_json(products_path, list)
    products: list[Product] = []
    seen: set[str] = set()
    skipped = {"without a valid asin": 0, "repeating an asin": 0}
    for i, item in enumerate(raw[:num_products] if num_products is not None else raw):
        if not isinstance(item, dict):
            raise WebShopFormatError(f"{products_path}: item {i} is {_kind(item)}; each item must be a JSON object")
        asin = item.get("asin")
        asin = str(asin) if isinstance(asin, str | int) and not isinstance(asin, bool) else ""
        if not asin or asin == "nan" or len(asin) > 10:
            skipped["without a valid asin"] += 1
        elif asin in seen:
            skipped["repeating an asin"] += 1
        else:
            seen.add(asin)
            where = f"{products_path}: item {i} (asin {asin!r})"
            entry = _entry(synthetic, asin, attributes_path)
            products.append(_product(item, asin, _strings(entry.get("attributes"), f"{where}, 'attributes' in "
                                                          f"{attributes_path.name}"), where))
    if not products:
        raise WebShopFormatError(f"{products_path} has no products with a valid asin (a string of 1 to 10 characters)")
    records: list[dict[str, Any]] = []
    no_text = 0
    if goals == "human":
        human_path = directory / HUMAN_FILE
        human = _read_json(human_path, dict)
        for product in products:
            entries = human.get(product.id, [])
            if not isinstance(entries, list):
                raise WebShopFormatError(f"{human_path}: the value for asin {product.id!r} is {_kind(entries)}; "
                                         "it must be a list of instruction objects")
            for j, entry in enumerate(entries):
                where = f"{human_path}: asin {product.id!r}, instruction {j}"
                if not isinstance(entry, dict):
                    raise WebShopFormatError(f"{where} is {_kind(entry)}; it must be a JSON object")
                record = _goal_record(product.id, entry, where, with_options=True)
                no_text += record is not None and not record["instruction"]
                if record is not None and record["instruction"]:
                    records.append(record)
        source = human_path
    else:
        for product in products:
            record = _goal_record(product.id, _entry(synthetic, product.id, attributes_path),
                                  f"{attributes_path}: asin {product.id!r}", with_options=False)
            no_text += record is not None and not record["instruction"]
            if record is not None and record["instruction"]:
                records.append(record)
        source = attributes_path
    if no_text:
        skipped["goals with no ASCII text in their instruction"] = no_text
    if not records:
        raise WebShopFormatError(
            f"{source} has no usable {goals} instruction (one with a non-empty instruction and at least one "
            f"instruction_attributes entry) for any of the {len(products)} products read from {products_path}"
        )
    if any(skipped.values()):
        counts = ", ".join(f"{count} {what}" for what, count in skipped.items() if count)
        warnings.warn(f"WebShop data in {directory}: skipped {counts}", stacklevel=3)
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
            # Keep every instruction option: WebShop's denominator counts each one.
            options[name if name not in options else f"option {i + 1}"] = value
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


def _read_json(path: Path, kind: type) -> Any:
    """The JSON value in `path`, which must be of type `kind`; UTF-8 (a byte-order mark is allowed)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        bad = data[error.start : error.start + 1]
        message = f"{path} is not UTF-8 text (byte {error.start} is {bad!r}); re-save it as UTF-8"
        raise WebShopFormatError(message) from None
    if not text.strip():
        raise WebShopFormatError(f"{path} is empty; it must hold a JSON {_JSON_NAMES[kind]}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise WebShopFormatError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column "
                                 f"{error.colno}") from None
    if not isinstance(value, kind):
        raise WebShopFormatError(f"{path} holds {_kind(value)}; it must hold a JSON {_JSON_NAMES[kind]}")
    return value


def _entry(synthetic: dict[str, Any], asin: str, path: Path) -> dict[str, Any]:
    entry = synthetic.get(asin, {})
    if not isinstance(entry, dict):
        raise WebShopFormatError(f"{path}: the value for asin {asin!r} is {_kind(entry)}; it must be a JSON object")
    return entry


def _goal_record(product_id: str, entry: dict[str, Any], where: str, *, with_options: bool) -> dict[str, Any] | None:
    """The goal record of one instruction entry; None when it has no attributes (WebShop skips those)."""
    attributes = _strings(entry.get("instruction_attributes"), f"{where}, 'instruction_attributes'")
    if not attributes:
        return None
    instruction = entry.get("instruction") or ""
    if not isinstance(instruction, str):
        raise WebShopFormatError(f"{where}: 'instruction' is {_kind(instruction)}; it must be a string")
    options = [_option_value(v) for v in _strings(entry.get("instruction_options"), f"{where}, "
                                                   "'instruction_options'")] if with_options else None
    return _record(product_id, instruction, attributes, options)


def _strings(value: Any, where: str) -> list[str]:
    """A list of strings, or [] for null or a missing field."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WebShopFormatError(f"{where} is {_kind(value)}; it must be a list of strings")
    return value


def _text(item: dict[str, Any], field: str, where: str) -> str:
    value = item.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebShopFormatError(f"{where}: {field!r} is {_kind(value)}; it must be a string (or null)")
    return value


def _price(pricing: Any, where: str) -> float:
    """The first price of WebShop's "pricing" field ("$10.99" or "$10.99 - $20.00"); $100 when it is missing."""
    if pricing is None or pricing == "":
        return 100.0
    price = math.nan
    if isinstance(pricing, int | float) and not isinstance(pricing, bool):
        price = float(pricing)
    elif isinstance(pricing, str) and (found := _BARE_PRICE.fullmatch(pricing) or _PRICE.search(pricing)):
        price = float(found.group(2).replace(",", "")) * (-1 if found.group(1) else 1)
    if not (math.isfinite(price) and 0 <= price <= MAX_PRICE):
        raise WebShopFormatError(f"{where}: 'pricing' is {pricing!r}; it must be a price such as \"$12.99\" or "
                                 f"\"$10.99 - $20.00\" between $0 and ${MAX_PRICE:,.0f}, or empty for $100")
    return price


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    shown = repr(value)
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({shown[:40]}{'...' if len(shown) > 40 else ''})"


def _record(product_id: str, instruction: str, attributes: list[str], options: list[str] | None) -> dict[str, Any]:
    return {
        "product_id": product_id,
        "instruction": _ascii(instruction).strip().strip(".").lower(),
        "attributes": [_ascii(a).lower() for a in attributes],
        "options": options,
    }


def _product(item: dict[str, Any], asin: str, attributes: list[str], where: str) -> Product:
    options: dict[str, tuple[str, ...]] = {}
    customization = item.get("customization_options") or {}
    if not isinstance(customization, dict):
        raise WebShopFormatError(f"{where}: 'customization_options' is {_kind(customization)}; it must be null or "
                                 '{option name: [{"value": str}, ...]}')
    for k, (name, contents) in enumerate(customization.items()):
        if contents is not None and not isinstance(contents, list):
            raise WebShopFormatError(f"{where}: customization option {name!r} is {_kind(contents)}; it must be a "
                                     'list of {"value": str} objects')
        values: list[str] = []
        for content in contents or []:
            value = content.get("value") if isinstance(content, dict) else content
            if value is not None and not isinstance(value, str):
                raise WebShopFormatError(f"{where}: customization option {name!r} has {_kind(content)}; each value "
                                         'must be a {"value": str} object')
            if value and _option_value(value):
                values.append(_option_value(value))
        if values:
            options[_ascii(name).lower() or f"option {k + 1}"] = tuple(dict.fromkeys(values))
    features = item.get("small_description") or []
    features = _strings([features] if isinstance(features, str) else features, f"{where}: 'small_description'")
    rating = item.get("average_rating")
    if isinstance(rating, str):
        try:
            rating = float(rating)
        except ValueError:
            rating = None
    finite = isinstance(rating, int | float) and not isinstance(rating, bool) and math.isfinite(rating)
    return Product(
        id=asin,
        title=_ascii(_text(item, "name", where)),
        category=_ascii(_text(item, "category", where)).lower(),
        product_type=_ascii(_text(item, "query", where)).lower(),
        price=_price(item.get("pricing"), where),
        attributes=tuple(_ascii(a).lower() for a in attributes),
        options=options,
        description=_ascii(_text(item, "full_description", where)),
        features=tuple(_ascii(f) for f in features if f),
        rating=float(rating) if finite else None,
    )


def _option_value(value: str) -> str:
    # WebShop shows "/" in option values as " | "; brackets would break click[...] labels.
    return _SPACES.sub(" ", _ascii(value).replace("/", " | ").replace("[", "(").replace("]", ")")).lower()


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", str(text).translate(_PUNCTUATION)).encode("ascii", "ignore").decode()
    return _SPACES.sub(" ", folded).strip()
