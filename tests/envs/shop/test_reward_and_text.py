"""WebShop's purchase reward, goal phrasing and the pure action parser."""

from __future__ import annotations

import math

import numpy as np
import pytest

from creditgym.envs.shop.catalog import Product
from creditgym.envs.shop.goals import TEST_TEMPLATES, TRAIN_TEMPLATES, Goal, generate_goal
from creditgym.envs.shop.reward import ShopRewards, score_purchase, type_reward
from creditgym.envs.shop.text import ShopAction, parse_action

BAR = Product(
    id="B0BAR00001", title="Nutriva Daily Gluten Free Snack Bar, Chocolate / 12 Pack", category="grocery",
    product_type="snack bar", price=12.99, attributes=("gluten free", "vegan"),
    options={"flavor": ("chocolate", "vanilla"), "pack count": ("6 pack", "12 pack")},
    description="A snack bar.", features=("Gluten free.",),
)
GOAL = Goal(
    instruction="i need a gluten free vegan snack bar in chocolate flavor, 12 pack, under 20.00 dollars",
    product_id=BAR.id, product_type="snack bar", category="grocery", attributes=("gluten free", "vegan"),
    options={"flavor": "chocolate", "pack count": "12 pack"}, price_upper=20.0,
)


def _with(**changes) -> Product:
    fields = {**BAR.__dict__, **changes}
    return Product(**fields)


def test_exact_purchase_scores_one() -> None:
    score = score_purchase(GOAL, BAR, {"flavor": "chocolate", "pack count": "12 pack"})
    assert score.reward == 1.0 and score.r_type == 1.0 and score.price_ok
    assert score.details()["options_missing"] == []


@pytest.mark.parametrize(
    ("product", "chosen", "expected"),
    [
        # (attributes + options + price) / (2 + 2 + 1), times r_type
        (BAR, {}, 3 / 5),  # no options chosen
        (BAR, {"flavor": "vanilla", "pack count": "12 pack"}, 4 / 5),  # one wrong option
        (_with(price=25.0), {"flavor": "chocolate", "pack count": "12 pack"}, 4 / 5),  # over the limit
        # vegan and 12 pack missing
        (_with(attributes=("gluten free",), description=""), {"flavor": "chocolate"}, 3 / 5),
        # another type whose title shares no word with "snack bar": r_type 0, even in the same category
        (_with(product_type="granola", title="Oat Granola"), {"flavor": "chocolate", "pack count": "12 pack"}, 0.0),
        # another category, but the title names a "bar": half the type's words -> 0.5
        (_with(product_type="soap bar", category="beauty", title="Lavender Soap Bar"), {}, 0.5 * 3 / 5),
        # another category and no shared word: r_type 0
        (_with(product_type="usb cable", category="electronics", title="USB Cable"), {"flavor": "chocolate"}, 0.0),
    ],
)
def test_webshop_formula_cases(product: Product, chosen: dict, expected: float) -> None:
    assert score_purchase(GOAL, product, chosen).reward == pytest.approx(expected)


def test_type_tiers_include_the_low_overlap_tier() -> None:
    long_type = "one two three four five six seven eight nine ten eleven"
    goal = Goal("x", "id", long_type, "home", ("a",), {}, 10.0)
    assert type_reward(goal, _with(category="grocery", title="Ten Things")) == 0.1  # 1/11 < 0.1
    assert type_reward(goal, _with(category="home", title="Ten Things")) == 0.5  # same category
    assert type_reward(goal, _with(category="home", title="Nothing Shared")) == 0.0


def test_options_match_by_word_subset_like_webshops_fuzzy_match() -> None:
    goal = Goal("x", "id", "snack bar", "grocery", (), {"size": "12 pack"}, math.inf)
    assert score_purchase(goal, BAR, {"pack count": "12 pack (pack of 1)"}).options_matched == ("12 pack",)
    assert score_purchase(goal, BAR, {"pack count": "2 pack"}).options_matched == ()
    # either way round: a chosen value whose words are all in the wanted one matches too
    dark = Goal("x", "id", "snack bar", "grocery", (), {"flavor": "dark chocolate"}, math.inf)
    assert score_purchase(dark, BAR, {"flavor": "chocolate"}).options_matched == ("dark chocolate",)


def test_a_price_equal_to_the_limit_is_within_it() -> None:
    at_limit = score_purchase(GOAL, _with(price=20.0), {"flavor": "chocolate", "pack count": "12 pack"})
    assert at_limit.price_ok and at_limit.reward == 1.0
    assert not score_purchase(GOAL, _with(price=20.01), {}).price_ok


def test_rewards_must_be_finite() -> None:
    with pytest.raises(ValueError, match="ShopRewards.purchase must be a finite number"):
        ShopRewards(purchase=math.inf)


def test_generated_goals_are_satisfied_by_their_target_and_phrased_by_split() -> None:
    rng = np.random.default_rng(1)
    seen_test_only = False
    for _ in range(200):
        goal = generate_goal(BAR, rng, "test")
        assert score_purchase(goal, BAR, goal.options).reward == 1.0
        assert 1 <= len(goal.attributes) <= 2 and goal.price_upper >= BAR.price * 1.1
        assert f"{goal.price_upper:.2f} dollars" in goal.instruction and "snack bar" in goal.instruction
        assert " a a" not in goal.instruction and " a e" not in goal.instruction  # "an" before vowels
        seen_test_only |= goal.instruction.startswith(("i am shopping", "buy "))
    assert seen_test_only
    assert len(TEST_TEMPLATES) > len(TRAIN_TEMPLATES)
    train = [generate_goal(BAR, rng, "train").instruction for _ in range(200)]
    assert not any(text.startswith(("i am shopping", "buy ")) for text in train)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("search[Gluten Free  snack bar]", ShopAction("search", "gluten free snack bar")),
        ("click[Buy Now]", ShopAction("click", "buy now")),
        ("  click [ < Prev ]  ", ShopAction("click", "< prev")),
        ("<think>the first one fits</think>\n<action>click[B0BAR00001]</action>", ShopAction("click", "b0bar00001")),
        ("<answer>click[Next >]</answer>", ShopAction("click", "next >")),
        ("", None),
        ("search[]", None),
        ("click[   ]", None),
        ("buy now", None),
        ("click[a] click[b]", None),
        ("search[a [b] c]", None),
        ("search[" + "x" * 500 + "]", None),
        ("<action>click[Buy Now]", None),
        (None, None),
    ],
)
def test_parse_action(text: object, expected: ShopAction | None) -> None:
    assert parse_action(text) == expected


def test_parse_action_is_linear_on_hostile_input() -> None:
    assert parse_action("<action>" * 200_000) is None
    assert parse_action("</think>" * 200_000) is None
