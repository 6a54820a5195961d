"""A two-armed bandit in words: one of two doors always hides the prize. A sanity env for LLM policies."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import gymnasium as gym

from creditgym.envs.arguments import FiniteRewards, positive_int, reward_sizes
from creditgym.envs.lifecycle import require_reset
from creditgym.envs.options import reset_options
from creditgym.envs.text_space import TextSpace

MAX_TEXT_LENGTH = 4000


class Door(str, Enum):
    A = "A"
    B = "B"


@dataclass(frozen=True)
class WordBanditRewards(FiniteRewards):
    correct: float = 1.0
    """task reward for opening the prize door (each round)"""
    invalid_action: float = -0.1
    """format penalty for a reply that names no door"""


def parse_action(text: object) -> Door | None:
    """The door named by the reply's first non-blank character (`a`/`b`, any case); None otherwise."""
    if not isinstance(text, str):
        return None
    stripped = text.lstrip()
    return {"a": Door.A, "b": Door.B}.get(stripped[:1].lower())


class WordBanditEnv(gym.Env):
    """Find the door that pays, `num_rounds` times: a two-armed bandit whose arms are words.

    ## Description
    Two doors, A and B; `prize_door` (B by default) pays every time and the other never does, and the
    observation does not say which. A policy that picks at random succeeds half the time (chance success 0.5 with
    `num_rounds=1`); the optimal policy always opens the prize door. Only reward can teach it, so a tiny random
    LM trained with GRPO goes from chance to success within seconds when the trainer works, and not at all when
    the advantage, mask or ratio is wrong: the learning test of the LLM trainers (as PufferLib's sanity envs).

    ## Action Space
    `Text`: the reply; its first non-blank character names the door (see `parse_action`).

    ## Observation Space
    `Text`: the round, the outcome of the last reply, and after an invalid reply an explanation.

    ## Starting State
    Always round 1 with no doors opened; the env draws nothing at random. Like every env, it still needs a
    `reset()` before the first step.

    ## Reward
    `rewards.correct` (1) for opening the prize door, 0 for the other; `rewards.invalid_action` (-0.1) for a
    reply that names no door, which leaves the round unchanged.

    ## Reward components
    `task` (doors) and `format` (invalid replies).

    ## Info
    `reward_components`, `invalid_action`, `success`, `available_actions` (["A", "B"]; [] once the rounds are
    done), and at reset `instructions`.

    ## Episode End
    Terminated after `num_rounds` valid replies; `info["success"]` (every step) is True once every round opened
    the prize door. Truncated by the registered time limit (4 steps).

    ## Arguments
    `num_rounds` (default 1), `prize_door` ("A" or "B", default "B"), `rewards` (`WordBanditRewards`),
    `render_mode` ("ansi").

    ## Registered IDs
    `creditgym/Sanity-WordBandit-v0` (1 round, prize behind B).

    ## Version History
    - v0: initial release.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, *, num_rounds: int = 1, prize_door: str = "B",
                 rewards: WordBanditRewards | Mapping[str, float] | None = None,
                 render_mode: str | None = None) -> None:
        num_rounds = positive_int("num_rounds", num_rounds)
        if prize_door not in ("A", "B"):
            raise ValueError(f"prize_door must be 'A' or 'B', got {prize_door!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.num_rounds = num_rounds
        self.prize_door = Door(prize_door)
        self.rewards = reward_sizes(WordBanditRewards, rewards)
        self.render_mode = render_mode
        self.action_space = TextSpace(max_length=MAX_TEXT_LENGTH, charset=string.printable)
        self.observation_space = TextSpace(max_length=MAX_TEXT_LENGTH, min_length=1, charset=string.printable)
        self._round = 0
        self._correct = 0
        self._has_reset = False

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        # It draws nothing at random and could play without a reset, but refuses like every other env, so that code
        # that forgets the reset fails here as it would on any other env.
        require_reset(self._has_reset, "step")
        door = parse_action(action)
        if door is None or self._round >= self.num_rounds:
            why = "the episode is over" if self._round >= self.num_rounds else "reply with the letter A or B"
            penalty = self.rewards.invalid_action
            return f"Invalid action: {why}. {self._observation()}", penalty, False, False, self._info(0.0, penalty,
                                                                                                     invalid=True)
        correct = door == self.prize_door
        task = self.rewards.correct if correct else 0.0
        self._correct += int(correct)
        self._round += 1
        outcome = "The prize was behind it." if correct else "Nothing behind it."
        obs = f"{outcome} {self._observation()}"
        return obs, task, self._round >= self.num_rounds, False, self._info(task, 0.0, invalid=False)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        reset_options(options)
        self._round = self._correct = 0
        self._has_reset = True
        info = self._info(0.0, 0.0, invalid=False)
        # Terse on purpose: the learning test trains a tiny byte-level model, and every character is a token.
        info["instructions"] = "One of two doors, A or B, hides a prize. Reply A or B."
        return self._observation(), info

    def render(self) -> str | None:
        return self._observation() if self.render_mode == "ansi" else None

    def state(self) -> dict[str, Any]:
        """Everything that determines the future: the round and how many rounds found the prize."""
        return {"round": self._round, "correct": self._correct}

    def _observation(self) -> str:
        if self._round >= self.num_rounds:
            return "Done."
        return f"Round {self._round + 1} of {self.num_rounds}. Open a door."

    def _info(self, task: float, penalty: float, *, invalid: bool) -> dict[str, Any]:
        # success is always present so a time-limit truncation also reports it (as False)
        success = self._round >= self.num_rounds and self._correct == self.num_rounds
        doors = [door.value for door in Door] if self._round < self.num_rounds else []
        return {"reward_components": {"task": task, "format": penalty}, "invalid_action": invalid, "success": success,
                "available_actions": doors}
