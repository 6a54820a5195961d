"""Scripted policies for the MiniGrid text envs (baselines and solvability tests).

They read the wrapped world (`env.minigrid`) directly, so they are oracles, not text agents:

- BabyAI levels (the world has `instrs`): minigrid's own `BabyAIBot`;
- goal-square tasks such as DoorKey and Empty: a breadth-first planner that fetches the key, opens the
  locked door and walks to the goal.
"""

from __future__ import annotations

from collections import deque

from minigrid.core.actions import Actions
from minigrid.core.constants import DIR_TO_VEC
from minigrid.minigrid_env import MiniGridEnv
from minigrid.utils.baby_ai_bot import BabyAIBot

from creditgym.envs.minigrid_text import ACTION_NAMES, MiniGridTextEnv


class ScriptedMiniGridPolicy:
    """Call `reset()` after each `env.reset()`, then `act()` for the text action of each step."""

    def __init__(self, env: MiniGridTextEnv) -> None:
        self.env = env
        self._bot: BabyAIBot | None = None

    def reset(self) -> None:
        world = self.env.minigrid
        self._bot = BabyAIBot(world) if hasattr(world, "instrs") else None

    def act(self) -> str:
        action = self._bot.replan() if self._bot is not None else goal_planner(self.env.minigrid)
        return ACTION_NAMES[Actions(int(action))]


def goal_planner(world: MiniGridEnv) -> Actions:
    """The next action towards the goal square, fetching the key for a locked door first."""
    goal = _find(world, "goal")
    if goal is None:
        return Actions.done
    plan = _face(world, goal)
    if plan is not None:
        return plan if plan != "facing" else Actions.forward
    door = _find(world, "door", lambda door: not door.is_open)
    if door is None:
        return Actions.done
    key = _find(world, "key")
    carrying_key = world.carrying is not None and world.carrying.type == "key"
    if key is not None and not carrying_key:
        plan = _face(world, key)
        if plan is not None:
            return plan if plan != "facing" else Actions.pickup
    plan = _face(world, door)
    if plan is None:
        return Actions.done
    return plan if plan != "facing" else Actions.toggle


def _find(world: MiniGridEnv, kind: str, accept=lambda obj: True) -> tuple[int, int] | None:
    for index, obj in enumerate(world.grid.grid):
        if obj is not None and obj.type == kind and accept(obj):
            return index % world.grid.width, index // world.grid.width
    return None


def _face(world: MiniGridEnv, target: tuple[int, int]) -> Actions | str | None:
    """The first action of a shortest turn/forward path to facing `target`; "facing" if already there;
    None if unreachable through free cells (lava excluded)."""
    start = (int(world.agent_pos[0]), int(world.agent_pos[1]), int(world.agent_dir))
    first: dict[tuple[int, int, int], Actions | None] = {start: None}
    queue = deque([start])
    while queue:
        x, y, d = state = queue.popleft()
        dx, dy = DIR_TO_VEC[d]
        if (x + dx, y + dy) == tuple(target):
            return first[state] if first[state] is not None else "facing"
        moves = [(Actions.left, (x, y, (d - 1) % 4)), (Actions.right, (x, y, (d + 1) % 4))]
        cell = world.grid.get(x + dx, y + dy)
        if cell is None or (cell.can_overlap() and cell.type != "lava"):
            moves.append((Actions.forward, (x + dx, y + dy, d)))
        for action, nxt in moves:
            if nxt not in first:
                first[nxt] = first[state] if first[state] is not None else action
                queue.append(nxt)
    return None

