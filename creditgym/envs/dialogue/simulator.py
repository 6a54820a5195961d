"""Simulated users for the information-gathering dialogue.

Two back ends share one interface, `reply(scenario, revealed, history, question) -> UserReply`:

- `RuleBasedUser` (default): deterministic slot and paraphrase matching; fast enough for RL.
- `LLMUser`: any `creditgym.llm.chat.ChatModel` (an OpenAI-compatible server or a local transformers
  model) playing the user, with the hidden profile in its system prompt.

Patience is the environment's business, not the simulator's: both back ends answer every question they get.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from creditgym.envs.dialogue.scenarios import DOMAINS, Scenario
from creditgym.envs.dialogue.text import domain_index, normalize_value, sanitize
from creditgym.llm.chat import ChatModel

#: Questions that ask what the user wants without naming a slot ("Anything else?").
OPEN_QUESTION = re.compile(
    r"anything else|what else|something else|other (?:requirements?|preferences?|needs?|things?)"
    r"|requirements?|preferences?|tell me (?:more|about)|looking for|important to you|matters? (?:most )?to you"
    r"|what do you (?:want|need)|what would you like|care about|what are you after",
    re.IGNORECASE,
)
EVERYTHING_SAID = "That's everything I care about."


@dataclass(frozen=True)
class UserReply:
    """What the user said, and which hidden slots the reply gave away (truthfully)."""

    text: str
    revealed: tuple[str, ...]


class UserSimulator(Protocol):
    def reply(
        self, scenario: Scenario, revealed: Collection[str], history: Sequence[tuple[str, str]], question: str
    ) -> UserReply: ...


class RuleBasedUser:
    """A deterministic user.

    - A question that names a slot (by keyword or by one of its values) gets a brief, true answer for up to
      `max_answers` slots, in the order they are mentioned.
    - A leading question ("You want Linux, right?") is confirmed only when it is right; otherwise the user
      says no and gives the true value. A suggested value for a slot the user does not care about is
      declined, never adopted.
    - A slot the user does not care about gets "I don't care about ...".
    - An open question ("Anything else?") gets the next requirement not yet revealed, or "That's everything".
    - Anything else gets "I don't know".
    """

    def __init__(self, *, max_answers: int = 2) -> None:
        if max_answers < 1:
            raise ValueError("max_answers must be at least 1")
        self.max_answers = max_answers

    def reply(
        self, scenario: Scenario, revealed: Collection[str], history: Sequence[tuple[str, str]], question: str
    ) -> UserReply:
        domain = DOMAINS[scenario.domain]
        mentions = domain_index(scenario.domain).mentions(question)
        if not mentions:
            if OPEN_QUESTION.search(question) is None:
                return UserReply(f"I don't know. That doesn't matter for my {domain.topic}.", ())
            for name, value in scenario.hidden.items():
                if name not in revealed:
                    return UserReply("Another thing: " + domain.slot(name).answer.format(value=value), (name,))
            return UserReply(EVERYTHING_SAID, ())
        sentences: list[str] = []
        told: list[str] = []
        for name, suggested in mentions[: self.max_answers]:
            slot = domain.slot(name)
            if name not in scenario.hidden:
                tail = f", so {suggested} is not a requirement." if suggested else "."
                sentences.append(f"I don't care about the {slot.label}{tail}")
                continue
            answer = slot.answer.format(value=scenario.hidden[name])
            if suggested is None:
                sentences.append(answer)
            elif normalize_value(suggested) == normalize_value(scenario.hidden[name]):
                sentences.append(f"Yes. {answer}")
            else:
                sentences.append(f"No, not {suggested}. {answer}")
            told.append(name)
        return UserReply(" ".join(sentences), tuple(told))


# The most a reply may hold: with the env's goodbye line it stays inside DialogueGatherEnv's 2048-character
# observation space
MAX_REPLY_CHARS = 1500


class LLMUser:
    """A user played by a chat model. The hidden profile goes in the system prompt; the conversation so far
    is replayed with the agent as `user` and the simulated user as `assistant`.

    A slot counts as revealed when the reply names its true value. The reply is cut to `max_reply_chars`
    printable ASCII characters so it always fits the observation space. `reply(..., seed=)` samples with that
    seed unless `sampling` sets one; `DialogueGatherEnv` draws it from its `np_random` for every question, so
    sampled replies follow the env's seed and never the global RNG.
    """

    def __init__(
        self, model: ChatModel, *, sampling: Mapping[str, Any] | None = None, max_reply_chars: int = 400
    ) -> None:
        if not hasattr(model, "generate"):
            raise TypeError("model must implement creditgym.llm.chat.ChatModel (a generate(batch, **sampling))")
        if (isinstance(max_reply_chars, bool) or not isinstance(max_reply_chars, int)
                or not 1 <= max_reply_chars <= MAX_REPLY_CHARS):
            raise ValueError(f"max_reply_chars must be an integer from 1 to {MAX_REPLY_CHARS} (a reply must fit the "
                             f"env's 2048-character observation with the goodbye line), got {max_reply_chars!r}")
        self.model = model
        self.sampling = dict(sampling or {})
        self.max_reply_chars = max_reply_chars

    def system_prompt(self, scenario: Scenario) -> str:
        domain = DOMAINS[scenario.domain]
        wants = "\n".join(f"- {domain.slot(name).label}: {value}" for name, value in scenario.hidden.items())
        ignored = ", ".join(slot.label for slot in domain.slots if slot.name not in scenario.hidden)
        return (
            f"You are a person talking to an assistant about your {domain.topic}. You opened with: "
            f'"{scenario.opening}"\nYour private requirements:\n{wants}\n'
            f"You do not care about: {ignored or 'nothing else'}.\n"
            "Rules: answer only what you are asked, truthfully, in one or two short sentences. Never list all "
            "your requirements at once. If asked about something not in your requirements, say you don't know "
            "or don't care. If a question assumes something that contradicts your requirements, say no and "
            "correct it; never agree with a wrong assumption."
        )

    def reply(
        self, scenario: Scenario, revealed: Collection[str], history: Sequence[tuple[str, str]], question: str,
        *, seed: int | None = None,
    ) -> UserReply:
        messages: list[dict] = [{"role": "system", "content": self.system_prompt(scenario)}]
        messages.append({"role": "assistant", "content": scenario.opening})
        for asked, answered in history:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        messages.append({"role": "user", "content": question})
        sampling = self.sampling if seed is None or self.sampling.get("seed") is not None else {**self.sampling,
                                                                                                 "seed": seed}
        raw = self.model.generate([messages], **sampling)[0]
        text = sanitize(raw if isinstance(raw, str) else "", self.max_reply_chars)
        named = domain_index(scenario.domain).values_in(text)
        truthful = tuple(
            name
            for name, value in scenario.hidden.items()
            if any(normalize_value(said) == normalize_value(value) for said in named.get(name, ()))
        )
        return UserReply(text, truthful)
