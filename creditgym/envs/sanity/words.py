"""A two-armed bandit in words: open the door whose lamp is lit. A sanity env for LLM policies."""

from __future__ import annotations

import string
from dataclasses import dataclass
from enum import Enum
from typing import Any

import gymnasium as gym
from gymnasium import spaces

MAX_TEXT_LENGTH = 4000


class Door(str, Enum):
    A = "A"
    B = "B"


@dataclass(frozen=True)
class WordBanditRewards:
    correct: float = 1.0
    """task reward for opening the lit door (each round)"""
    invalid_action: float = -0.1
    """format penalty for a reply that names no door"""


def parse_action(text: object) -> Door | None:
    """The door named by the reply's first non-blank character (`a`/`b`, any case); None otherwise."""
    if not isinstance(text, str):
        return None
    stripped = text.lstrip()
    return {"a": Door.A, "b": Door.B}.get(stripped[:1].lower())


class WordBanditEnv(gym.Env):
    """Open the lit door, `num_rounds` times.

    ## Description
    Each round the observation says which of two doors, A or B, has its lamp lit; opening that door pays. The
    optimal policy copies the letter and succeeds every time; a policy that ignores the observation succeeds in
    half the rounds, so `num_rounds=1` has chance success 0.5 and optimal success 1. A tiny random LM learns it
    in seconds with GRPO, which makes it the learning test of the LLM trainers (as PufferLib's sanity envs).

    ## Action Space
    `Text`: the reply; its first non-blank character names the door (see `parse_action`).

    ## Observation Space
    `Text`: the round, the lit door, and after an invalid reply an explanation.

    ## Starting State
    The lit door of every round is drawn uniformly with `self.np_random`.

    ## Reward
    `rewards.correct` (1) for opening the lit door, 0 for the other; `rewards.invalid_action` (-0.1) for a reply
    that names no door, which leaves the round unchanged.

    ## Reward components
    `task` (doors) and `format` (invalid replies).

    ## Episode End
    Terminated after `num_rounds` valid replies; `info["success"]` (every step) is True once every round opened
    the lit door.
    Truncated by the registered time limit (4 steps per round).

    ## Arguments
    `num_rounds` (default 1), `rewards` (`WordBanditRewards`), `render_mode` ("ansi").

    ## Registered IDs
    `creditgym/Sanity-WordBandit-v0` (1 round).

    ## Version History
    - v0: initial release.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, *, num_rounds: int = 1, rewards: WordBanditRewards | None = None,
                 render_mode: str | None = None) -> None:
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be at least 1, got {num_rounds}")
        self.num_rounds = num_rounds
        self.rewards = rewards or WordBanditRewards()
        self.render_mode = render_mode
        self.action_space = spaces.Text(max_length=MAX_TEXT_LENGTH, charset=string.printable)
        self.observation_space = spaces.Text(max_length=MAX_TEXT_LENGTH, min_length=1, charset=string.printable)
        self._doors: tuple[Door, ...] = ()
        self._round = 0
        self._correct = 0

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        door = parse_action(action)
        if door is None or self._round >= self.num_rounds:
            why = "the episode is over" if self._round >= self.num_rounds else "reply with the letter A or B"
            feedback = f"Invalid action: {why}. " + self._observation()
            return feedback, self.rewards.invalid_action, False, False, self._info(0.0, self.rewards.invalid_action,
                                                                                 invalid=True)
        correct = door == self._doors[self._round]
        task = self.rewards.correct if correct else 0.0
        self._correct += int(correct)
        self._round += 1
        terminated = self._round >= self.num_rounds
        info = self._info(task, 0.0, invalid=False)
        outcome = "Correct." if correct else "Wrong door."
        obs = f"{outcome} " + ("Done." if terminated else self._observation())
        return obs, task, terminated, False, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._doors = tuple(Door.A if self.np_random.random() < 0.5 else Door.B for _ in range(self.num_rounds))
        self._round = self._correct = 0
        info = self._info(0.0, 0.0, invalid=False)
        # Terse on purpose: the learning test trains a tiny byte-level model, and every character is a token.
        info["instructions"] = "Open the lit door: reply A or B."
        return self._observation(), info

    def render(self) -> str:
        return self._observation()

    def state(self) -> dict[str, Any]:
        """Everything that determines the future: the lit doors, the round and the correct count."""
        return {"doors": tuple(door.value for door in self._doors), "round": self._round, "correct": self._correct}

    def _observation(self) -> str:
        if self._round >= self.num_rounds:
            return "Done."
        lit = f"Lit door: {self._doors[self._round].value}"
        return lit if self.num_rounds == 1 else f"Round {self._round + 1} of {self.num_rounds}. {lit}"

    def _info(self, task: float, penalty: float, *, invalid: bool) -> dict[str, Any]:
        # success is always present so a time-limit truncation also reports it (as False)
        success = self._round >= self.num_rounds and self._correct == self.num_rounds
        return {"reward_components": {"task": task, "format": penalty}, "invalid_action": invalid, "success": success}
