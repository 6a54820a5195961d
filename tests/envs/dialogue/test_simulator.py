"""The simulated users: truthful, brief, no adopting of leading questions; the LLM back end via a fake model."""

from __future__ import annotations

import numpy as np
import pytest

from creditgym.envs.dialogue.scenarios import DOMAINS, Scenario, generate_scenario
from creditgym.envs.dialogue.simulator import EVERYTHING_SAID, LLMUser, RuleBasedUser
from creditgym.llm.chat import ChatModel

USER = Scenario(
    domain="laptop",
    opening="Hi, I need a new laptop.",
    hidden={"budget": "$1200", "os": "Linux", "ram": "32 GB"},
    patience=9,
)


def ask(question: str, revealed: tuple[str, ...] = (), simulator: RuleBasedUser | None = None):
    return (simulator or RuleBasedUser()).reply(USER, revealed, [], question)


def test_answers_truthfully_and_briefly() -> None:
    reply = ask("What is your budget?")
    assert reply.text == "My budget is about $1200."
    assert reply.revealed == ("budget",)
    reply = ask("Which operating system and how much memory?")
    assert "Linux" in reply.text and "32 GB" in reply.text
    assert reply.revealed == ("os", "ram")


def test_answers_at_most_max_answers_slots() -> None:
    reply = ask("Budget, OS and RAM?", simulator=RuleBasedUser(max_answers=1))
    assert reply.revealed == ("budget",)
    assert "Linux" not in reply.text


def test_irrelevant_questions_get_dont_know_or_dont_care() -> None:
    off_topic = ask("What is your favourite colour?")
    assert "don't know" in off_topic.text and off_topic.revealed == ()
    not_cared = ask("What screen size do you want?")  # a slot of the domain this user does not care about
    assert "don't care" in not_cared.text and not_cared.revealed == ()


def test_leading_questions_are_not_accepted_as_fact() -> None:
    wrong = ask("You want Windows, right?")
    assert wrong.text.startswith("No") and "Linux" in wrong.text
    assert wrong.revealed == ("os",)
    right = ask("So your budget is $1200?")
    assert right.text.startswith("Yes") and right.revealed == ("budget",)
    # A suggestion for a slot the user does not care about is declined, not adopted.
    uncared = ask("You need a 17 inch screen, don't you?")
    assert "don't care" in uncared.text and "not a requirement" in uncared.text
    assert uncared.revealed == ()


def test_open_questions_reveal_one_requirement_at_a_time() -> None:
    revealed: list[str] = []
    for _ in range(len(USER.hidden)):
        reply = ask("Anything else that matters to you?", tuple(revealed))
        assert len(reply.revealed) == 1
        revealed += reply.revealed
    assert revealed == list(USER.hidden)  # in the user's own order
    assert ask("What else?", tuple(revealed)).text == EVERYTHING_SAID


def test_generator_covers_domains_and_slot_counts() -> None:
    rng = np.random.default_rng(0)
    scenarios = [generate_scenario(rng) for _ in range(400)]
    assert {s.domain for s in scenarios} == set(DOMAINS)
    assert {len(s.hidden) for s in scenarios} == {3, 4, 5, 6}
    for s in scenarios:
        domain = DOMAINS[s.domain]
        assert s.opening in domain.openings
        assert s.patience == len(domain.slots) + 2
        for name, value in s.hidden.items():
            assert value in domain.slot(name).values
    tight = generate_scenario(np.random.default_rng(1), min_slots=5, max_slots=5, tight_patience=True)
    assert tight.patience == 5 + 2
    again = [generate_scenario(np.random.default_rng(0)) for _ in range(2)]
    assert again[0] == again[1]


class FakeChatModel:
    """Answers from a script and records every request."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[list[list[dict]], dict]] = []

    def generate(self, batch: list[list[dict]], **sampling) -> list[str]:
        self.requests.append((batch, sampling))
        return [self.replies.pop(0) for _ in batch]


def test_llm_user_prompt_history_and_truthful_reveals() -> None:
    model = FakeChatModel(["My budget is $1200, definitely not $800.", "No, not Windows \u2014 I use Linux.\x00"])
    assert isinstance(model, ChatModel)
    user = LLMUser(model, sampling={"temperature": 0.0, "max_new_tokens": 40})
    first = user.reply(USER, (), [], "What is your budget?")
    assert first.revealed == ("budget",)  # $800 is named too, but only the true value counts
    second = user.reply(USER, ("budget",), [("What is your budget?", first.text)], "You want Windows, right?")
    assert second.revealed == ("os",)
    assert second.text.isascii() and "\x00" not in second.text
    batch, sampling = model.requests[1]
    assert sampling == {"temperature": 0.0, "max_new_tokens": 40}
    messages = batch[0]
    system = messages[0]["content"]
    assert messages[0]["role"] == "system"
    assert "$1200" in system and "Linux" in system and "32 GB" in system
    assert "screen size" in system  # listed among the things this user does not care about
    assert [m["role"] for m in messages[1:]] == ["assistant", "user", "assistant", "user"]
    assert messages[-1]["content"] == "You want Windows, right?"


def test_llm_user_reply_is_bounded_and_never_empty() -> None:
    user = LLMUser(FakeChatModel(["x" * 5000, "   "]), max_reply_chars=100)
    assert len(user.reply(USER, (), [], "Budget?").text) == 100
    assert user.reply(USER, (), [], "Budget?").text == "..."


@pytest.mark.parametrize("limit", [0, -5, 5000, 2.5, True])
def test_llm_user_reply_limit_must_fit_the_observation(limit) -> None:
    # 5000 put observations past the env's 2048-character space
    with pytest.raises(ValueError, match="max_reply_chars"):
        LLMUser(FakeChatModel([]), max_reply_chars=limit)


def test_llm_user_rejects_non_models() -> None:
    with pytest.raises(TypeError, match="ChatModel"):
        LLMUser(object())  # type: ignore[arg-type]


def test_llm_user_runs_on_a_real_local_transformers_model() -> None:
    # The real HFChatModel path on the tiny offline model: its replies are noise, but the env must carry them
    # (sanitised, in the observation space) and keep every contract.
    import gymnasium as gym
    import torch

    from creditgym.envs.dialogue.simulator import LLMUser
    from creditgym.llm.hf import HFChatModel
    from creditgym.llm.models import tiny_test_model

    torch.set_num_threads(1)
    model, tokenizer = tiny_test_model(seed=0)
    user = LLMUser(HFChatModel(model, tokenizer, max_new_tokens=12))
    env = gym.make("creditgym/Dialogue-Gather-v0", simulator=user)
    obs, info = env.reset(seed=0)
    for question in ("What is your budget?", "", "Where do you want to go?"):
        obs, reward, terminated, truncated, info = env.step(question)
        assert env.observation_space.contains(obs)
        assert sum(info["reward_components"].values()) == reward
        assert info["invalid_action"] == (question == "")
        if terminated or truncated:
            break
