"""The information-gathering dialogue: find out what the user wants, then propose."""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from creditgym.envs.arguments import FiniteRewards, flag, positive_int, reward_sizes
from creditgym.envs.dialogue.scenarios import DOMAINS, Scenario, generate_scenario
from creditgym.envs.dialogue.simulator import LLMUser, RuleBasedUser, UserSimulator
from creditgym.envs.dialogue.text import (
    MAX_MESSAGE_CHARS,
    Invalid,
    Proposal,
    describe_invalid,
    normalize_value,
    parse_action,
)
from creditgym.envs.lifecycle import require_reset
from creditgym.envs.options import reset_option
from creditgym.envs.text_space import TextSpace

MAX_OBSERVATION_LENGTH = 2048
GOODBYE = "Sorry, I've answered enough questions. Goodbye."


@dataclass(frozen=True)
class GatherRewards(FiniteRewards):
    """Reward sizes. `proposal` is paid times the fraction of hidden slots the proposal gets right."""

    proposal: float = 1.0
    question: float = 0.0
    abandoned: float = 0.0
    invalid_action: float = -0.1


class DialogueGatherEnv(gym.Env):
    """Ask a simulated user questions until you know their hidden requirements, then propose.

    ## Description
    After "Teaching language models to gather information proactively" and IGPO. Each episode draws a user
    from a seeded generator (`creditgym.envs.dialogue.scenarios`): a domain (laptop, trip, restaurant,
    apartment), 3 to 6 hidden slots out of the domain's seven with one value each, a vague opening line and
    a patience. The user is simulated by `RuleBasedUser` (deterministic, default) or `LLMUser` (a chat
    model, passed as `simulator=`; each question's sampling seed is drawn with `self.np_random`).

    ## Action Space
    `Text`: one message per step, read by `creditgym.envs.dialogue.text.parse_action`. A question is any
    message with a `?` and a word; the final answer is `<propose>{"slot": "value", ...}</propose>` with slot
    names from `info["slot_values"]`. Invalid: non-strings, empty or whitespace-only messages, messages over
    1000 characters, statements without `?`, malformed proposals (bad JSON, unknown slots, non-scalar
    values, missing or repeated tags) and any message after the conversation ended.

    ## Observation Space
    `Text` (printable ASCII): the user's latest message (the opening request after reset), or feedback
    starting with "Invalid message" after an invalid one.

    ## Starting State
    A scenario drawn with `self.np_random`, or `options={"scenario": Scenario}`.

    ## Reward
    Sizes in `GatherRewards`: `proposal` (1.0) times the fraction of hidden slots the proposal gets right,
    `question` (0) per question, `abandoned` (0) when the user runs out of patience, `invalid_action` (-0.1).

    ## Reward components
    `task` (proposal, question and abandonment rewards) and `format` (invalid messages).

    ## Episode End
    Terminated by a proposal, or when the user's patience runs out (it answers the last question, then
    leaves). Truncated by the registered time limit, or after `max_invalid_actions` invalid messages.

    ## Info
    Every step: `reward_components`, `success` (a proposal with every hidden slot right),
    `invalid_action`, `revealed_slots` (hidden slots the user has stated so far, name -> value, in order,
    for information-gain rewards) and `num_hidden_slots`. Reset adds `instructions`, `domain` and
    `slot_values` (every slot of the domain with its possible values), and with `expose_ground_truth=True` also
    `ground_truth` (see `ground_truth()`); a proposal adds `correct_slots`.

    ## Arguments
    `domains` (subset of "laptop", "trip", "restaurant", "apartment"), `min_slots`, `max_slots`,
    `patience_bonus`, `tight_patience` (see `generate_scenario`), `simulator`, `rewards`,
    `max_invalid_actions`, `render_mode` ("ansi": the transcript), `expose_ground_truth` (default False; True puts the
    correct proposal in the reset info for training-time reward models such as IGPO; the observations never show it).

    ## Registered IDs
    `creditgym/Dialogue-Gather-v0` (3-6 hidden slots, patience = 7 + 2) and `creditgym/Dialogue-Gather-Hard-v0`
    (5-6 hidden slots, patience = hidden slots + 2, so enumerating the schema runs out of patience).

    ## Version History
    - v0: initial release.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        *,
        domains: Sequence[str] | None = None,
        min_slots: int = 3,
        max_slots: int = 6,
        patience_bonus: int = 2,
        tight_patience: bool = False,
        simulator: UserSimulator | None = None,
        rewards: GatherRewards | Mapping[str, float] | None = None,
        max_invalid_actions: int | None = None,
        render_mode: str | None = None,
        expose_ground_truth: bool = False,
    ) -> None:
        if domains is not None and (isinstance(domains, str) or not isinstance(domains, Sequence)
                                    or not all(isinstance(name, str) for name in domains)):
            raise ValueError(f"domains must be a list of domain names from {sorted(DOMAINS)}, or None, got {domains!r}")
        min_slots, max_slots = positive_int("min_slots", min_slots), positive_int("max_slots", max_slots)
        patience_bonus = positive_int("patience_bonus", patience_bonus)
        max_invalid_actions = positive_int("max_invalid_actions", max_invalid_actions, optional=True)
        tight_patience, expose_ground_truth = flag("tight_patience", tight_patience), flag("expose_ground_truth",
                                                                                             expose_ground_truth)
        if simulator is not None and not callable(getattr(simulator, "reply", None)):
            raise ValueError(f"simulator must be a UserSimulator (an object with a reply() method, such as "
                             f"RuleBasedUser or LLMUser) or None, got {type(simulator).__name__}")
        self.domains = tuple(domains) if domains is not None else tuple(DOMAINS)
        unknown = set(self.domains) - set(DOMAINS)
        if unknown or not self.domains:
            raise ValueError(f"domains must be a non-empty subset of {sorted(DOMAINS)}, got {domains!r}")
        fewest = min(len(DOMAINS[name].slots) for name in self.domains)
        if not 1 <= min_slots <= max_slots <= fewest:
            raise ValueError(f"need 1 <= min_slots <= max_slots <= {fewest}, got {min_slots} and {max_slots}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.min_slots, self.max_slots = min_slots, max_slots
        self.patience_bonus = patience_bonus
        self.tight_patience = tight_patience
        self.simulator: UserSimulator = simulator if simulator is not None else RuleBasedUser()
        self.rewards = reward_sizes(GatherRewards, rewards)
        self.max_invalid_actions = max_invalid_actions
        self.render_mode = render_mode
        self.expose_ground_truth = expose_ground_truth
        self.action_space = TextSpace(max_length=MAX_MESSAGE_CHARS, charset=string.printable)
        self.observation_space = TextSpace(
            max_length=MAX_OBSERVATION_LENGTH, min_length=1, charset=string.printable
        )

        self._scenario = Scenario(domain=self.domains[0], opening="", hidden={}, patience=0)
        self._revealed: dict[str, str] = {}
        self._history: list[tuple[str, str]] = []
        self._patience_left = 0
        self._proposal: dict[str, Any] | None = None
        self._finished = False
        self._invalid_count = 0
        self._has_reset = False

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        require_reset(self._has_reset, "step")
        if self._finished:
            return self._invalid_step("the conversation is over; call reset()")
        parsed = parse_action(action, self._slot_names)
        if isinstance(parsed, Invalid):
            return self._invalid_step(parsed.reason)
        if isinstance(parsed, Proposal):
            return self._propose(parsed)
        if isinstance(self.simulator, LLMUser):  # a sampled reply: its seed comes from np_random, as all randomness
            seed = int(self.np_random.integers(2**31 - 1))
            reply = self.simulator.reply(self._scenario, self._revealed, self._history, parsed.text, seed=seed)
        else:
            reply = self.simulator.reply(self._scenario, self._revealed, self._history, parsed.text)
        for name in reply.revealed:
            self._revealed.setdefault(name, self._scenario.hidden[name])
        self._patience_left -= 1
        text = reply.text
        task = self.rewards.question
        if self._patience_left <= 0:
            text = f"{text} {GOODBYE}"
            task += self.rewards.abandoned
            self._finished = True
        self._history.append((parsed.text, text))
        info = self._info(task=task, format=0.0, success=False)
        return text, task, self._finished, False, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        scenario = reset_option(options, "scenario")
        if scenario is None:
            scenario = generate_scenario(
                self.np_random,
                domains=self.domains,
                min_slots=self.min_slots,
                max_slots=self.max_slots,
                patience_bonus=self.patience_bonus,
                tight_patience=self.tight_patience,
            )
        elif not isinstance(scenario, Scenario) or scenario.domain not in DOMAINS:
            raise TypeError("options['scenario'] must be a creditgym.envs.dialogue.scenarios.Scenario")
        else:
            _check_scenario(scenario)
        self._scenario = scenario
        self._revealed = {}
        self._history = []
        self._patience_left = scenario.patience
        self._proposal = None
        self._finished = False
        self._invalid_count = 0
        self._has_reset = True
        domain = DOMAINS[scenario.domain]
        info = self._info(task=0.0, format=0.0, success=False)
        info["instructions"] = instructions(scenario.domain, self.rewards)
        info["domain"] = scenario.domain
        info["slot_values"] = {slot.name: list(slot.values) for slot in domain.slots}
        if self.expose_ground_truth:
            info["ground_truth"] = self.ground_truth()
        return scenario.opening, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        lines = [f"User: {self._scenario.opening}"]
        for question, answer in self._history:
            lines += [f"Agent: {question}", f"User: {answer}"]
        if self._proposal is not None:
            lines.append(f"Agent proposed: {self._proposal}")
        return "\n".join(lines)

    # -- state for reward design ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The current state as plain data (for reward design, logging and tests)."""
        return {
            "domain": self._scenario.domain,
            "opening": self._scenario.opening,
            "hidden": dict(self._scenario.hidden),
            "revealed": dict(self._revealed),
            "patience_left": self._patience_left,
            "history": [list(turn) for turn in self._history],
            "proposal": None if self._proposal is None else dict(self._proposal),
            "finished": self._finished,
        }

    def potential(self) -> float:
        """Fraction of the hidden slots revealed so far (for potential-based shaping)."""
        return len(self._revealed) / max(1, len(self._scenario.hidden))

    def ground_truth(self) -> str:
        """The correct final action, a proposal of every hidden slot: what IGPO's information gain scores.

        For training-time reward models only; reset puts it in `info["ground_truth"]` when the env is built with
        `expose_ground_truth=True`, and no observation ever contains it.
        """
        return f"<propose>{json.dumps(self._scenario.hidden)}</propose>"

    @property
    def scenario(self) -> Scenario:
        return self._scenario

    # -- internals ------------------------------------------------------------------------------------
    @property
    def _slot_names(self) -> tuple[str, ...]:
        return tuple(slot.name for slot in DOMAINS[self._scenario.domain].slots)

    def _propose(self, proposal: Proposal) -> tuple[str, float, bool, bool, dict[str, Any]]:
        hidden = self._scenario.hidden
        correct = sum(
            1 for name, value in hidden.items()
            if name in proposal.values and normalize_value(proposal.values[name]) == normalize_value(value)
        )
        self._proposal = dict(proposal.values)
        self._finished = True
        task = self.rewards.proposal * correct / len(hidden)
        text = f"Thanks! Your proposal got {correct} of my {len(hidden)} requirements right."
        self._history.append((f"<proposal {len(proposal.values)} slots>", text))
        info = self._info(task=task, format=0.0, success=correct == len(hidden))
        info["correct_slots"] = correct
        return text, task, True, False, info

    def _invalid_step(self, reason: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self._invalid_count += 1
        penalty = self.rewards.invalid_action
        info = self._info(task=0.0, format=penalty, success=False)
        info["invalid_action"] = True
        truncated = self.max_invalid_actions is not None and self._invalid_count >= self.max_invalid_actions
        return describe_invalid(reason), penalty, False, truncated, info

    def _info(self, *, task: float, format: float, success: bool) -> dict[str, Any]:
        return {
            "reward_components": {"task": task, "format": format},
            "success": success,
            "invalid_action": False,
            "revealed_slots": dict(self._revealed),
            "num_hidden_slots": len(self._scenario.hidden),
        }


def _check_scenario(scenario: Scenario) -> None:
    """Refuse a hand-made scenario the env cannot play, naming what to change."""
    domain = DOMAINS[scenario.domain]
    if not isinstance(scenario.hidden, dict) or not scenario.hidden:
        raise ValueError("options['scenario'].hidden must name at least one slot of the domain and its value")
    slots = [slot.name for slot in domain.slots]
    for name, value in scenario.hidden.items():
        if name not in slots:
            raise ValueError(f"options['scenario'].hidden has slot {name!r}, not one of {slots}")
        if value not in domain.slot(name).values:
            raise ValueError(f"options['scenario'].hidden[{name!r}] = {value!r} is not one of "
                             f"{domain.slot(name).values}")
    opening = scenario.opening
    if not isinstance(opening, str) or not opening.strip() or len(opening) > MAX_OBSERVATION_LENGTH or any(
            ch not in string.printable for ch in opening):
        raise ValueError("options['scenario'].opening must be non-empty printable ASCII of at most "
                         f"{MAX_OBSERVATION_LENGTH} characters (it is the reset observation)")
    if isinstance(scenario.patience, bool) or not isinstance(scenario.patience, int) or scenario.patience < 1:
        raise ValueError(f"options['scenario'].patience must be a positive integer, got {scenario.patience!r}")


def instructions(domain_name: str, rewards: GatherRewards) -> str:
    """Rules, slots and message format for one domain, ready to use as a system prompt."""
    domain = DOMAINS[domain_name]
    slots = "\n".join(f"- {slot.name} ({slot.label}): {', '.join(slot.values)}" for slot in domain.slots)
    example = ", ".join(f'"{slot.name}": "{slot.values[0]}"' for slot in domain.slots[:2])
    return (
        f"You are an assistant helping a user with their {domain.topic}. The user cares about some of the "
        "slots below and has a value in mind for each; find out which ones and their values by asking "
        "questions, then make one final proposal. The user answers only a limited number of questions.\n"
        f"Slots and their possible values:\n{slots}\n"
        "Each turn send one message: a question (it must contain '?'), or your final proposal written as "
        f"<propose>{{{example}}}</propose> using the slot names above.\n"
        f"Rewards: {rewards.proposal:+g} times the fraction of the user's requirements your proposal gets "
        f"right (all right = success), {rewards.question:+g} per question, {rewards.invalid_action:+g} for "
        "an invalid message."
    )
