"""WebShop purchase score: options with no words and whole-word attribute matching."""

from __future__ import annotations

import pytest

from creditgym.envs.shop.catalog import Product
from creditgym.envs.shop.goals import Goal
from creditgym.envs.shop.reward import score_purchase

SCARF = Product(
    id="B0SCARF001", title="Woolly Winter Scarf", category="fashion", product_type="scarf", price=19.99,
    attributes=("machine washable",), options={"flavor": ("-", "mint"), "size": ("one size",)},
    description="For a bored afternoon.", features=("Soft knit.",),
)


def _goal(attributes: tuple[str, ...] = (), options: dict[str, str] | None = None) -> Goal:
    return Goal(
        instruction="i want a scarf", product_id=SCARF.id, product_type="scarf", category="fashion",
        attributes=attributes, options=options or {}, price_upper=50.0,
    )


@pytest.mark.parametrize("value", ["-", "", " / "])
def test_a_chosen_option_with_no_words_matches_no_goal_option(value: str) -> None:
    # The empty word set is a subset of every goal value; without a guard any placeholder would score.
    score = score_purchase(_goal(options={"flavor": "mint", "size": "one size"}), SCARF, {"flavor": value})
    assert score.options_matched == ()
    assert score.options_missing == ("mint", "one size")
    assert score.reward == pytest.approx(1 / 3)  # only the price of (0 attributes + 2 options + price)


def test_a_goal_option_with_no_words_matches_no_chosen_option() -> None:
    score = score_purchase(_goal(options={"flavor": "-"}), SCARF, {"flavor": "mint"})
    assert score.options_matched == () and score.options_missing == ("-",)


def test_an_attribute_matches_whole_words_only() -> None:
    # "red" is inside "bored" in the description, but the shopper asked for a red scarf.
    score = score_purchase(_goal(attributes=("red",)), SCARF, {})
    assert score.attributes_missing == ("red",) and score.attributes_matched == ()
    red = Product(**{**SCARF.__dict__, "description": "A red one."})
    assert score_purchase(_goal(attributes=("red",)), red, {}).attributes_matched == ("red",)


@pytest.mark.parametrize(
    ("attribute", "matched"),
    [
        ("soft knit", True),  # a feature phrase, across words
        ("soft", True),  # the first word of the text
        ("afternoon", True),  # the last word of the text
        ("oft", False),  # inside "soft"
        ("knit for", True),  # across the feature/description join: the text is one word stream
        ("winter sca", False),  # a phrase that ends inside a word
    ],
)
def test_attribute_boundaries(attribute: str, matched: bool) -> None:
    score = score_purchase(_goal(attributes=(attribute,)), SCARF, {})
    assert (score.attributes_matched == (attribute,)) is matched
