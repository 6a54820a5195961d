"""ToolUse rewards: the ToolRL tool-call score, answer checking and the env's reward sizes.

ToolRL (Qian et al. 2025), per turn: R = R_format in {0, 1} + R_correct in [-3, 3], where
    S = J(tool names) + sum over matched ground-truth calls of [J(parameter keys) + number of equal values],
    J(A, B) = |A & B| / (|A| + |B| - |A & B|) over multisets,
    S_max = 1 + sum over ground-truth calls of (1 + number of their parameters),
    R_correct = 6 S / S_max - 3.
Each ground-truth call, in order, is matched greedily to the unused predicted call with the same name that
scores most. As in ToolRL's reference code, a tie goes to the earliest such call, and a call that scores 0 is
not matched (it stays free for a later ground-truth call). Unparseable output scores -3. With no ground-truth
call, a turn that makes no call scores 0 (nothing to judge); a turn that makes calls has J(names) = 0 and so
R_correct = -3, as the formula gives.
Values are "equal" when numbers are equal (3 == 3.0) or strings match ignoring case and outer spaces; calculator
expressions are equal when the calculator gives both the same number ("64.97*2" and "2 * 64.97"), since the policy
cannot know the reference plan's spacing or order.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from creditgym.envs.arguments import FiniteRewards
from creditgym.envs.tooluse.calculator import CalculatorError, calculate
from creditgym.envs.tooluse.tools import Call

UNPARSEABLE = -3.0
NUMBER_RELATIVE_TOLERANCE = 0.005
NUMBER_ABSOLUTE_TOLERANCE = 0.01
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_NON_WORD = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class ToolUseRewards(FiniteRewards):
    """Reward sizes for `ToolUseEnv`."""

    correct: float = 1.0
    """A correct final answer, into `task`."""
    wrong: float = 0.0
    """A wrong final answer, into `task`."""
    tool_weight: float = 0.05
    """Multiplies each turn's ToolRL score (in [-3, 4]) paid into `tool`; 0 turns the channel off."""
    invalid_action: float = -0.1
    """Text that is neither valid tool calls nor an answer, into `format`."""



def jaccard(a: Iterable[Any], b: Iterable[Any]) -> float:
    """Multiset Jaccard similarity; 1 for two empty multisets."""
    a, b = list(a), list(b)
    if a == b:
        return 1.0
    shared = sum((Counter(a) & Counter(b)).values())
    return shared / (len(a) + len(b) - shared)


def values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().casefold() == b.strip().casefold()
    return a == b


def argument_values_equal(tool: str, key: str, a: Any, b: Any) -> bool:
    """`values_equal`, except that two calculator expressions are equal when they evaluate to the same number
    (text equality when either one does not evaluate)."""
    if tool == "calculator" and key == "expression" and isinstance(a, str) and isinstance(b, str):
        value_a, value_b = _expression_value(a), _expression_value(b)
        if value_a is not None and value_b is not None:
            return value_a == value_b
    return values_equal(a, b)


@functools.lru_cache(maxsize=4096)  # the plan's expressions are compared again on every turn
def _expression_value(expression: str) -> float | None:
    try:
        return calculate(expression)
    except CalculatorError:
        return None


def _same_calls(predicted: Sequence[Call], ground_truth: Sequence[Call]) -> bool:
    """The same calls in the same order, each value equal as `values_equal` says (not ==, where True == 1)."""
    return len(predicted) == len(ground_truth) and all(
        p.name == t.name and p.arguments.keys() == t.arguments.keys()
        and all(values_equal(p.arguments[k], t.arguments[k]) for k in t.arguments)
        for p, t in zip(predicted, ground_truth, strict=True))


def toolrl_correctness(predicted: Sequence[Call], ground_truth: Sequence[Call]) -> float:
    """R_correct in [-3, 3]."""
    if not ground_truth:
        return 0.0 if not predicted else -3.0
    if _same_calls(predicted, ground_truth):  # the common case for a good policy; same result, much cheaper
        return 3.0
    score = jaccard([c.name for c in predicted], [c.name for c in ground_truth])
    best_possible = 1.0
    used: set[int] = set()
    for truth in ground_truth:
        best_possible += 1 + len(truth.arguments)
        best, best_index = 0.0, -1
        for i, guess in enumerate(predicted):
            if i in used or guess.name != truth.name:
                continue
            match = jaccard(list(guess.arguments), list(truth.arguments)) + sum(
                1 for key, value in truth.arguments.items()
                if key in guess.arguments and argument_values_equal(truth.name, key, guess.arguments[key], value)
            )
            if match > best:  # strictly: ties keep the earliest call, as ToolRL's reference code does
                best, best_index = match, i
        if best_index >= 0:
            used.add(best_index)
            score += best
    return 6.0 * score / best_possible - 3.0


def toolrl_reward(predicted: Sequence[Call] | None, ground_truth: Sequence[Call], *, format_ok: bool = True) -> float:
    """R = R_format + R_correct in [-3, 4]; `predicted=None` means the output could not be parsed (-3)."""
    if predicted is None:
        return UNPARSEABLE
    return float(format_ok) + toolrl_correctness(predicted, ground_truth)


def answer_matches(answer: str, expected: str | float, *, exact: bool = False) -> bool:
    """Numbers: the last number in the answer (commas dropped), equal to the expected one when `exact` (counts:
    days, weeks, items), otherwise within 0.5% or 0.01, whichever is larger (money, conversions, percentages).
    Dates: the last ISO date in the answer, equal to the expected one (the answer's final value counts, as for
    numbers). Text: equal after lower-casing and dropping punctuation and a leading "the"."""
    if isinstance(expected, int | float):
        numbers = _NUMBER.findall(answer.replace(",", ""))
        if not numbers:
            return False
        value = float(numbers[-1])
        if exact:
            return value == expected
        return abs(value - expected) <= max(NUMBER_ABSOLUTE_TOLERANCE, NUMBER_RELATIVE_TOLERANCE * abs(expected))
    if _ISO_DATE.fullmatch(expected):
        found = _ISO_DATE.findall(answer)
        return bool(found) and _iso(found[-1]) == expected
    return _normalise(answer) == _normalise(expected)


def _iso(parts: tuple[str, str, str]) -> str | None:
    try:
        return dt.date(*(int(p) for p in parts)).isoformat()
    except ValueError:
        return None


def _normalise(text: str) -> str:
    words = _NON_WORD.sub(" ", text.casefold()).split()
    if words[:1] == ["the"]:
        words = words[1:]
    return " ".join(words)
