"""Every tool's argument checks (wrong types, missing and extra arguments), date strictness, and ground truth
that only appears when asked for."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from creditgym.envs.tooluse.env import ToolUseEnv
from creditgym.envs.tooluse.expert import ToolUseExpert
from creditgym.envs.tooluse.tools import TOOLS, Call, check_arguments, run_tool
from creditgym.envs.tooluse.world import World

GOOD: dict[str, dict[str, Any]] = {
    "calculator": {"expression": "1 + 1"},
    "convert_units": {"value": 3, "from_unit": "lb", "to_unit": "kg"},
    "convert_currency": {"amount": 10.5, "from_currency": "usd", "to_currency": "EUR"},
    "query_inventory": {"store": "Oslo", "item": "mug", "color": "red", "order_by": "price", "descending": True,
                        "limit": 3},
    "date_add": {"date": "2024-02-28", "days": 2},
    "date_diff": {"start_date": "2024-01-01", "end_date": "2024-03-01"},
}
# One wrong value per JSON type, for each schema type.
WRONG: dict[str, list[Any]] = {
    "string": [3, 2.5, True, None, [], {}, ["x"]],
    "number": ["3", True, False, None, [], {}, [1]],
    "integer": ["2", 2.0, 2.5, True, None, [], {}, 10**13],
    "boolean": [1, 0, "true", None, [], {}],
}


def test_the_good_calls_cover_every_tool_and_argument() -> None:
    assert set(GOOD) == set(TOOLS)
    for name, arguments in GOOD.items():
        assert set(arguments) == set(TOOLS[name]["parameters"]["properties"])
        assert check_arguments(Call(name, arguments)) is None


def _cases() -> list[tuple[str, dict[str, Any], str]]:
    cases = []
    for name, good in GOOD.items():
        properties = TOOLS[name]["parameters"]["properties"]
        for key, schema in properties.items():
            for value in WRONG[schema["type"]]:
                cases.append((name, {**good, key: value}, f"argument '{key}' must be"))
        for key in TOOLS[name]["parameters"]["required"]:
            cases.append((name, {k: v for k, v in good.items() if k != key}, f"needs the argument '{key}'"))
        cases.append((name, {**good, "extra": 1}, "has no argument 'extra'"))
    cases += [
        ("query_inventory", {"limit": 0}, "between 1 and 20"),
        ("query_inventory", {"limit": 21}, "between 1 and 20"),
        ("query_inventory", {"order_by": "price; DROP TABLE inventory"}, "must be one of"),
        ("convert_units", {**GOOD["convert_units"], "value": math.nan}, "must be a finite number"),
        ("convert_currency", {**GOOD["convert_currency"], "amount": math.inf}, "must be a finite number"),
        # JSON integers of up to 4,300 digits parse; past a float's range math.isfinite raised OverflowError in step().
        ("convert_units", {**GOOD["convert_units"], "value": 10**400}, "must be a finite number"),
        ("convert_currency", {**GOOD["convert_currency"], "amount": -(10**4000)}, "must be a finite number"),
        ("Calculator", {"expression": "1"}, "unknown tool 'Calculator'"),
    ]
    return cases


@pytest.mark.parametrize(("name", "arguments", "message"), _cases())
def test_bad_arguments_are_invalid_and_run_nothing(name: str, arguments: dict[str, Any], message: str) -> None:
    assert message in (check_arguments(Call(name, arguments)) or "")
    env = ToolUseEnv()
    env.reset(seed=0)
    good = f"<tool_call>{json.dumps({'name': 'calculator', 'arguments': {'expression': '2 * 3'}})}</tool_call>"
    action = good + f"<tool_call>{json.dumps({'name': name, 'arguments': arguments}, allow_nan=True)}</tool_call>"
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["invalid_action"] and not terminated and env.state()["turns"] == []  # not even the good call ran
    assert obs.startswith("Invalid action: tool call 2: ") and message in obs and "Nothing was run." in obs
    assert env.observation_space.contains(obs) and math.isclose(reward, sum(info["reward_components"].values()))


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("date_diff", {"start_date": "20240101", "end_date": "2024-01-05"}),
        ("date_diff", {"start_date": "2024-01-01", "end_date": "2024-W01-1"}),
        ("date_diff", {"start_date": "2024-01-01", "end_date": "2024-02-30"}),
        ("date_diff", {"start_date": "2024-1-1", "end_date": "2024-01-05"}),
        ("date_add", {"date": "2024-01-01T00:00", "days": 1}),
        ("date_add", {"date": "\uff12\uff10\uff12\uff14-01-01", "days": 1}),  # full-width digits
    ],
)
def test_dates_must_be_yyyy_mm_dd_on_every_python(tool: str, arguments: dict[str, Any]) -> None:
    env = ToolUseEnv()
    env.reset(seed=0)
    obs, _, _, _, info = env.step(f"<tool_call>{json.dumps({'name': tool, 'arguments': arguments})}</tool_call>")
    assert not info["invalid_action"] and info["tool_errors"] == 1
    assert "not a date in YYYY-MM-DD form" in obs


def test_weekday_does_not_follow_the_process_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    class GermanDate(dt.date):
        def strftime(self, fmt: str) -> str:  # what strftime("%A") gives under a de_DE locale
            return {"%A": "Donnerstag"}.get(fmt, super().strftime(fmt))

    monkeypatch.setattr(dt, "date", GermanDate)
    result = run_tool(Call("date_add", {"date": "2024-02-28", "days": 1}), World.get(0))
    assert result == {"date": "2024-02-29", "weekday": "Thursday"}


def test_editing_the_reset_info_cannot_change_the_tools() -> None:
    env = ToolUseEnv()
    _, info = env.reset(seed=0)
    calculator = next(tool for tool in info["tools"] if tool["function"]["name"] == "calculator")
    calculator["function"]["parameters"]["required"].append("precision")
    calculator["function"]["parameters"]["properties"].clear()
    assert check_arguments(Call("calculator", {"expression": "1"})) is None
    assert env.reset(seed=0)[1]["tools"] != info["tools"]


def test_ground_truth_only_when_asked_and_never_observed() -> None:
    hidden, shown = ToolUseEnv(), ToolUseEnv(expose_ground_truth=True)
    expert = ToolUseExpert()
    for seed in range(10):
        obs, info = hidden.reset(seed=seed)
        assert "ground_truth" not in info and "reference_answer" not in info
        obs_shown, info_shown = shown.reset(seed=seed)
        assert info_shown["ground_truth"] == f"<answer>{shown.task.answer_text()}</answer>" == shown.ground_truth()
        assert obs_shown == obs and info_shown["ground_truth"] not in obs_shown
        terminated = truncated = False
        for _ in range(10):  # bounded: a broken expert must fail the test, not hang it
            obs, _, terminated, truncated, info = shown.step(expert(shown))
            if terminated or truncated:
                break
            assert "ground_truth" not in info and info_shown["ground_truth"] not in obs
            assert ("reference_answer" in info) == (terminated or truncated)
        assert terminated and info["success"]
    for bad in ("no", 1, None):
        with pytest.raises(ValueError, match="expose_ground_truth must be True or False"):
            ToolUseEnv(expose_ground_truth=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"min_calls": "1"}, ValueError, "min_calls must be a positive integer"),
        ({"max_calls": 2.0}, ValueError, "max_calls must be a positive integer"),
        ({"num_worlds": None}, ValueError, "num_worlds must be a positive integer"),
        # Used to fail at reset with numpy's "high is out of bounds for int64"; past 10,000 worlds the train worlds
        # would reach the test split's.
        ({"num_worlds": 2**70}, ValueError, "num_worlds must be from 1 to 10,000"),
        ({"num_worlds": 10_001}, ValueError, "num_worlds must be from 1 to 10,000"),
        ({"max_turns": "5"}, ValueError, "max_turns must be a positive integer or None, got '5'"),
        ({"max_invalid_actions": 0}, ValueError, "max_invalid_actions must be a positive integer"),
        ({"max_invalid_actions": 1.5}, ValueError, "max_invalid_actions must be a positive integer"),
    ],
)
def test_constructor_arguments_are_checked(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ToolUseEnv(**kwargs)
