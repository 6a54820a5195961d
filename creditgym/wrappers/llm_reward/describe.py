"""What a reward designer is told about an env: a compact Pythonic description of its `state()` (Text2Reward's
class abstraction) plus the task text, and the same plain-data state built for a whole batched Sokoban env.

Sokoban has a hand-written description whose fields are checked against `SokobanEnv.state()` in the tests; any
other env with a `state()` method gets one inferred from a sample state.

>>> print(describe_env("creditgym/Sokoban-6x6-1b-v0").splitlines()[0])
class State:  # Sokoban: `state` and `next_state` are dicts with these keys
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from creditgym.envs.sokoban.env import SokobanEnv
from creditgym.envs.sokoban.level import BOXOBAN_SYMBOLS, Tile
from creditgym.envs.sokoban.rules import SokobanRewards, apply_move
from creditgym.envs.sokoban.vector import BOX_BIT, PLAYER_BIT, TARGET_BIT, WALL_BIT, SokobanVectorEnv

_MAX_TASK_CHARS = 2_000
_MAX_EXAMPLE_CHARS = 60

SOKOBAN_FIELDS: dict[str, tuple[str, str]] = {
    "board": ("list[str]", "rows of the room, top to bottom: '#' wall, ' ' floor, '.' target, '$' box, "
                           "'*' box on target, '@' player, '+' player on target"),
    "player": ("list[int]", "[row, col] of the player; row 0 is the top"),
    "boxes": ("list[list[int]]", "[row, col] of every box, in row-major order"),
    "boxes_on_target": ("int", "boxes currently on a target"),
    "num_boxes": ("int", "boxes in the level; the level is solved when boxes_on_target == num_boxes"),
    "deadlock": ("bool", "a box that is not on a target sits in a corner, so the level can no longer be solved"),
}

def _sokoban_task(rewards: SokobanRewards, max_steps: int | None) -> str:
    """The rules and the reward this env pays, from its own settings (variants differ in time limit, and
    `rewards=` changes or drops the per-box terms)."""
    terms = [(rewards.step, "per step"), (rewards.box_on_target, "for a box pushed onto a target"),
             (rewards.box_off_target, "for a box pushed off one"), (rewards.solved, "when solved")]
    paid = ", ".join(f"{value:+g} {what}" for value, what in terms if value) or "always 0"
    end = f"when solved or after {max_steps} steps" if max_steps else "when solved"
    return ("Push every box onto a target. The player moves one cell per action; walking into a box pushes it one "
            f"cell if the cell behind it is free. Boxes cannot be pulled. The task reward is {paid}; episodes end "
            f"{end}.")


_SOKOBAN_ACTION = "action: int  # 0 up (row - 1), 1 down (row + 1), 2 left (col - 1), 3 right (col + 1)"


def describe_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> str:
    """The state description and task text for `env_id`, ready to put in a reward-design prompt."""
    env = gym.make(env_id, **(env_kwargs or {}))
    try:
        base = env.unwrapped
        if isinstance(base, SokobanEnv):
            task = _sokoban_task(base.rewards, env.spec.max_episode_steps if env.spec else None)
            return describe_fields("State", "Sokoban", SOKOBAN_FIELDS, _SOKOBAN_ACTION, task)
        if not callable(getattr(base, "state", None)):
            raise ValueError(f"{env_id} has no state() method, so there is nothing to describe for reward design")
        _, info = env.reset(seed=0)
        sample = base.state()
        if not isinstance(sample, dict):
            raise ValueError(f"{env_id}.state() returned {type(sample).__name__}; reward design needs a dict")
        fields = {name: (_type_name(value), f"e.g. {_example(value)}") for name, value in sample.items()}
        action = f"action: {_type_name(env.action_space.sample())}  # a {type(env.action_space).__name__} action"
        task = str(info.get("instructions") or (type(base).__doc__ or "").strip().split("\n")[0])
        return describe_fields("State", env_id.split("/")[-1], fields, action, task[:_MAX_TASK_CHARS])
    finally:
        env.close()


def describe_fields(name: str, env_name: str, fields: dict[str, tuple[str, str]], action: str, task: str) -> str:
    """Formats fields as a Python class body, then the action and the task."""
    lines = [f"class {name}:  # {env_name}: `state` and `next_state` are dicts with these keys"]
    lines += [f"    {field}: {type_name}  # {meaning}" for field, (type_name, meaning) in fields.items()]
    return "\n".join([*lines, "", action, "", f"Task: {task}"])


def _type_name(value: Any) -> str:
    if isinstance(value, bool | int | float | str) or value is None:
        return type(value).__name__
    if isinstance(value, list | tuple):
        inner = sorted({_type_name(item) for item in value[:8]})
        return f"list[{' | '.join(inner)}]" if inner else "list"
    if isinstance(value, dict):
        inner = sorted({_type_name(item) for item in list(value.values())[:8]})
        return f"dict[str, {' | '.join(inner)}]" if inner else "dict"
    if isinstance(value, np.ndarray | np.generic):
        return _type_name(value.tolist())
    return type(value).__name__


def _example(value: Any) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray | np.generic) else value)
    return text if len(text) <= _MAX_EXAMPLE_CHARS else text[:_MAX_EXAMPLE_CHARS] + "..."


# -- plain-data states of a batched Sokoban env ---------------------------------------------------------------
def _tile_of_code() -> np.ndarray:
    """`Tile` of each of the batched env's bit-flag cell codes (public constants of its module)."""
    table = np.zeros(16, np.int8)
    for code, tile in {WALL_BIT: Tile.WALL, 0: Tile.FLOOR, TARGET_BIT: Tile.TARGET, BOX_BIT: Tile.BOX,
                       BOX_BIT | TARGET_BIT: Tile.BOX_ON_TARGET, PLAYER_BIT: Tile.PLAYER,
                       PLAYER_BIT | TARGET_BIT: Tile.PLAYER_ON_TARGET}.items():
        table[code] = tile
    return table


_TILE_OF_CODE = _tile_of_code()
_SYMBOLS = np.array([BOXOBAN_SYMBOLS[Tile(t)] for t in range(len(Tile))])


class SokobanBatchStates:
    """`SokobanEnv.state()` for every board of a `SokobanVectorEnv`, before and after each step.

    Reads the boards through the env's declared `get_state()`. With same-step autoreset an ended board is already
    replaced by the next level when `step` returns, so its `next_state` is rebuilt by replaying the action on the
    board it had before (with the single env's rules), which is exactly the state the single env would report.
    """

    def __init__(self, env: SokobanVectorEnv) -> None:
        self.env = env
        self.shape = env.bank.shape
        self._tiles = np.zeros((env.num_envs, *self.shape), np.int8)
        self._level = np.zeros(env.num_envs, np.int64)

    def observe(self) -> list[dict[str, Any]]:
        """The current state of every board (call after reset and after every step)."""
        state = self.env.get_state()
        self._tiles = _TILE_OF_CODE[state["codes"].cpu().numpy()].reshape(-1, *self.shape)
        self._level = state["level_index"].cpu().numpy().copy()
        on_target = state["on_target"].cpu().numpy()
        num_boxes = state["num_boxes"].cpu().numpy()
        return [self._state(self._tiles[i], int(on_target[i]), int(num_boxes[i]), int(self._level[i]))
                for i in range(len(self._tiles))]

    def step(self, actions: np.ndarray, done: np.ndarray) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(next states, current states) after `actions`: they differ only where an episode ended (`done`), whose
        next state is its final one and whose current state is the new level's first."""
        before_tiles, before_level = self._tiles, self._level
        current = self.observe()
        states = list(current)
        for i in np.flatnonzero(done):
            tiles = before_tiles[i].copy()
            player = tuple(int(x) for x in np.argwhere(np.isin(tiles, (Tile.PLAYER, Tile.PLAYER_ON_TARGET)))[0])
            apply_move(tiles, player, int(actions[i]))
            on_target = int((tiles == Tile.BOX_ON_TARGET).sum())
            num_boxes = on_target + int((tiles == Tile.BOX).sum())
            states[i] = self._state(tiles, on_target, num_boxes, int(before_level[i]))
        return states, current

    def _state(self, tiles: np.ndarray, on_target: int, num_boxes: int, level: int) -> dict[str, Any]:
        player = np.argwhere((tiles == Tile.PLAYER) | (tiles == Tile.PLAYER_ON_TARGET))[0]
        return {
            "board": ["".join(row) for row in _SYMBOLS[tiles]],
            "player": [int(player[0]), int(player[1])],
            "boxes": np.argwhere((tiles == Tile.BOX) | (tiles == Tile.BOX_ON_TARGET)).tolist(),
            "boxes_on_target": on_target,
            "num_boxes": num_boxes,
            "deadlock": bool((self.env.bank.dead_corners[level] & (tiles == Tile.BOX)).any()),
        }
