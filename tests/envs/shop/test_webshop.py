"""Reading WebShop's real file format, on a tiny sample written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from creditgym.envs.shop.env import ShopEnv
from creditgym.envs.shop.expert import ShopExpert
from creditgym.envs.shop.goals import Goal
from creditgym.envs.shop.webshop import load_webshop, read_webshop

PRODUCTS = [
    {
        "asin": "B07DEODOR1", "name": "Bright Citrus Deodorant by Earth Mama \u2013 Natural", "category": "beauty",
        "query": "deodorant", "product_category": "Beauty & Personal Care \u203a Deodorants",
        "full_description": "Calendula deodorant for sensitive skin.", "small_description": ["Aluminum free", "Vegan"],
        "pricing": "$10.99 - $20.00", "average_rating": 4.4, "images": ["x.jpg"],
        "customization_options": {"Scent": [{"value": "Bright Citrus", "image": None}, {"value": "Lavender/Mint"}],
                                  "Size": [{"value": "3 Ounce (Pack of 1)"}, {"value": "3 Ounce (Pack of 2)"}]},
    },
    {
        "asin": "B07SHAMPO2", "name": "Argan Oil Shampoo", "category": "beauty", "query": "shampoo",
        "product_category": "Beauty \u203a Hair Care", "full_description": "Sulfate free shampoo.",
        "small_description": "Sulfate free, paraben free", "pricing": "$24.50", "customization_options": None,
    },
    {"asin": "B07SHAMPO2", "name": "a repeat, skipped", "query": "x", "category": "x", "pricing": "$1"},
    {"asin": "nan", "name": "no asin, skipped", "query": "x", "category": "x", "pricing": "$1"},
    {
        "asin": "B07MUGMUG3", "name": "Ceramic Coffee Mug", "category": "garden", "query": "coffee mug",
        "full_description": "", "small_description": [], "pricing": "", "customization_options": {},
    },
]
ATTRIBUTES = {
    "B07DEODOR1": {"attributes": ["aluminum free", "long lasting"], "instruction": "i want a long lasting deodorant",
                   "instruction_attributes": ["long lasting"]},
    "B07SHAMPO2": {"attributes": ["sulfate free"], "instruction": "find me a sulfate free shampoo",
                   "instruction_attributes": ["sulfate free"]},
}
HUMAN = {
    "B07DEODOR1": [
        {"instruction": "I need a long lasting deodorant in bright citrus, 3 ounce (pack of 1).",
         "instruction_attributes": ["long lasting"], "instruction_options": ["bright citrus", "3 ounce (pack of 1)"]},
        {"instruction": "no attributes: WebShop skips it", "instruction_attributes": [], "instruction_options": []},
    ],
    "B07SHAMPO2": [{"instruction": "Sulfate free shampoo please", "instruction_attributes": ["sulfate free"],
                    "instruction_options": []}],
}


# The sample holds a repeated asin and an asin of "nan", which the loader skips with a warning.
pytestmark = pytest.mark.filterwarnings("ignore:WebShop data in .* skipped:UserWarning")


@pytest.fixture
def webshop_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CREDITGYM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "webshop"
    folder.mkdir()
    (folder / "items_shuffle_1000.json").write_text(json.dumps(PRODUCTS))
    (folder / "items_ins_v2.json").write_text(json.dumps(ATTRIBUTES))
    (folder / "items_human_ins.json").write_text(json.dumps(HUMAN))
    return folder


def test_products_are_parsed_like_webshop(webshop_dir: Path) -> None:
    with pytest.warns(UserWarning, match="skipped 1 without a valid asin, 1 repeating an asin"):
        products, goals = read_webshop(webshop_dir)
    assert [p.id for p in products] == ["B07DEODOR1", "B07SHAMPO2", "B07MUGMUG3"]
    deodorant, shampoo, mug = products
    assert deodorant.title == "Bright Citrus Deodorant by Earth Mama - Natural"  # folded to ASCII
    assert deodorant.price == 10.99 and shampoo.price == 24.5 and mug.price == 100.0
    assert deodorant.options == {"scent": ("bright citrus", "lavender | mint"),
                                 "size": ("3 ounce (pack of 1)", "3 ounce (pack of 2)")}
    assert deodorant.attributes == ("aluminum free", "long lasting") and deodorant.rating == 4.4
    assert shampoo.features == ("Sulfate free, paraben free",) and shampoo.options == {}
    assert deodorant.product_type == "deodorant" and mug.product_type == "coffee mug"
    assert [(g["product_id"], g["attributes"]) for g in goals] == [
        ("B07DEODOR1", ["long lasting"]), ("B07SHAMPO2", ["sulfate free"]),
    ]


def test_env_plays_webshop_human_goals(webshop_dir: Path) -> None:
    catalog = load_webshop(webshop_dir)
    assert len(catalog) == 3 and catalog.search("citrus deodorant")[0] == catalog.row_of("B07DEODOR1")
    assert len(catalog.instruction_rows("train")) == 2 and len(catalog.instruction_rows("test")) == 0
    env = ShopEnv(webshop_dir=webshop_dir)
    expert, rewards = ShopExpert(), []
    for seed in range(6):
        obs, info = env.reset(seed=seed)
        assert "price lower than" in obs and info["goal"]["product_id"] in {"B07DEODOR1", "B07SHAMPO2"}
        terminated = truncated = False
        while not (terminated or truncated):
            obs, reward, terminated, truncated, info = env.step(expert(env))
        rewards.append(reward)
        assert info["success"]
    assert rewards == [1.0] * 6
    with pytest.raises(ValueError, match="has no test goals"):
        ShopEnv(webshop_dir=webshop_dir, split="test").reset(seed=0)


def test_synthetic_goals_draw_options_at_reset(webshop_dir: Path) -> None:
    env = ShopEnv(catalog=load_webshop(webshop_dir, goals="synthetic"))
    instructions = set()
    for seed in range(20):
        _, info = env.reset(seed=seed)
        instructions.add(info["goal"]["instruction"])
        if info["goal"]["product_id"] == "B07DEODOR1":
            assert " with scent: " in info["goal"]["instruction"]
    assert len(instructions) > 2


def test_catalog_is_cached_and_missing_files_are_explained(webshop_dir: Path) -> None:
    first = load_webshop(webshop_dir)
    assert load_webshop(webshop_dir).path == first.path
    (webshop_dir / "items_human_ins.json").unlink()
    with pytest.raises(FileNotFoundError, match="items_human_ins.json"):
        load_webshop(webshop_dir)
    with pytest.raises(FileNotFoundError, match="items_shuffle"):
        load_webshop(webshop_dir.parent)


def test_option_values_that_read_like_other_labels_can_be_chosen(webshop_dir: Path) -> None:
    # "Description" is also a button, and "black" is a value of both options: each is shown as "name: value".
    mug = {"asin": "B07MUGMUG4", "name": "Enamel Camping Mug", "category": "garden", "query": "camping mug",
           "pricing": "$12.00", "customization_options": {
               "Color": [{"value": "Black"}, {"value": "Description"}, {"value": "Red"}],
               "Lid": [{"value": "Black"}, {"value": "None"}]}}
    (webshop_dir / "items_shuffle_1000.json").write_text(json.dumps([*PRODUCTS, mug]))
    env = ShopEnv(webshop_dir=webshop_dir)
    env.reset(seed=0)
    env.step("search[enamel camping mug]")
    obs, *_ = env.step("click[B07MUGMUG4]")
    assert "color: [color: black] [color: description] [red]" in obs and "lid: [lid: black] [none]" in obs
    for action, chosen in [("click[Color: Description]", {"color": "description"}),
                           ("click[lid: black]", {"color": "description", "lid": "black"}),
                           ("click[color: black]", {"color": "black", "lid": "black"}),
                           ("click[red]", {"color": "red", "lid": "black"})]:
        _, _, _, _, info = env.step(action)
        assert not info["invalid_action"] and env.state()["chosen_options"] == chosen, action
    obs, *_ = env.step("click[Description]")
    assert env.state()["page"] == "description"
    goal = Goal("buy the camping mug in description with a black lid", "B07MUGMUG4", "camping mug", "garden", (),
                {"color": "description", "lid": "black"})
    env.reset(seed=0, options={"goal": goal})
    expert, terminated, steps = ShopExpert(), False, 0
    while not terminated and steps < 10:
        _, reward, terminated, _, info = env.step(expert(env))
        steps += 1
    assert info["success"] and info["reward_details"]["options_matched"] == ["description", "black"], info


def test_option_values_with_spaced_slashes_are_clickable(webshop_dir: Path) -> None:
    # "Lavender / Mint" was shown as "lavender  |  mint" (two spaces) and no typed or copied click matched it
    spray = {"asin": "B07SPRAY05", "name": "Room Spray", "category": "beauty", "query": "room spray",
             "pricing": "$8.00", "customization_options": {"Scent": [{"value": "Lavender / Mint"}, {"value": "Rose"}]}}
    (webshop_dir / "items_shuffle_1000.json").write_text(json.dumps([*PRODUCTS, spray]))
    env = ShopEnv(webshop_dir=webshop_dir)
    env.reset(seed=0)
    env.step("search[room spray]")
    _, _, _, _, info = env.step("click[B07SPRAY05]")
    option = next(action for action in info["available_actions"] if "mint" in action)
    assert option == "click[lavender | mint]"
    _, _, _, _, info = env.step(option)
    assert not info["invalid_action"] and env.state()["chosen_options"] == {"scent": "lavender | mint"}


def test_human_goals_keep_every_requested_option(webshop_dir: Path) -> None:
    # WebShop divides by every instruction option: black and white socks bought in black score 4/5, not 1
    socks = {"asin": "B0SOCKS001", "name": "Athletic Socks", "category": "fashion", "query": "socks",
             "full_description": "cotton socks", "pricing": "$10.99", "customization_options": {
                 "Color": [{"value": "Black"}, {"value": "White"}], "Size": [{"value": "Large"}]}}
    human = {"B0SOCKS001": [{"instruction": "cotton socks in black and white, large",
                             "instruction_attributes": ["cotton"], "instruction_options": ["black", "white", "large"]}]}
    (webshop_dir / "items_shuffle_1000.json").write_text(json.dumps([socks]))
    (webshop_dir / "items_human_ins.json").write_text(json.dumps(human))
    env, expert = ShopEnv(webshop_dir=webshop_dir), ShopExpert()
    _, info = env.reset(seed=0)
    assert sorted(info["goal"]["options"].values()) == ["black", "large", "white"]
    terminated = truncated = False
    while not (terminated or truncated):  # the expert buys what can be bought instead of clicking until time is up
        _, reward, terminated, truncated, info = env.step(expert(env))
    assert terminated and reward == pytest.approx(4 / 5) and not info["success"]


def test_search_page_explains_itself_and_long_actions_are_named(webshop_dir: Path) -> None:
    env = ShopEnv(webshop_dir=webshop_dir)
    observation, _ = env.reset(seed=0)
    assert "[" not in observation.split("Type search[your query]")[0]  # no label that cannot be clicked
    observation, *_ = env.step("<think>" + "x" * 1000 + "</think>search[" + "deodorant " * 50 + "]")
    assert "characters; the limit is 400" in observation
    observation, *_ = env.step("<think>" + "x" * 1000 + "</think>look around")
    assert "write search[your query] or click[label]" in observation
    with pytest.raises(ValueError, match="instruction files hold none"):
        ShopEnv(webshop_dir=webshop_dir, split="test").reset(seed=0)
