"""MiniGrid and BabyAI worlds as text: the agent's partial view as sentences, and text actions."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT, STATE_TO_IDX
from minigrid.minigrid_env import MiniGridEnv

from creditgym.envs.answers import last_answer
from creditgym.envs.arguments import FiniteRewards, positive_int, reward_sizes
from creditgym.envs.lifecycle import require_reset
from creditgym.envs.options import reset_options
from creditgym.envs.text_space import TextSpace

ACTION_NAMES: dict[Actions, str] = {
    Actions.left: "turn left",
    Actions.right: "turn right",
    Actions.forward: "go forward",
    Actions.pickup: "pick up",
    Actions.drop: "drop",
    Actions.toggle: "toggle",
    Actions.done: "done",
}
_SYNONYMS: dict[str, Actions] = {
    "turn left": Actions.left, "rotate left": Actions.left, "left": Actions.left,
    "turn right": Actions.right, "rotate right": Actions.right, "right": Actions.right,
    "go forward": Actions.forward, "move forward": Actions.forward, "forward": Actions.forward,
    "forwards": Actions.forward, "ahead": Actions.forward, "straight": Actions.forward,
    "pick up": Actions.pickup, "pickup": Actions.pickup, "pick": Actions.pickup, "grab": Actions.pickup,
    "take": Actions.pickup,
    "drop": Actions.drop, "put down": Actions.drop,
    "toggle": Actions.toggle, "open": Actions.toggle, "unlock": Actions.toggle, "close": Actions.toggle,
    "done": Actions.done,
}
_PHRASE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _SYNONYMS), key=len, reverse=True)) + r")\b")
#: Free text without <answer> or \boxed{} is read only when this short, so a ramble is not taken as a move.
MAX_FREE_TEXT = 200
MAX_OBSERVATION_LENGTH = 4096
#: The largest grid side MiniGridText takes in env_kwargs: MiniGrid keeps a Python object per cell, so a side of
#: 10**6 would exhaust memory instead of failing with a message.
MAX_GRID_SIDE = 100
GRID_SIDES = ("size", "width", "height", "room_size")
_OPEN, _CLOSED, _LOCKED = STATE_TO_IDX["open"], STATE_TO_IDX["closed"], STATE_TO_IDX["locked"]
_SKIPPED = {"unseen", "empty", "floor", "wall"}


def parse_action(text: object) -> Actions | None:
    """Read one action; None when the text names no action or several different ones.

    Accepts "go forward", "Forward.", "turn LEFT", "pick up the key", "<answer>toggle</answer>", "\\boxed{done}".
    The last <answer> or \\boxed{} wins.
    """
    if not isinstance(text, str):
        return None
    span = last_answer(text)
    if span is None:
        if len(text) > MAX_FREE_TEXT:
            return None
        span = text
    found = {_SYNONYMS[phrase] for phrase in _PHRASE.findall(" ".join(re.findall(r"[a-z]+", span.lower())))}
    return found.pop() if len(found) == 1 else None


def _steps(n: int, word: str) -> str:
    return f"{n} step{'s' if n != 1 else ''} {word}"


def describe_view(image: np.ndarray) -> list[str]:
    """Sentences for an egocentric MiniGrid view (`obs["image"]`, shape (V, V, 3), agent at the bottom middle
    looking up): every visible object with its offset, and the nearest wall straight ahead, left and right."""
    size = image.shape[0]
    ax, ay = size // 2, size - 1
    seen: list[str] = []
    walls: dict[str, int] = {}
    for y in range(ay, -1, -1):
        for x in range(size):
            if (x, y) == (ax, ay):
                continue
            kind = IDX_TO_OBJECT[int(image[x, y, 0])]
            forward, side = ay - y, x - ax
            if kind == "wall":
                # Only walls straight ahead or straight to a side are told: enough to judge the room's extent.
                if side == 0:
                    direction, distance = "forward", forward
                elif forward == 0:
                    direction, distance = ("right" if side > 0 else "left"), abs(side)
                else:
                    continue
                walls[direction] = min(distance, walls.get(direction, size))
                continue
            if kind in _SKIPPED:
                continue
            parts = [_steps(forward, "forward")] if forward else []
            if side:
                parts.append(_steps(abs(side), "right" if side > 0 else "left"))
            seen.append(f"You see {_name(kind, int(image[x, y, 1]), int(image[x, y, 2]))} {' and '.join(parts)}.")
    for direction in ("forward", "left", "right"):
        if direction in walls:
            seen.append(f"You see a wall {_steps(walls[direction], direction)}.")
    return seen


def _name(kind: str, color: int, state: int) -> str:
    colour = IDX_TO_COLOR[color]
    if kind == "door":
        status = {_OPEN: "open", _CLOSED: "closed", _LOCKED: "locked"}[state]
        return f"{'an' if status == 'open' else 'a'} {status} {colour} door"
    if kind == "lava":
        return "lava"
    return f"a {colour} {kind}"


@dataclass(frozen=True)
class MiniGridTextRewards(FiniteRewards):
    """Reward sizes: `native` scales MiniGrid's own reward (1 - 0.9 * steps / max_steps on success)."""

    native: float = 1.0
    invalid_action: float = -0.1


class MiniGridTextEnv(gym.Env):
    """Any MiniGrid or BabyAI env, observed and acted on through text.

    ## Description
    Wraps an env from the `minigrid` package (by id, or an instance) and renders the agent's partial 7x7
    view as sentences, like BabyAI-Text: "You see a red key 2 steps forward and 1 step left.", "You see a
    wall 3 steps forward.", with the mission first and what the agent carries last. The dynamics are
    MiniGrid's own; the wrapped env is `self.minigrid`.

    ## Action Space
    `Text`, read by `parse_action`: turn left, turn right, go forward, pick up, drop, toggle, done, with
    synonyms ("forward", "open", "grab", ...) and the `<answer>...</answer>` / `\\boxed{}` forms.

    ## Observation Space
    `Text` (printable ASCII, one sentence a line), preceded by feedback after an invalid action.

    ## Starting State
    The wrapped env's reset, seeded from `self.np_random`.

    ## Reward
    MiniGrid's reward (1 - 0.9 * step_count / max_steps on success, else 0) times `native`; an invalid text
    action pays `invalid_action` (-0.1) and does not reach MiniGrid (no step is spent there).

    ## Reward components
    `task` (MiniGrid's reward) and `format` (invalid text actions).

    ## Episode End
    Terminated when MiniGrid terminates (mission done, lava, or a failed BabyAI instruction); `success` is
    True when the terminating reward is positive. Truncated by MiniGrid's `max_steps`, by the registered
    time limit (which also counts invalid actions), or after `max_invalid_actions` invalid actions. The registered
    limits equal MiniGrid's `max_steps`, which also sets the reward's step discount, so a longer
    `gym.make(id, max_episode_steps=N)` needs `env_kwargs={"max_steps": N}` as well; a shorter one works alone.

    ## Info
    `reward_components`, `success`, `invalid_action`, `available_actions` (the seven names), `mission`;
    reset adds `instructions`.

    ## Arguments
    `env_id` (a MiniGrid/BabyAI id) or `env` (a `MiniGridEnv` instance), `env_kwargs` (grid sides `size`,
    `width`, `height` and `room_size` at most `MAX_GRID_SIDE`, 100; the constructor lays out one grid to check
    them), `rewards`, `max_invalid_actions`, `render_mode` ("ansi": the text; "rgb_array": MiniGrid's frame).

    ## Registered IDs
    `creditgym/MiniGridText-DoorKey-5x5-v0`, `creditgym/BabyAIText-GoToObj-v0`,
    `creditgym/BabyAIText-GoToLocal-v0`. Array versions stay under MiniGrid's own ids.

    ## Version History
    - v0: initial release.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        *,
        env_id: str | None = None,
        env: MiniGridEnv | None = None,
        env_kwargs: dict[str, Any] | None = None,
        rewards: MiniGridTextRewards | Mapping[str, float] | None = None,
        max_invalid_actions: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if (env_id is None) == (env is None):
            raise ValueError("pass exactly one of env_id (a MiniGrid/BabyAI id) or env (a MiniGridEnv instance)")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        max_invalid_actions = positive_int("max_invalid_actions", max_invalid_actions, optional=True)
        if env is None:
            env = _make_minigrid(env_id, env_kwargs, "rgb_array" if render_mode == "rgb_array" else None)
        elif env_kwargs:
            raise ValueError("env_kwargs applies to env_id only; configure the MiniGridEnv instance you pass as env")
        if not isinstance(env, MiniGridEnv):
            raise TypeError(f"expected a minigrid MiniGridEnv, got {type(env).__name__}")
        if render_mode == "rgb_array" and env.render_mode != "rgb_array":
            raise ValueError("for render_mode='rgb_array', create the MiniGrid env with render_mode='rgb_array'")
        self.minigrid: MiniGridEnv = env
        self.rewards = reward_sizes(MiniGridTextRewards, rewards)
        self.max_invalid_actions = max_invalid_actions
        self.render_mode = render_mode
        self.action_space = TextSpace(max_length=MAX_OBSERVATION_LENGTH, charset=string.printable)
        self.observation_space = TextSpace(
            max_length=MAX_OBSERVATION_LENGTH, min_length=1, charset=string.printable
        )
        self._text = ""
        self._feedback = ""
        self._invalid_count = 0
        self._success = False
        self._has_reset = False
        self._terminated = False

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        require_reset(self._has_reset, "step")
        if self._terminated:  # MiniGrid would play on and pay the mission's reward again
            return self._invalid_step(action, feedback="The episode is over; call reset().")
        move = parse_action(action)
        if move is None:
            return self._invalid_step(action)
        obs, native, terminated, truncated, _ = self.minigrid.step(move)
        self._terminated = bool(terminated)
        task = float(native) * self.rewards.native
        self._success = bool(terminated and native > 0)
        self._feedback = ""
        self._text = self._render_text(obs)
        return self._observation(), task, bool(terminated), bool(truncated), self._info(task=task, format=0.0,
                                                                                        invalid=False)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        obs, _ = self.minigrid.reset(seed=int(self.np_random.integers(2**31 - 1)), options=reset_options(options))
        self._has_reset = True
        self._terminated = False
        self._feedback = ""
        self._invalid_count = 0
        self._success = False
        self._text = self._render_text(obs)
        info = self._info(task=0.0, format=0.0, invalid=False)
        info["instructions"] = instructions(self.rewards, self.minigrid.agent_view_size)
        return self._observation(), info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "ansi":
            return self._observation()
        if self.render_mode == "rgb_array":
            require_reset(self._has_reset, "render")  # minigrid has no grid to draw until then
            return self.minigrid.render()
        return None

    def close(self) -> None:
        self.minigrid.close()

    # -- state for reward design ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The full world as plain data: agent position and direction, carried object, the grid encoding
        (width x height x [object, colour, state]), steps taken and the mission."""
        carrying = self.minigrid.carrying
        return {
            "agent_pos": [int(v) for v in self.minigrid.agent_pos],
            "agent_dir": int(self.minigrid.agent_dir),
            "carrying": None if carrying is None else [carrying.type, carrying.color],
            "grid": self.minigrid.grid.encode().tolist(),
            "step_count": int(self.minigrid.step_count),
            "mission": str(self.minigrid.mission),
        }

    # -- internals ------------------------------------------------------------------------------------
    def _render_text(self, obs: dict[str, Any]) -> str:
        lines = [f"Mission: {obs['mission']}."]
        lines += describe_view(obs["image"]) or ["You see nothing but empty floor."]
        carrying = self.minigrid.carrying
        if carrying is not None:
            lines.append(f"You are carrying a {carrying.color} {carrying.type}.")
        return "\n".join(lines)

    def _observation(self) -> str:
        # Views larger than MiniGrid's default 7x7 can describe more than the observation space holds.
        text = f"{self._feedback}\n{self._text}" if self._feedback else self._text
        return text[:MAX_OBSERVATION_LENGTH]

    def _invalid_step(self, action: Any, feedback: str | None = None) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self._invalid_count += 1
        shown = action if isinstance(action, str) else repr(action)
        safe = "".join(ch if ch in string.printable and ch not in "\r\n\t\x0b\x0c" else "?" for ch in shown[:40])
        self._feedback = (
            f"Invalid action {safe + ('...' if len(shown) > 40 else '')!r}: nothing happened. Answer with exactly "
            f"one of: {', '.join(ACTION_NAMES.values())}, for example <answer>go forward</answer>."
        )
        if feedback is not None:
            self._feedback = feedback
        penalty = self.rewards.invalid_action
        truncated = self.max_invalid_actions is not None and self._invalid_count >= self.max_invalid_actions
        return self._observation(), penalty, False, truncated, self._info(task=0.0, format=penalty, invalid=True)

    def _info(self, *, task: float, format: float, invalid: bool) -> dict[str, Any]:
        return {
            "reward_components": {"task": task, "format": format},
            "success": self._success,
            "invalid_action": invalid,
            "available_actions": list(ACTION_NAMES.values()),
            "mission": str(self.minigrid.mission),
        }


def _make_minigrid(env_id: Any, env_kwargs: Any, render_mode: str | None) -> gym.Env:
    """The unwrapped env `env_id` built with `env_kwargs`; errors name the id and the kwargs to change."""
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a MiniGrid/BabyAI id string such as 'MiniGrid-DoorKey-5x5-v0', got {env_id!r}")
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise TypeError(f"env_kwargs must be a dict of keyword arguments for {env_id}, got {type(env_kwargs).__name__}")
    kwargs = dict(env_kwargs or {})
    if "render_mode" in kwargs:
        raise ValueError("pass render_mode to MiniGridTextEnv, not in env_kwargs (it picks MiniGrid's own mode)")
    for name in GRID_SIDES:
        value = kwargs.get(name)
        if isinstance(value, int | np.integer) and value > MAX_GRID_SIDE:
            raise ValueError(f"env_kwargs {name}={value} is too large for {env_id}: grid sides go up to "
                             f"{MAX_GRID_SIDE}")
    try:
        if kwargs:
            # MiniGrid checks some sizes only when it lays out a grid (size 3 fails inside reset with "low >= high"):
            # lay one out in a throwaway copy, so that the env's own first reset() without a seed stays random.
            trial = gym.make(env_id, **kwargs).unwrapped
            trial.reset(seed=0)
            trial.close()
        return gym.make(env_id, render_mode=render_mode, **kwargs).unwrapped
    except gym.error.Error:
        raise  # gymnasium's own errors (unknown id, ...) already say what to change
    except (AssertionError, TypeError, ValueError, IndexError) as error:
        # MiniGrid checks sizes with bare asserts, so name the arguments the user can change.
        reason = str(error).split(" was raised from the environment creator")[0] or "a failed MiniGrid assertion"
        raise ValueError(
            f"cannot create {env_id} with env_kwargs={kwargs!r}: {reason}. Check them against the MiniGrid env's "
            "constructor (sizes such as size, room_size and agent_view_size must be large enough; "
            "agent_view_size is odd and at least 3)"
        ) from error


def instructions(rewards: MiniGridTextRewards, view_size: int = 7) -> str:
    """Rules and action format, ready to use as a system prompt (`view_size`: the agent's view's side)."""
    return (
        "You are an agent in a 2D grid world and see it from your own point of view: a "
        f"{view_size}x{view_size} square ahead of "
        "and around you, blocked by walls and closed doors. Each observation gives your mission and what you "
        "see, as steps forward and steps left or right of you. You can carry one object. Doors open with "
        "toggle; a locked door needs a key of its colour.\n"
        f"Actions: {', '.join(ACTION_NAMES.values())}. go forward moves one step; turn left and turn right turn "
        "in place; pick up and toggle act on the cell in front of you; drop puts what you carry there.\n"
        f"Rewards: up to {rewards.native:+g} for completing the mission (less the longer it takes), "
        f"{rewards.invalid_action:+g} for an answer that is not an action.\n"
        "Each turn, answer with exactly one action, written as <answer>go forward</answer>."
    )
