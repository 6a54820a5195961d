"""Dialogue-Gather: scoring, patience, invalid messages, revealed slots, and a solvable task."""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import pytest

from creditgym.envs.dialogue import negotiation_v0
from creditgym.envs.dialogue.env import GOODBYE, DialogueGatherEnv, GatherRewards
from creditgym.envs.dialogue.questioner import RuleBasedQuestioner
from creditgym.envs.dialogue.scenarios import Scenario
from creditgym.envs.dialogue.simulator import LLMUser
from creditgym.envs.testing import check_conformance

USER = Scenario(
    domain="trip",
    opening="Hi, I want to plan a trip.",
    hidden={"destination": "Tokyo", "month": "June", "budget": "$4000", "travellers": "2 people"},
    patience=4,
)


def make(**kwargs) -> DialogueGatherEnv:
    env = DialogueGatherEnv(**kwargs)
    env.reset(seed=0, options={"scenario": USER})
    return env


def run_questioner(env_id: str, strategy: str, episodes: int) -> float:
    env = gym.make(env_id)
    questioner = RuleBasedQuestioner(strategy=strategy)
    successes = 0
    for episode in range(episodes):
        obs, info = env.reset(seed=episode)
        questioner.reset(obs, info)
        terminated = truncated = False
        while not (terminated or truncated):
            obs, _, terminated, truncated, info = env.step(questioner.act(obs))
        successes += info["success"]
    return successes / episodes


def test_rule_based_questioner_solves_the_task() -> None:
    assert run_questioner("creditgym/Dialogue-Gather-v0", "enumerate", 200) >= 0.9
    assert run_questioner("creditgym/Dialogue-Gather-Hard-v0", "open", 200) >= 0.9


def test_hard_variant_punishes_enumerating_the_schema() -> None:
    assert run_questioner("creditgym/Dialogue-Gather-Hard-v0", "enumerate", 100) < 0.75


def test_reset_info_and_observation() -> None:
    env = DialogueGatherEnv()
    obs, info = env.reset(seed=3, options={"scenario": USER})
    assert obs == USER.opening
    assert info["domain"] == "trip"
    assert "destination" in info["slot_values"] and "Tokyo" in info["slot_values"]["destination"]
    assert "<propose>" in info["instructions"] and "Tokyo" in info["instructions"]
    assert info["revealed_slots"] == {} and info["num_hidden_slots"] == 4
    assert info["reward_components"] == {"task": 0.0, "format": 0.0}


def test_proposal_pays_the_fraction_of_slots_right() -> None:
    env = make()
    proposal = {"destination": "tokyo", "month": "July", "budget": 4000, "travellers": "2 People", "car": 1}
    obs, reward, terminated, truncated, info = env.step(f"<propose>{json.dumps(proposal)}</propose>")
    assert info["invalid_action"] is True  # "car" is not a slot
    proposal.pop("car")
    proposal["transport"] = "plane"  # a slot the user does not care about: ignored
    obs, reward, terminated, truncated, info = env.step(f"<propose>{json.dumps(proposal)}</propose>")
    assert reward == pytest.approx(0.75) and info["reward_components"]["task"] == pytest.approx(0.75)
    assert terminated and not truncated and not info["success"] and info["correct_slots"] == 3
    assert "3 of my 4" in obs
    env = make()
    right = json.dumps(USER.hidden)
    _, reward, terminated, _, info = env.step(f"<propose>{right}</propose>")
    assert reward == 1.0 and terminated and info["success"]


def test_revealed_slots_accumulate_in_order() -> None:
    env = make()
    _, _, _, _, info = env.step("When do you want to travel?")
    assert info["revealed_slots"] == {"month": "June"}
    _, _, _, _, info = env.step("What kind of accommodation?")  # not cared about
    assert info["revealed_slots"] == {"month": "June"}
    _, _, _, _, info = env.step("Where to, and for how many people?")
    assert list(info["revealed_slots"]) == ["month", "destination", "travellers"]
    assert env.potential() == pytest.approx(3 / 4)


def test_user_leaves_when_patience_runs_out() -> None:
    env = make(rewards=GatherRewards(question=-0.01, abandoned=-1.0))
    for _ in range(USER.patience - 1):
        _, reward, terminated, _, _ = env.step("What is your favourite colour?")
        assert not terminated and reward == pytest.approx(-0.01)
    obs, reward, terminated, truncated, info = env.step("Where do you want to go?")
    assert obs.startswith("I want to go to Tokyo.") and obs.endswith(GOODBYE)
    assert terminated and not truncated and not info["success"]
    assert reward == pytest.approx(-1.01) and info["reward_components"] == {"task": pytest.approx(-1.01), "format": 0.0}
    # After the end, nothing more reaches the user.
    state = env.state()
    obs, reward, _, _, info = env.step("What is your budget?")
    assert info["invalid_action"] and "invalid" in obs.lower() and env.state() == state


@pytest.mark.parametrize("message", ["", "   ", "Tell me your budget.", "<propose>{oops}</propose>", None, "x" * 5000])
def test_invalid_messages_change_nothing_and_cost_format(message) -> None:
    env = make(rewards=GatherRewards(invalid_action=-0.25))
    env.step("What is your budget?")
    before = copy.deepcopy(env.state())
    obs, reward, terminated, truncated, info = env.step(message)
    assert info["invalid_action"] is True
    assert reward == -0.25 and info["reward_components"] == {"task": 0.0, "format": -0.25}
    assert "invalid" in obs.lower() and env.observation_space.contains(obs)
    assert env.state() == before and not terminated and not truncated
    assert env.state()["patience_left"] == USER.patience - 1  # invalid messages cost no patience


def test_max_invalid_actions_truncates() -> None:
    env = make(max_invalid_actions=2)
    assert not env.step("")[3]
    assert env.step("")[3]


def test_render_transcript_and_constructor_errors() -> None:
    env = DialogueGatherEnv(render_mode="ansi")
    env.reset(seed=0, options={"scenario": USER})
    env.step("Where do you want to go?")
    assert env.render().splitlines() == [
        "User: Hi, I want to plan a trip.",
        "Agent: Where do you want to go?",
        "User: I want to go to Tokyo.",
    ]
    with pytest.raises(ValueError, match="domains"):
        DialogueGatherEnv(domains=["spaceflight"])
    with pytest.raises(ValueError, match="min_slots"):
        DialogueGatherEnv(min_slots=5, max_slots=4)
    with pytest.raises(TypeError, match="Scenario"):
        DialogueGatherEnv().reset(options={"scenario": {"domain": "trip"}})


class ScriptedChatModel:
    """A deterministic, picklable stand-in for a chat model: answers budget questions from the profile in
    its system prompt and says it does not know anything else."""

    def generate(self, batch: list[list[dict]], **sampling) -> list[str]:
        replies = []
        for messages in batch:
            question = messages[-1]["content"].lower()
            budget = [line for line in messages[0]["content"].splitlines() if line.startswith("- budget")]
            if "budget" in question and budget:
                replies.append(f"My budget is {budget[0].split(': ')[1]}.")
            else:
                replies.append("I don't know.")
        return replies


def test_llm_simulator_drives_the_env() -> None:
    env = DialogueGatherEnv(simulator=LLMUser(ScriptedChatModel()))
    env.reset(seed=0, options={"scenario": USER})
    obs, _, _, _, info = env.step("What is your budget?")
    assert obs == "My budget is $4000." and info["revealed_slots"] == {"budget": "$4000"}
    obs, _, _, _, info = env.step("Where to?")
    assert obs == "I don't know." and info["revealed_slots"] == {"budget": "$4000"}


def test_llm_simulator_env_meets_the_contracts() -> None:
    check_conformance(lambda **kw: DialogueGatherEnv(simulator=LLMUser(ScriptedChatModel()), **kw), num_steps=60)


@pytest.mark.parametrize(("scenario", "field"), [
    (Scenario("trip", "Hi", {}, 3), "hidden"),                    # divided by zero at the proposal
    (Scenario("trip", "Hi", {"bogus": "x"}, 3), "hidden"),        # KeyError at an open question
    (Scenario("trip", "Hi", {"month": "Juin"}, 3), "hidden"),     # a value the user could never say
    (Scenario("trip", "", {"month": "June"}, 3), "opening"),      # the reset observation outside the space
    (Scenario("trip", "Hi \u00e9", {"month": "June"}, 3), "opening"),
    (Scenario("trip", "Hi", {"month": "June"}, 0), "patience"),   # the user left after the first question
])
def test_hand_made_scenarios_are_checked_at_reset(scenario: Scenario, field: str) -> None:
    with pytest.raises(ValueError, match=rf"options\['scenario'\]\.{field}"):
        DialogueGatherEnv().reset(seed=0, options={"scenario": scenario})


def test_non_string_actions_of_any_type_get_ascii_feedback() -> None:
    strange = type("\u65e5\u672c", (), {})()  # a class whose name is not ASCII
    env = make()
    observation, *_ = env.step(strange)
    assert env.observation_space.contains(observation)
    negotiation = negotiation_v0.parallel_env()
    _, infos = negotiation.reset(seed=0)
    me = next(a for a in negotiation.agents if infos[a]["your_turn"])
    observations, *_ = negotiation.step({me: strange})
    assert negotiation.observation_space(me).contains(observations[me])
