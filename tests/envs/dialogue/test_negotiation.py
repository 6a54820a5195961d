"""Deal or No Deal: PettingZoo's own API and seed tests, game rules, and scripted negotiators."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from pettingzoo.test import api_test, parallel_api_test, parallel_seed_test, seed_test

from creditgym.envs.dialogue import negotiation_v0
from creditgym.envs.dialogue.deal import (
    ITEMS,
    POOL_VALUE,
    Accept,
    Chat,
    Invalid,
    NoDeal,
    Offer,
    generate_game,
    parse_action,
    worth,
)
from creditgym.envs.dialogue.negotiation import NegotiationRewards
from creditgym.envs.dialogue.negotiator import ScriptedNegotiator
from creditgym.envs.lifecycle import ResetNeeded


@pytest.fixture(autouse=True)
def _quiet_pettingzoo_warnings():
    # PettingZoo's tests warn that observations are not numpy arrays: text envs are meant to be that way.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_parallel_api() -> None:
    parallel_api_test(negotiation_v0.parallel_env(), num_cycles=200)


def test_aec_api() -> None:
    api_test(negotiation_v0.env(), num_cycles=200)


def test_aec_selects_only_the_player_to_move_and_plays_the_parallel_game() -> None:
    for seed in range(5):
        parallel, aec = negotiation_v0.parallel_env(), negotiation_v0.env()
        _, parallel_infos = parallel.reset(seed=seed)
        aec.reset(seed=seed)
        bots = {agent: ScriptedNegotiator() for agent in aec.possible_agents}
        parallel_returns = dict.fromkeys(aec.possible_agents, 0.0)
        aec_returns = dict.fromkeys(aec.possible_agents, 0.0)
        for agent in aec.agent_iter(100):
            _, reward, terminated, truncated, info = aec.last()
            aec_returns[agent] += reward
            if terminated or truncated:
                aec.step(None)
                continue
            assert info["your_turn"] and parallel_infos[agent]["your_turn"]
            move = bots[agent].act(info)
            _, rewards, _, _, parallel_infos = parallel.step({agent: move})
            for name, value in rewards.items():
                parallel_returns[name] += value
            aec.step(move)
        assert not parallel.agents and aec.agents == []
        assert aec_returns == parallel_returns and any(aec_returns.values())


def test_rewards_can_be_a_mapping() -> None:
    # --env-kwargs and config files can only pass a mapping; it failed at the first step
    env = negotiation_v0.parallel_env(rewards={"invalid_action": -0.5})
    _, infos = env.reset(seed=0)
    me, other = sorted(env.agents, key=lambda a: not infos[a]["your_turn"])
    assert env.step({me: "<propose>bad</propose>"})[1] == {me: -0.5, other: 0.0}
    with pytest.raises(ValueError, match="unknown NegotiationRewards fields"):
        negotiation_v0.parallel_env(rewards={"bonus": 1.0})


def test_running_out_of_moves_pays_no_deal() -> None:
    # Paying 0 at the time limit with no_deal=-1 made stalling better than walking away
    env = negotiation_v0.parallel_env(max_turns=2, rewards=NegotiationRewards(no_deal=-1.0))
    _, infos = env.reset(seed=0)
    me, other = sorted(env.agents, key=lambda a: not infos[a]["your_turn"])
    env.step({me: '<propose>{"books": 0, "hats": 0, "balls": 1}</propose>'})
    observations, rewards, _, truncations, infos = env.step({other: "<propose>nope</propose>"})
    assert all(truncations.values()) and rewards == {me: -1.0, other: -1.0 - 0.1}
    assert infos[me]["reward_components"]["task"] == -1.0
    # The last move's note does not also ask for another move
    assert "still your turn" not in observations[other] and "Time is up: no deal." in observations[other]
    assert "(invalid moves count)" in negotiation_v0.parallel_env().reset(seed=0)[1][me]["instructions"]


@pytest.mark.parametrize("make", [negotiation_v0.parallel_env, negotiation_v0.env])
def test_step_before_reset_and_bad_reset_options_are_refused(make) -> None:
    with pytest.raises(ResetNeeded):
        make().step({"player_0": "<nodeal>"} if make is negotiation_v0.parallel_env else "<nodeal>")
    with pytest.raises(TypeError, match="reset options must be a dict"):
        make().reset(seed=0, options=[1])


def test_seeding() -> None:
    seed_test(negotiation_v0.env, num_cycles=50)
    parallel_seed_test(negotiation_v0.parallel_env, num_cycles=50)


def test_games_follow_the_rules() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts, values = generate_game(rng)
        assert 5 <= sum(counts) <= 7 and all(1 <= c <= 4 for c in counts)
        assert worth(counts, values[0]) == worth(counts, values[1]) == POOL_VALUE
        assert all(a or b for a, b in zip(*values, strict=True))
        assert any(a and b for a, b in zip(*values, strict=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<propose>{"books": 1, "hats": 0, "balls": 2}</propose>', Offer((1, 0, 2))),
        (' <PROPOSE>{"balls": 0, "books": 2, "hats": 1}</propose> ', Offer((2, 1, 0))),
        ("<accept>", Accept()),
        (" <Accept/> ", Accept()),
        ("<nodeal>", NoDeal()),
        ("I really need the hats.", Chat("I really need the hats.")),
    ],
)
def test_parse_valid_moves(text: str, expected) -> None:
    assert parse_action(text, (2, 1, 2)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  ",
        "!!!",
        '<propose>{"books": 3, "hats": 0, "balls": 0}</propose>',  # more books than the pool has
        '<propose>{"books": 1, "hats": 0}</propose>',  # missing an item
        '<propose>{"books": 1, "hats": 0, "balls": 0, "cars": 1}</propose>',
        '<propose>{"books": 1.5, "hats": 0, "balls": 0}</propose>',
        '<propose>{"books": true, "hats": 0, "balls": 0}</propose>',
        "<propose>nope</propose>",
        '<propose>{"books": 1, "hats": 0, "balls": 0}',
        "<accept> sounds good",
        "<nodeal><accept>",
        "x" * 600,
        None,
    ],
)
def test_parse_invalid_moves(text) -> None:
    assert isinstance(parse_action(text, (2, 1, 2)), Invalid)


def _first_turn(env):
    obs, infos = env.reset(seed=7)
    me = next(a for a in env.agents if infos[a]["your_turn"])
    other = next(a for a in env.agents if a != me)
    return me, other, obs, infos


def test_a_deal_pays_each_player_its_share() -> None:
    env = negotiation_v0.parallel_env()
    me, other, _, infos = _first_turn(env)
    counts = infos[me]["counts"]
    keep = {item: count // 2 for item, count in zip(ITEMS, counts, strict=True)}
    obs, rewards, _, _, infos = env.step({me: f"<propose>{json.dumps(keep)}</propose>", other: "ignored"})
    assert "Partner proposes" in obs[other] and infos[other]["your_turn"]
    given = [c - k for c, k in zip(counts, keep.values(), strict=True)]
    assert infos[other]["partner_offer"] == given and rewards == {me: 0.0, other: 0.0}
    obs, rewards, terminations, truncations, infos = env.step({me: "<nodeal>", other: "<accept>"})
    assert all(terminations.values()) and not any(truncations.values()) and env.agents == []
    assert rewards[me] == worth(tuple(keep.values()), tuple(infos[me]["values"]))
    assert rewards[other] == worth(tuple(given), tuple(infos[other]["values"]))
    assert infos[me]["deal"] == list(keep.values()) and infos[other]["deal"] == given
    assert infos[me]["success"] and infos[other]["success"]
    assert rewards[me] == infos[me]["reward_components"]["task"]


def test_invalid_moves_keep_the_turn_and_change_nothing() -> None:
    env = negotiation_v0.parallel_env(rewards=NegotiationRewards(invalid_action=-0.5))
    me, other, _, _ = _first_turn(env)
    before = env.state()
    obs, rewards, _, _, infos = env.step({me: "<accept>", other: "<accept>"})  # nothing to accept yet
    assert "invalid" in obs[me].lower() and infos[me]["invalid_action"] and not infos[other]["invalid_action"]
    assert rewards == {me: -0.5, other: 0.0} and infos[me]["reward_components"] == {"task": 0.0, "format": -0.5}
    assert infos[me]["your_turn"]
    after = env.state()
    assert after.pop("turn_count") == before.pop("turn_count") + 1 and after == before


def test_no_deal_and_time_limit_pay_nothing() -> None:
    env = negotiation_v0.parallel_env()
    me, other, _, _ = _first_turn(env)
    _, rewards, terminations, _, infos = env.step({me: "<nodeal>", other: "x"})
    assert rewards == {me: 0.0, other: 0.0} and all(terminations.values()) and not infos[me]["success"]
    env = negotiation_v0.parallel_env(max_turns=4)
    obs, infos = env.reset(seed=1)
    previous = None
    for _ in range(4):
        acting = next(a for a in env.agents if infos[a]["your_turn"])
        assert acting != previous  # a valid chat message passes the turn
        previous = acting
        obs, rewards, terminations, truncations, infos = env.step({a: "Hello there" for a in env.agents})
    assert all(truncations.values()) and not any(terminations.values()) and env.agents == []
    assert all(not info["success"] for info in infos.values())


def test_scripted_negotiators_make_deals() -> None:
    env = negotiation_v0.parallel_env()
    deals, total = 0, 0.0
    episodes = 100
    for episode in range(episodes):
        _, infos = env.reset(seed=episode)
        bots = {agent: ScriptedNegotiator() for agent in env.agents}
        while env.agents:
            actions = {a: bots[a].act(infos[a]) if infos[a]["your_turn"] else "" for a in env.agents}
            _, rewards, _, _, infos = env.step(actions)
        deals += infos["player_0"]["success"]
        total += sum(rewards.values())
    assert deals / episodes >= 0.8
    assert total / episodes >= 10.0  # together they do better than splitting a pool worth 10 to each evenly


def test_reset_gives_each_player_the_rules_as_instructions() -> None:
    env = negotiation_v0.parallel_env(max_turns=6)
    _, infos = env.reset(seed=0)
    texts = {infos[agent]["instructions"] for agent in env.agents}
    assert len(texts) == 1  # the rules are public; the values stay in each player's own observation
    (text,) = texts
    assert all(move in text for move in ("<propose>", "<accept>", "<nodeal>")) and "after 6 moves" in text
