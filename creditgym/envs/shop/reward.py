"""WebShop's purchase reward and the Shop env's reward sizes.

    r = r_type * (matched attributes + matched options + [price <= limit]) / (goal attributes + goal options + 1)

`r_type` follows WebShop's tiers {1, 0.5, 0.1, 0} with structured types: 1 when the bought product has the
goal's product type (WebShop's query match); otherwise the fraction s of the goal type's words found in the
bought product's title decides: 0 when s = 0, 0.5 when the category matches or s > 0.2, else 0.1.
An attribute matches when the product lists it or its text (title, features, description) contains it.
A goal option matches a chosen option when one's words are a subset of the other's (WebShop's fuzzy match
scores such pairs 100).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from creditgym.envs.shop.catalog import Product
from creditgym.envs.shop.goals import Goal

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class ShopRewards:
    """Reward sizes for `ShopEnv`."""

    purchase: float = 1.0
    """Multiplies WebShop's purchase score in [0, 1], paid into `task` when the episode ends with a purchase."""
    step: float = 0.0
    """Paid into `task` on every valid step (WebShop has none)."""
    invalid_action: float = -0.1
    """Paid into `format` for text that is not an available action."""

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not math.isfinite(value):
                raise ValueError(f"ShopRewards.{name} must be a finite number, got {value!r}")


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
