"""The ToolUse environment: answer questions that need several dependent tool calls."""

from __future__ import annotations

import copy
import string
from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from creditgym.envs.arguments import flag, positive_int, reward_sizes
from creditgym.envs.lifecycle import require_reset
from creditgym.envs.options import reset_option
from creditgym.envs.text_space import TextSpace
from creditgym.envs.tooluse.reward import UNPARSEABLE, ToolUseRewards, answer_matches, toolrl_reward
from creditgym.envs.tooluse.tasks import FAMILIES, Task, generate_task
from creditgym.envs.tooluse.text import excerpt, instructions, parse_or_explain, render_results
from creditgym.envs.tooluse.tools import TOOL_SCHEMAS, Call, ToolError, check_arguments, run_tool
from creditgym.envs.tooluse.world import World

MAX_TEXT_LENGTH = 32768
#: Test-split worlds start here, far from the train worlds [0, num_worlds).
TEST_WORLD_OFFSET = 10_000
#: ToolRL's best score for a turn (R_format 1 + R_correct 3) and its worst (-3).
_TOOLRL_MAX, _TOOLRL_MIN = 4.0, -3.0
_PRINTABLE = frozenset(string.printable)


class ToolUseEnv(gym.Env):
    """Answer a question by calling tools: calculator, unit and currency conversion, an inventory
    database and date arithmetic.

    ## Description
    Each episode draws a question from a seeded generator, such as "How much would 3 units of the cheapest
    red item in the Oslo store cost in EUR?", together with a reference plan of one to four dependent tool
    calls and the answer. The agent calls tools (OpenAI function schemas in `info["tools"]`) over several
    turns and ends the episode with an answer.

    ## Action Space
    `Text`: one or more `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, or `<answer>...</answer>`,
    optionally after `<think>...</think>`; read by `creditgym.envs.tooluse.text.parse_action`.

    ## Observation Space
    `Text` (printable ASCII, at most 32,768 characters): the question at reset; after a turn of tool calls, each
    call's result or error in a `<tool_response>` block, then the question again (so that a prompt keeping only the
    last few turns still holds it); after an invalid action, an explanation and the question.

    ## Starting State
    A task from `generate_task` with `self.np_random` in one of `num_worlds` worlds (stores and inventories)
    of the split, or `options={"task": Task}`.

    ## Reward
    `rewards.correct` (1) for a correct answer, `rewards.wrong` (0) otherwise. Counts (days, weeks, items in
    stock: `Task.exact`) must be exact; other numbers (money, conversions, percentages) within 0.5% or 0.01,
    whichever is larger; dates as ISO dates; names ignoring case and punctuation.
    Each turn of tool calls pays `rewards.tool_weight` (0.05) times ToolRL points. The turn gets a ToolRL score
    in [-3, 4] against each reference-plan turn that shares a tool with it, and is credited to the plan turn it
    gains most on: a plan turn's first score counts in full, later ones only by what they add to its best score so
    far. A repeat or a worse retry therefore pays 0, a fix pays what it adds, and the points of a plan turn add up
    to its best score over the episode. A turn sharing no tool with the plan scores -3 + format (ToolRL's formula
    against calls it has nothing in common with) and changes nothing. `rewards.invalid_action` (-0.1) for text
    that is not runnable tool calls or an answer; a rejected turn that contained a <tool_call> also scores
    ToolRL's -3.

    ## Reward components
    `task` (the answer), `tool` (ToolRL per turn) and `format` (invalid actions).

    ## Episode End
    Terminated by the answer; `info["success"]` when it is correct. Truncated by the registered time limit or
    after `max_invalid_actions` invalid actions when that is set. The reference plan and answer appear in
    `info["reference_plan"]` and `info["reference_answer"]` (the answer as text) only on the step that ends the
    episode: the answer, the invalid-action cap, the last of `max_turns` steps, or the last step of the time limit.
    The env cannot see gymnasium's TimeLimit from inside, so the registered ids add `RevealAtTimeLimit` over it:
    `gym.make(id, max_episode_steps=N)` gives N steps and reveals on the N-th.

    ## Info
    `reward_components`, `success`, `invalid_action`; on turns of tool calls only, `tool_errors` (how many of the
    turn's calls failed). Reset adds `instructions`, `tools` and `question`, and with `expose_ground_truth=True`
    also `ground_truth` (see `ground_truth()`).

    ## Arguments
    `min_calls`, `max_calls` (plan length, 1 to 4), `num_worlds` (16; at most 10,000; a process keeps the 256
    most recently used, about 80 KB each), `split` ("train"/"test": held-out tasks; the inventory families use
    disjoint worlds, and the families that read no world (arithmetic, conversions, dates) disjoint questions, of
    which a stable hash assigns about one in 8 to test), `rewards` (`ToolUseRewards` or a mapping of its fields),
    `max_invalid_actions`, `max_turns` (truncate and reveal the plan after this many steps; None, the default and
    what the registered ids use, leaves the time limit to `max_episode_steps`), `render_mode` ("ansi"),
    `expose_ground_truth` (default False; True puts the correct final action in the reset info for training-time
    reward models such as IGPO; the observations never show it).

    ## Registered IDs
    `creditgym/ToolUse-v1` (1-4 calls), `creditgym/ToolUse-Easy-v1` (1 call), `creditgym/ToolUse-Hard-v1`
    (3-4 calls); 10 steps each.

    ## Version History
    - v0: initial release.
    - v1: tool results restate the question (with the LLM trainer's default 2-turn history, the question was gone
      from the prompt by the third turn); each plan turn keeps its best ToolRL score, a tool turn pays only its
      improvement and `potential()` is the mean best score (every call turn used to use up a plan turn, so shaping
      paid junk calls as much as the expert's and one stray call turned later correct turns negative); the test
      split holds out the world-free families' questions too (with the same seed, 30% of test tasks were train
      tasks); counts must be exact (0.5% accepted off-by-one day counts); calculator expressions compare by value
      ("64.97*2" got half the credit of "64.97 * 2").
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        *,
        min_calls: int = 1,
        max_calls: int = 4,
        num_worlds: int = 16,
        split: str = "train",
        rewards: ToolUseRewards | Mapping[str, float] | None = None,
        max_invalid_actions: int | None = None,
        max_turns: int | None = None,
        render_mode: str | None = None,
        expose_ground_truth: bool = False,
    ) -> None:
        min_calls = positive_int("min_calls", min_calls)
        max_calls = positive_int("max_calls", max_calls)
        num_worlds = positive_int("num_worlds", num_worlds)
        max_invalid_actions = positive_int("max_invalid_actions", max_invalid_actions, optional=True)
        max_turns = positive_int("max_turns", max_turns, optional=True)
        expose_ground_truth = flag("expose_ground_truth", expose_ground_truth)
        if not 1 <= min_calls <= max_calls <= max(FAMILIES):
            raise ValueError(f"need 1 <= min_calls <= max_calls <= {max(FAMILIES)}, got {min_calls}, {max_calls}")
        if not 1 <= num_worlds <= TEST_WORLD_OFFSET:
            raise ValueError(f"num_worlds must be from 1 to {TEST_WORLD_OFFSET:,} (the test split's worlds start "
                             f"there, so more would share worlds with it), got {num_worlds}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.min_calls, self.max_calls = min_calls, max_calls
        self.num_worlds = num_worlds
        self.split = split
        self.rewards = reward_sizes(ToolUseRewards, rewards)
        self.max_invalid_actions = max_invalid_actions
        self.max_turns = max_turns
        self._turn_count = 0
        self.render_mode = render_mode
        self.expose_ground_truth = expose_ground_truth
        self.instructions = instructions(self.rewards)
        self.action_space = TextSpace(max_length=MAX_TEXT_LENGTH, charset=string.printable)
        self.observation_space = TextSpace(max_length=MAX_TEXT_LENGTH, min_length=1, charset=string.printable)
        self._task: Task | None = None
        self._best: list[float | None] = []
        """Per reference-plan turn, the best ToolRL score a tool turn got against it; None before any."""
        self._turns: list[dict[str, Any]] = []
        self._answer: str | None = None
        self._correct = False
        self._invalid_count = 0
        self._text = ""

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        require_reset(self._task is not None, "step")
        self._turn_count += 1
        parsed = parse_or_explain(action)
        if isinstance(parsed, str):
            contains_call = isinstance(action, str) and "<tool_call>" in action.lower()
            return self._invalid(f"Invalid action {excerpt(action)}: {parsed}.", contains_call)
        if self._answer is not None:
            return self._invalid("Invalid action: the question is answered and the episode is over.", False)
        for i, call in enumerate(parsed.calls, start=1):
            problem = check_arguments(call)
            if problem:
                return self._invalid(f"Invalid action: tool call {i}: {problem}. Nothing was run.", True)
        if parsed.answer is not None:
            self._answer = parsed.answer
            self._correct = answer_matches(parsed.answer, self.task.answer, exact=self.task.exact)
            task = self.rewards.correct if self._correct else self.rewards.wrong
            verdict = "correct" if self._correct else f"incorrect; the expected answer was {self.task.answer_text()}"
            observation = self._show(f"Your answer: {parsed.answer} -- {verdict}.")
            info = self._info(task=task, tool=0.0, format=0.0, invalid=False)
            return observation, task, True, False, self._reveal(info)
        results: list[dict[str, Any]] = []
        for call in parsed.calls:
            try:
                results.append({"content": run_tool(call, self._world())})
            except ToolError as error:
                results.append({"error": str(error)})
        tool = self.rewards.tool_weight * self._score_turn(parsed.calls, parsed.well_formatted)
        self._turns.append({"calls": [call.to_dict() for call in parsed.calls], "results": results})
        info = self._info(task=0.0, tool=tool, format=0.0, invalid=False)
        info["tool_errors"] = sum("error" in result for result in results)
        observation = self._show(f"{render_results(parsed.calls, results)}\nQuestion: {self.task.question}\n"
                                 "Call more tools or give your <answer>.")
        truncated = self._out_of_turns()
        return observation, tool, False, truncated, self._reveal(info) if truncated else info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        task = reset_option(options, "task")
        if task is None:
            world = int(self.np_random.integers(self.num_worlds))
            world += TEST_WORLD_OFFSET if self.split == "test" else 0
            task = generate_task(self.np_random, world, min_calls=self.min_calls, max_calls=self.max_calls,
                                 split=self.split)
        elif not isinstance(task, Task):
            raise TypeError(f"options['task'] must be a creditgym ToolUse Task, got {type(task).__name__}")
        self._task = task
        self._best, self._turns, self._answer, self._correct = [None] * len(task.plan), [], None, False
        self._invalid_count = self._turn_count = 0
        info = self._info(task=0.0, tool=0.0, format=0.0, invalid=False)
        # A deep copy: the schemas also drive argument checking, which a caller editing the info must not change.
        info.update(instructions=self.instructions, tools=copy.deepcopy(list(TOOL_SCHEMAS)), question=task.question)
        if self.expose_ground_truth:
            info["ground_truth"] = self.ground_truth()
        return self._show(f"Question: {task.question}"), info

    def render(self) -> str | None:
        return self._text if self.render_mode == "ansi" else None

    # -- state for reward design and shaping ------------------------------------------------------------
    def potential(self) -> float:
        """Progress through the reference plan, in [0, 1], for potential-based shaping: the mean over its turns of
        the best ToolRL score reached on each, scaled from [-3, 4] to [0, 1] (0 for a turn no call has touched).
        The exact plan reaches 1; a call that improves on no plan turn leaves it unchanged."""
        if self._task is None:
            return 0.0
        reached = [(best - _TOOLRL_MIN) / (_TOOLRL_MAX - _TOOLRL_MIN) for best in self._best if best is not None]
        return sum(reached) / len(self._best)

    def state(self) -> dict[str, Any]:
        """The current state as plain data; the reference plan and answer stay hidden (see `task`).
        `plan_turns_matched` counts the reference-plan turns that some turn of calls has been credited to."""
        return {
            "question": self._task.question if self._task else None,
            "turns": [{"calls": list(t["calls"]), "results": list(t["results"])} for t in self._turns],
            "plan_turns_matched": sum(best is not None for best in self._best),
            "answer": self._answer,
        }

    def ground_truth(self) -> str:
        """The correct final action, `<answer>...</answer>`: what IGPO's information gain scores the policy on.

        For training-time reward models only; reset puts it in `info["ground_truth"]` when the env is built with
        `expose_ground_truth=True`, and no observation ever contains it.
        """
        return f"<answer>{self.task.answer_text()}</answer>"

    def reference(self) -> dict[str, Any]:
        """The info keys that reveal the task at the end of an episode: `reference_plan` (a list of turns, each a
        list of call dicts) and `reference_answer` (always the answer as text, so that the key keeps one type and
        gymnasium's vector envs can batch it)."""
        return {
            "reference_plan": [[call.to_dict() for call in turn] for turn in self.task.plan],
            "reference_answer": self.task.answer_text(),
        }

    @property
    def task(self) -> Task:
        """The current task, reference plan and answer included (for experts, tests and analysis)."""
        if self._task is None:
            raise RuntimeError("call reset() before reading the task")
        return self._task

    # -- internals ------------------------------------------------------------------------------------
    def _score_turn(self, calls: tuple[Call, ...], format_ok: bool) -> float:
        """The ToolRL points a turn of calls earns (see Reward), updating the best score of the plan turn credited."""
        names = {call.name for call in calls}
        credited, gain, score = None, 0.0, 0.0
        for i, turn in enumerate(self.task.plan):
            if not names & {call.name for call in turn}:
                continue
            turn_score = toolrl_reward(calls, turn, format_ok=format_ok)
            best = self._best[i]
            turn_gain = turn_score if best is None else max(turn_score - best, 0.0)
            if credited is None or turn_gain > gain:  # ties go to the earliest plan turn
                credited, gain, score = i, turn_gain, turn_score
        if credited is None:  # no tool in common with any plan turn: ToolRL gives -3 + format against each of them
            return toolrl_reward(calls, self.task.plan[0], format_ok=format_ok)
        best = self._best[credited]
        self._best[credited] = score if best is None else max(best, score)
        return gain

    def _invalid(self, feedback: str, contains_call: bool) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self._invalid_count += 1
        tool = self.rewards.tool_weight * UNPARSEABLE if contains_call else 0.0
        penalty = self.rewards.invalid_action
        truncated = self.max_invalid_actions is not None and self._invalid_count >= self.max_invalid_actions
        truncated = truncated or self._out_of_turns()
        info = self._info(task=0.0, tool=tool, format=penalty, invalid=True)
        observation = self._show(f"{feedback}\nQuestion: {self.task.question}")
        return observation, tool + penalty, False, truncated, self._reveal(info) if truncated else info

    def _info(self, *, task: float, tool: float, format: float, invalid: bool) -> dict[str, Any]:
        return {
            "reward_components": {"task": task, "tool": tool, "format": format},
            "success": self._correct,
            "invalid_action": invalid,
        }

    def _out_of_turns(self) -> bool:
        return self.max_turns is not None and self._turn_count >= self.max_turns

    def _reveal(self, info: dict[str, Any]) -> dict[str, Any]:
        info.update(self.reference())
        return info

    def _show(self, text: str) -> str:
        if not _PRINTABLE.issuperset(text):
            text = "".join(ch if ch in _PRINTABLE else "?" for ch in text)
        self._text = text[:MAX_TEXT_LENGTH]
        return self._text

    def _world(self) -> World:
        return World.get(self.task.world)


class RevealAtTimeLimit(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds the reference plan and answer (`ToolUseEnv.reference()`) to the info of a step that a time limit outside
    the env truncated, as the env does itself on the steps it ends.

    The registered ToolUse ids apply it over gymnasium's TimeLimit (`additional_wrappers`), so that
    `gym.make(id, max_episode_steps=N)` changes the limit without losing the reveal.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        if truncated and "reference_plan" not in info:
            info = {**info, **self.env.unwrapped.reference()}
        return observation, reward, terminated, truncated, info
