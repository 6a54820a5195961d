"""WebShop's purchase reward and the Shop env's reward sizes.

    r = r_type * (matched attributes + matched options + [price <= limit]) / (goal attributes + goal options + 1)

`r_type` takes WebShop's values {1, 0.5, 0.1, 0}, but not its rule. WebShop (`get_type_reward`) gives 1 when the
search query matches, two levels of the category path match, or over 20% of the goal title's nouns (spaCy) are in
the bought title, else 0.5; then 0.1 when under 10% of them are, and 0 when none are. Here the product type plays
the query's part and decides alone: 1 when the bought product has the goal's product type; otherwise the
fraction s of the type's words found in the bought title decides: 0 when s = 0, 0.5 when the category matches or
s > 0.2, else 0.1. Why: there is no noun tagger here, and the overlap of a two-word type such as "running shoes"
passes 20% with any one shared word ("dress shoes"), which WebShop's rule would pay 1; and the category is only
the top level (WebShop's data gives "beauty", not the path), a weaker match than two path levels. So scores
are WebShop's in form, and equal to its scores for the right product, but not comparable for near misses.
An attribute matches when the product lists it or its text (title, features, description) contains it.
A goal option matches a chosen option when one's words are a subset of the other's (WebShop's fuzzy match
scores such pairs 100).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from creditgym.envs.arguments import FiniteRewards
from creditgym.envs.shop.catalog import Product
from creditgym.envs.shop.goals import Goal

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class ShopRewards(FiniteRewards):
    """Reward sizes for `ShopEnv`."""

    purchase: float = 1.0
    """Multiplies WebShop's purchase score in [0, 1], paid into `task` when the episode ends with a purchase."""
    step: float = 0.0
    """Paid into `task` on every valid step (WebShop has none)."""
    invalid_action: float = -0.1
    """Paid into `format` for text that is not an available action."""



@dataclass(frozen=True)
class PurchaseScore:
    reward: float
    r_type: float
    attributes_matched: tuple[str, ...]
    attributes_missing: tuple[str, ...]
    options_matched: tuple[str, ...]
    options_missing: tuple[str, ...]
    price_ok: bool

    def details(self) -> dict[str, Any]:
        return {
            "reward": self.reward, "r_type": self.r_type, "attributes_matched": list(self.attributes_matched),
            "attributes_missing": list(self.attributes_missing), "options_matched": list(self.options_matched),
            "options_missing": list(self.options_missing), "price_ok": self.price_ok,
        }


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def type_reward(goal: Goal, product: Product) -> float:
    if product.product_type == goal.product_type:
        return 1.0
    wanted = set(words(goal.product_type))
    if not wanted:
        return 0.0
    share = len(wanted & set(words(product.title))) / len(wanted)
    if share == 0.0:
        return 0.0
    if product.category == goal.category or share > 0.2:
        return 0.5
    return 0.1


def score_purchase(goal: Goal, product: Product, chosen: dict[str, str]) -> PurchaseScore:
    """Score buying `product` with the `chosen` options (name -> value) against `goal`."""
    listed = {" ".join(words(a)) for a in product.attributes}
    text = " " + " ".join(words(" ".join((product.title, *product.features, product.description)))) + " "
    matched, missing = [], []
    for attribute in goal.attributes:
        norm = " ".join(words(attribute))
        (matched if norm in listed or f" {norm} " in text else missing).append(attribute)
    chosen_words = [set(words(value)) for value in chosen.values()]
    options_matched, options_missing = [], []
    for value in goal.options.values():
        want = set(words(value))
        hit = any(want and got and (want <= got or got <= want) for got in chosen_words)
        (options_matched if hit else options_missing).append(value)
    price_ok = product.price <= goal.price_upper
    r_type = type_reward(goal, product)
    total = len(goal.attributes) + len(goal.options) + 1
    reward = r_type * (len(matched) + len(options_matched) + int(price_ok)) / total
    return PurchaseScore(
        reward=reward, r_type=r_type, attributes_matched=tuple(matched), attributes_missing=tuple(missing),
        options_matched=tuple(options_matched), options_missing=tuple(options_missing), price_ok=price_ok,
    )
