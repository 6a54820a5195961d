"""A scripted ToolUse expert that replays the task's reference plan, then answers; for tests and
demonstration trajectories. Use it as `expert = ToolUseExpert(); action = expert(env)` after each step."""

from __future__ import annotations

import json

import gymnasium as gym

from creditgym.envs.tooluse.env import ToolUseEnv
from creditgym.envs.tooluse.tasks import Task


class ToolUseExpert:
    def __init__(self, *, think: bool = False) -> None:
        self.think = think
        """Prefix each action with a short <think> block saying what it does."""
        self._task: Task | None = None
        self._actions: list[str] = []

    def __call__(self, env: gym.Env) -> str:
        tooluse = env.unwrapped
        if not isinstance(tooluse, ToolUseEnv):
            raise TypeError(f"ToolUseExpert plays ToolUseEnv, got {type(tooluse).__name__}")
        if tooluse.task is not self._task:
            self._task, self._actions = tooluse.task, self._script(tooluse.task)
        return self._actions[min(len(tooluse.state()["turns"]), len(self._actions) - 1)]

    def _script(self, task: Task) -> list[str]:
        """One action per plan turn, then the answer."""
        actions = []
        for step, turn in enumerate(task.plan, start=1):
            names = ", ".join(call.name for call in turn)
            thought = f"<think>Step {step} of {len(task.plan)}: call {names}.</think>" if self.think else ""
            actions.append(thought + "".join(f"<tool_call>{json.dumps(call.to_dict())}</tool_call>" for call in turn))
        thought = "<think>The last tool result answers the question.</think>" if self.think else ""
        return [*actions, f"{thought}<answer>{task.answer_text()}</answer>"]
