"""The shop's pages as text, in the spirit of WebShop's text mode: one page per observation, the
instruction on top, and every clickable label in square brackets.

Each renderer returns the page text and its clickable labels (as displayed; clicks match them ignoring case).
"""

from __future__ import annotations

from collections import Counter
from enum import Enum

from creditgym.envs.shop.catalog import Product
from creditgym.envs.shop.reward import PurchaseScore

RESULTS_PER_PAGE = 10
BACK_TO_SEARCH = "Back to Search"
NEXT = "Next >"
PREV = "< Prev"
DESCRIPTION = "Description"
FEATURES = "Features"
BUY = "Buy Now"
ITEM_CONTROLS = (BACK_TO_SEARCH, PREV, DESCRIPTION, FEATURES, BUY)
#: Detail pages show at most this much of a (possibly very long, for WebShop data) description.
MAX_DETAIL_CHARS = 2000

Page = tuple[str, list[str]]


class PageKind(str, Enum):
    SEARCH = "search"
    RESULTS = "results"
    ITEM = "item"
    DESCRIPTION = "description"
    FEATURES = "features"
    DONE = "done"


def search_page(instruction: str) -> Page:
    # No "[Search]" button: every bracketed label can be clicked, and searching is search[...], not a click
    return f"Instruction: {instruction}\nType search[your query] to search the store.", []


def results_page(instruction: str, query: str, page: int, total: int, products: list[Product]) -> Page:
    """Page `page` (0-based) of the results for `query`, showing `products`."""
    labels = [BACK_TO_SEARCH]
    pages = max(1, -(-total // RESULTS_PER_PAGE))
    if page > 0:
        labels.append(PREV)
    if page + 1 < pages:
        labels.append(NEXT)
    lines = [f"Instruction: {instruction}", " ".join(f"[{label}]" for label in labels)]
    if not products:
        lines.append(f'No results for "{query}". Try other words.')
    else:
        lines.append(f'Page {page + 1} of {pages} ({total} results for "{query}")')
        for product in products:
            lines.append(f"[{product.id}] {product.title} | ${product.price:.2f}")
            labels.append(product.id)
    return "\n".join(lines), labels


def option_labels(product: Product) -> dict[str, tuple[str, str]]:
    """The item page's label for each option value -> (option name, value).

    A value is its own label unless another label of the page reads the same, ignoring case: a control such as
    "Description", or the same value in another option. Then it is shown as "name: value", so every label picks
    one thing.
    """
    taken = Counter(value.lower() for values in product.options.values() for value in set(values))
    taken.update(control.lower() for control in ITEM_CONTROLS)
    return {(f"{name}: {value}" if taken[value.lower()] > 1 else value): (name, value)
            for name, values in product.options.items() for value in values}


def item_page(instruction: str, product: Product, chosen: dict[str, str]) -> Page:
    labels = list(ITEM_CONTROLS)
    lines = [f"Instruction: {instruction}", f"[{BACK_TO_SEARCH}] [{PREV}]", product.title]
    rating = f" | Rating: {product.rating:.1f} / 5" if product.rating is not None else ""
    lines.append(f"Price: ${product.price:.2f}{rating}")
    options = option_labels(product)
    for name in product.options:
        lines.append(f"{name}: " + " ".join(f"[{label}]" for label, (option, _) in options.items() if option == name))
    labels.extend(options)
    if chosen:
        lines.append("Selected: " + ", ".join(f"{name} = {value}" for name, value in chosen.items()))
    lines.append(f"[{DESCRIPTION}] [{FEATURES}] [{BUY}]")
    return "\n".join(lines), labels


def detail_page(instruction: str, product: Product, kind: PageKind) -> Page:
    if kind == PageKind.DESCRIPTION:
        body = product.description or "(no description)"
        if len(body) > MAX_DETAIL_CHARS:
            body = body[:MAX_DETAIL_CHARS] + "..."
    else:
        body = "\n".join(f"- {feature}" for feature in product.features) or "(no features listed)"
    lines = [f"Instruction: {instruction}", f"[{BACK_TO_SEARCH}] [{PREV}]", f"{kind.value.title()} of {product.title}"]
    return "\n".join([*lines, body]), [BACK_TO_SEARCH, PREV]


def done_page(instruction: str, product: Product, chosen: dict[str, str], score: PurchaseScore) -> Page:
    options = ", ".join(f"{name} = {value}" for name, value in chosen.items()) or "none"
    lines = [
        f"Instruction: {instruction}",
        f"You bought {product.title} (${product.price:.2f}) with options: {options}.",
        f"Score: {score.reward:.2f}. Matched attributes: {_listed(score.attributes_matched)}; "
        f"options: {_listed(score.options_matched)}; price within limit: {'yes' if score.price_ok else 'no'}.",
        "The episode is over.",
    ]
    return "\n".join(lines), []


def _listed(items: tuple[str, ...]) -> str:
    return ", ".join(items) if items else "none"
