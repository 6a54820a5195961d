"""Shopping goals: what to buy, phrased by paraphrase templates, with train and test splits.

A generated goal starts from a target product: its type, one to three of its attributes, one value for one
or more of its options, and a price limit above its price. Any product that has all of these earns the full
reward, not only the target. Train goals use `TRAIN_TEMPLATES`; test goals target held-out products
(`catalog.is_test_product`) and may also use `TEST_TEMPLATES`, phrasings never seen in training.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from creditgym.envs.shop.catalog import Product

TRAIN_TEMPLATES: tuple[str, ...] = (
    "i need {a} {attrs} {type} in {options}, and price lower than {price} dollars",
    "i'm looking for {a} {type} that is {attrs_and}, {options}, under {price} dollars",
    "find me {a} {attrs} {type} with {options_kv}, priced under {price} dollars",
    "can you get me {a} {type}? it should be {attrs_and}, {options}, and cost less than {price} dollars",
    "show me {attrs} {type} in {options}, price below {price} dollars",
)
TEST_TEMPLATES: tuple[str, ...] = TRAIN_TEMPLATES + (
    "i am shopping for {a} {attrs_and} {type}; i want {options} and it must cost less than {price} dollars",
    "buy {a} {type} ({attrs_and}) with {options_kv}, max price {price} dollars",
)
# Option names whose value reads naturally followed by the name ("chocolate flavor", "navy color").
_NAME_AFTER = ("flavor", "scent", "color", "shade")
_AN = re.compile(r"\ba (?=[aeiou])")


@dataclass(frozen=True)
class Goal:
    instruction: str
    product_id: str
    """The target product: it satisfies every constraint, so buying it with these options earns reward 1."""
    product_type: str
    category: str
    attributes: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)
    """Option name -> wanted value."""
    price_upper: float = math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction, "product_id": self.product_id, "product_type": self.product_type,
            "category": self.category, "attributes": list(self.attributes), "options": dict(self.options),
            "price_upper": self.price_upper if math.isfinite(self.price_upper) else None,
        }


def generate_goal(product: Product, rng: np.random.Generator, split: str) -> Goal:
    """A goal that `product` satisfies, drawn with `rng` and phrased with a template of `split`."""
    count = int(rng.integers(1, min(3, len(product.attributes)) + 1))
    attributes = tuple(product.attributes[i] for i in sorted(rng.choice(len(product.attributes), count, False)))
    names = list(product.options)
    chosen = sorted(rng.choice(len(names), int(rng.integers(1, len(names) + 1)), replace=False))
    options = {}
    for i in chosen:
        values = product.options[names[i]]
        options[names[i]] = values[int(rng.integers(len(values)))]
    # Round the limit up to whole fives, as people state budgets.
    price_upper = float(math.ceil(product.price * rng.uniform(1.1, 1.8) / 5) * 5)
    templates = TEST_TEMPLATES if split == "test" else TRAIN_TEMPLATES
    template = templates[int(rng.integers(len(templates)))]
    return Goal(
        instruction=phrase(template, product.product_type, attributes, options, price_upper),
        product_id=product.id, product_type=product.product_type, category=product.category,
        attributes=attributes, options=options, price_upper=price_upper,
    )


def phrase(template: str, product_type: str, attributes: tuple[str, ...], options: dict[str, str], price: float) -> str:
    """Fill a template; "a" becomes "an" before a vowel and "some" before a plural product type."""
    plural = product_type.endswith("s") and not product_type.endswith("ss")
    text = template.format(
        a="some" if plural else "a",
        type=product_type,
        attrs=" ".join(attributes),
        attrs_and=_and(attributes),
        options=", ".join(_option_phrase(name, value) for name, value in options.items()),
        options_kv=", and ".join(f"{name}: {value}" for name, value in options.items()),
        price=f"{price:.2f}",
    )
    return _AN.sub("an ", text).lower()


def _option_phrase(name: str, value: str) -> str:
    if name in _NAME_AFTER:
        return f"{value} {name}"
    if name == "size" and not any(ch.isdigit() for ch in value):
        return f"size {value}"
    return value


def _and(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
