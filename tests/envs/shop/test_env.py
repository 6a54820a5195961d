"""ShopEnv: pages and clicks, rewards at purchase, invalid actions, shaping potential, expert and random play."""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest

import creditgym  # noqa: F401  (registers the ids)
from creditgym.envs.shop.catalog import is_test_product
from creditgym.envs.shop.env import ShopEnv
from creditgym.envs.shop.expert import ShopExpert


@pytest.fixture(scope="module")
def env() -> ShopEnv:
    return ShopEnv()


def _play(env: gym.Env, policy, seed: int, max_steps: int = 15) -> tuple[list[str], list[float], dict]:
    obs, info = env.reset(seed=seed)
    actions, rewards = [], []
    for _ in range(max_steps):
        action = policy(env)
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    return actions, rewards, info


def test_expert_succeeds_on_train_and_test_goals(env: ShopEnv) -> None:
    expert = ShopExpert()
    for split in ("train", "test"):
        env.split = split
        results = [_play(env, expert, seed) for seed in range(50)]
        assert np.mean([info["success"] for *_, info in results]) >= 0.95
        assert np.mean([sum(rewards) for _, rewards, _ in results]) >= 0.95
        assert all(len(actions) <= 12 for actions, *_ in results)
    env.split = "train"


def test_test_split_targets_held_out_products(env: ShopEnv) -> None:
    for split in ("train", "test"):
        env.split = split
        held_out = {is_test_product(env.reset(seed=seed)[1]["goal"]["product_id"]) for seed in range(30)}
        assert held_out == {split == "test"}
    env.split = "train"


def test_random_and_garbage_policies_score_near_zero(env: ShopEnv) -> None:
    rng = np.random.default_rng(0)

    def random_valid(shop: gym.Env) -> str:
        actions = shop.unwrapped.available_actions()
        action = actions[rng.integers(len(actions))]
        if action.startswith("search["):
            words = shop.unwrapped.goal.instruction.split()
            return f"search[{' '.join(words[i] for i in rng.integers(len(words), size=3))}]"
        return action

    def garbage(shop: gym.Env) -> str:
        return "".join(rng.choice(list("abc[]<>/ click search"), size=int(rng.integers(0, 30))))

    random_runs = [_play(env, random_valid, seed) for seed in range(100)]
    assert np.mean([info["success"] for *_, info in random_runs]) <= 0.05
    assert np.mean([info["reward_components"]["task"] for *_, info in random_runs]) < 0.15
    for _, rewards, info in (_play(env, garbage, seed) for seed in range(20)):
        assert info["invalid_action"] and not info["success"]
        assert all(r <= 0 for r in rewards)


def test_pages_clicks_and_pagination(env: ShopEnv) -> None:
    obs, info = env.reset(seed=3)
    assert obs.startswith("Instruction: ") and info["available_actions"] == ["search[<your query>]"]
    obs, reward, terminated, _, info = env.step("search[machine washable t-shirt]")
    assert env.state()["page"] == "results" and env.state()["num_results"] == 50
    first_page = env.state()["results_on_page"]
    assert len(first_page) == 10 and all(f"[{pid}]" in obs for pid in first_page)
    assert info["available_actions"][:2] == ["click[Back to Search]", "click[Next >]"]
    env.step("click[next >]")
    assert env.state()["results_page"] == 2 and set(env.state()["results_on_page"]).isdisjoint(first_page)
    env.step("click[< Prev]")
    assert env.state()["results_on_page"] == first_page
    obs, *_ = env.step(f"click[{first_page[0].lower()}]")
    product = env.catalog.product(env.catalog.row_of(first_page[0]))
    assert env.state()["item"] == product.id and product.title in obs and "[Buy Now]" in obs
    for name, values in product.options.items():
        assert f"{name}: " + " ".join(f"[{v}]" for v in values) in obs
    obs, *_ = env.step("click[Features]")
    assert env.state()["page"] == "features" and all(feature in obs for feature in product.features)
    env.step("click[< Prev]")
    name, values = next(iter(product.options.items()))
    obs, *_ = env.step(f"click[{values[-1]}]")
    assert env.state()["chosen_options"] == {name: values[-1]} and f"Selected: {name} = {values[-1]}" in obs
    env.step("click[< Prev]")
    assert env.state()["page"] == "results" and env.state()["chosen_options"] == {}
    env.step("click[Back to Search]")
    assert env.state()["page"] == "search" and env.state()["num_results"] == 0


def test_invalid_actions_explain_and_change_nothing(env: ShopEnv) -> None:
    env.reset(seed=0)
    cases = [
        ("click[Buy Now]", "not clickable here. Nothing is clickable here; use search[...]."),
        ("search[]", "write search[your query]"),
        ("search[!!! ???]", "no searchable words"),
        ("hello", "write search[your query]"),
    ]
    for action, message in cases:
        before = env.state()
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["invalid_action"] and message in obs and obs.count("Instruction:") == 1
        assert reward == -0.1 and info["reward_components"] == {"task": 0.0, "format": -0.1}
        assert env.state() == before and not (terminated or truncated)
    env.step("search[coffee]")
    obs, *_, info = env.step("search[tea]")
    assert info["invalid_action"] and "only search on the search page" in obs and env.state()["query"] == "coffee"
    obs, *_, info = env.step("click[Coffee]")
    assert "Clickable: [Back to Search], [Next >], [" in obs


def test_buying_the_wrong_product_pays_partially(env: ShopEnv) -> None:
    env.reset(seed=5)
    goal = env.goal
    env.step(f"search[{goal.product_type}]")
    wrong = next(pid for pid in env.state()["results_on_page"] if pid != goal.product_id)
    env.step(f"click[{wrong}]")
    obs, reward, terminated, truncated, info = env.step("click[Buy Now]")
    details = info["reward_details"]
    assert terminated and not truncated and info["purchased"] == wrong and not info["success"]
    assert 0 < reward < 1 and reward == details["reward"] == info["reward_components"]["task"]
    assert details["r_type"] == 1.0 and details["options_missing"] == list(goal.options.values())
    assert f"Score: {reward:.2f}" in obs
    obs, *_, info = env.step("click[Buy Now]")
    assert info["invalid_action"] and "episode is over" in obs


def test_potential_rises_along_the_expert_path(env: ShopEnv) -> None:
    expert = ShopExpert()
    env.reset(seed=11)
    potentials = [env.potential()]
    terminated = False
    while not terminated:
        *_, terminated, _, _ = env.step(expert(env))
        potentials.append(env.potential())
    assert potentials[0] == 0.0 and potentials[1] == 1.0 and potentials[-1] == 3.0
    assert potentials == sorted(potentials)
    env.reset(seed=11)
    env.step("search[usb cable]" if env.goal.product_type != "usb cable" else "search[coffee]")
    assert env.potential() == 0.0  # no product of the goal's type on screen


def test_time_limit_truncates_without_reward() -> None:
    env = gym.make("creditgym/Shop-v1")
    env.reset(seed=0)
    env.step("search[coffee]")
    env.step(f"click[{env.unwrapped.state()['results_on_page'][0]}]")
    total, truncated, steps = 0.0, False, 2
    while not truncated:
        _, reward, terminated, truncated, info = env.step("click[< Prev]" if steps % 2 else "click[Description]")
        total += reward
        steps += 1
        assert not terminated and not info["invalid_action"]
    assert steps == 15 and total == 0.0 and info["success"] is False


def test_max_invalid_actions_truncates() -> None:
    env = ShopEnv(max_invalid_actions=2)
    env.reset(seed=0)
    assert env.step("nope")[3] is False
    assert env.step("nope")[3] is True


def test_copies_continue_identically_mid_episode(env: ShopEnv) -> None:
    expert = ShopExpert()
    env.reset(seed=21)
    env.step(expert(env))
    env.step(expert(env))  # on the item page
    clones = [pickle.loads(pickle.dumps(env)), copy.deepcopy(env)]
    assert all(clone.state() == env.state() and clone.catalog.path == env.catalog.path for clone in clones)
    trajectory, terminated = [], False
    while not terminated:
        action = expert(env)
        trajectory.append((action, env.step(action)))
        terminated = trajectory[-1][1][2]
    assert trajectory[-1][1][4]["success"] and len(trajectory) >= 2
    for clone in clones:
        assert [clone.step(action) for action, _ in trajectory] == [result for _, result in trajectory]


def test_same_seed_same_episode() -> None:
    a, b = ShopEnv(), ShopEnv()
    assert len({a.reset(seed=seed)[0] for seed in range(10)}) == 10
    assert a.reset(seed=9) == b.reset(seed=9)
    expert_a, expert_b = ShopExpert(), ShopExpert()
    for _ in range(6):
        assert a.step(expert_a(a)) == b.step(expert_b(b))


def test_render_and_arguments() -> None:
    env = ShopEnv(render_mode="ansi")
    obs, _ = env.reset(seed=0)
    assert env.render() == obs
    with pytest.raises(ValueError, match="split must be"):
        ShopEnv(split="valid")
    with pytest.raises(ValueError, match="num_products must be an integer from 1 to 1,000,000, got 1000000000000"):
        ShopEnv(num_products=10**12)  # used to run out of memory generating the catalog
    with pytest.raises(TypeError, match="options\\['goal'\\]"):
        env.reset(options={"goal": "a snack bar"})
