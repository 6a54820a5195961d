"""ToolRL's properties (reward-methods.md), answer checking, and the action parser."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditgym.envs.tooluse import text as text_module
from creditgym.envs.tooluse.reward import answer_matches, jaccard, toolrl_correctness, toolrl_reward
from creditgym.envs.tooluse.text import ToolUseAction, parse_action, parse_or_explain
from creditgym.envs.tooluse.tools import Call

QUERY = Call("query_inventory", {"store": "Oslo", "color": "red", "order_by": "price", "limit": 1})
CONVERT = Call("convert_currency", {"amount": 189.5, "from_currency": "NOK", "to_currency": "EUR"})
names = st.lists(st.sampled_from(["calculator", "convert_units", "query_inventory", "date_add"]), max_size=6)


def test_exact_match_with_correct_format_scores_four() -> None:
    assert toolrl_reward([QUERY], [QUERY]) == 4.0
    assert toolrl_reward([QUERY, CONVERT], [QUERY, CONVERT]) == 4.0
    assert toolrl_reward([CONVERT, QUERY], [QUERY, CONVERT]) == 4.0  # order does not matter
    assert toolrl_reward([QUERY], [QUERY], format_ok=False) == 3.0


def test_unparseable_scores_minus_three() -> None:
    assert toolrl_reward(None, [QUERY]) == -3.0
    assert toolrl_reward(None, []) == -3.0


@given(names, names)
def test_jaccard_is_symmetric_and_one_on_itself(a: list[str], b: list[str]) -> None:
    assert jaccard(a, b) == jaccard(b, a)
    assert jaccard(a, a) == 1.0
    assert 0.0 <= jaccard(a, b) <= 1.0


def test_jaccard_counts_multisets() -> None:
    assert jaccard(["a", "a", "b"], ["a", "b"]) == pytest.approx(2 / 3)
    assert jaccard(["a"], ["b"]) == 0.0


def test_partial_credit_follows_the_formula() -> None:
    # S = J(names) 1 + J(keys) 1 + 2 equal values (store, color) of 4; S_max = 1 + 1 + 4 = 6
    guess = Call("query_inventory", {"store": "oslo ", "color": "red", "order_by": "stock", "limit": 3})
    assert toolrl_correctness([guess], [QUERY]) == pytest.approx(6 * 4 / 6 - 3)
    # a wrong tool: nothing matches
    assert toolrl_correctness([Call("calculator", {"expression": "1"})], [QUERY]) == -3.0
    # one of two ground-truth calls: J(names) = 1/2, plus the query's 1 + 4; S_max = 1 + 5 + 4
    assert toolrl_correctness([QUERY], [QUERY, CONVERT]) == pytest.approx(6 * 5.5 / 10 - 3)
    # numbers compare by value, not by type
    assert toolrl_correctness([Call("calculator", {"expression": "1", "x": 3.0})],
                              [Call("calculator", {"expression": "1", "x": 3})]) == 3.0


def test_no_ground_truth_call() -> None:
    assert toolrl_correctness([], []) == 0.0
    assert toolrl_correctness([QUERY], []) == -3.0  # J(names, {}) = 0


def test_bounds_on_random_calls() -> None:
    rng = np.random.default_rng(0)
    pool = [QUERY, CONVERT, Call("calculator", {"expression": "2*3"}), Call("calculator", {"expression": "3*2"}),
            Call("query_inventory", {"store": "Lima"}), Call("date_add", {"date": "2024-01-01", "days": 3})]
    for _ in range(300):
        predicted = [pool[i] for i in rng.integers(len(pool), size=rng.integers(0, 4))]
        truth = [pool[i] for i in rng.integers(len(pool), size=rng.integers(1, 4))]
        assert -3.0 <= toolrl_reward(predicted, truth, format_ok=bool(rng.integers(2))) <= 4.0


@pytest.mark.parametrize(
    ("answer", "expected", "correct"),
    [
        ("49.12", 49.12, True), ("The total is 1,234.50 EUR", 1234.5, True), ("about 49.3", 49.12, True),
        ("49.5", 49.12, False), ("3 units cost 49.12", 49.12, True), ("49.12 for 3 units", 49.12, False),
        ("no idea", 49.12, False), ("0", 0, True), ("-7", -7, True),
        ("2024-03-01", "2024-03-01", True), ("It is 2024-03-01.", "2024-03-01", True),
        ("2024-03-02", "2024-03-01", False),
        ("friday", "Friday", True), ("The Oslo store.", "Oslo", False), ("the oslo", "Oslo", True),
        ("Sao Paulo!", "Sao Paulo", True),
    ],
)
def test_answer_matching(answer: str, expected: str | float, correct: bool) -> None:
    assert answer_matches(answer, expected) is correct


def test_parse_tool_calls_and_answers() -> None:
    one = '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 2"}}</tool_call>'
    assert parse_action(one) == ToolUseAction(calls=(Call("calculator", {"expression": "2 + 2"}),))
    assert parse_action(f"<think>add</think>\n{one}\n{one}").calls == (Call("calculator", {"expression": "2 + 2"}),) * 2
    assert parse_action(f"Let me add. {one}").well_formatted is False
    wire = '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1\\"}"}</tool_call>'
    assert parse_action(wire).calls == (Call("calculator", {"expression": "1"}),)
    assert parse_action("<think>done</think><answer> 42.5 </answer>") == ToolUseAction(answer="42.5")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no <tool_call>"), ("42", "no <tool_call>"), ("<answer></answer>", "answer is empty"),
        ("<tool_call>{bad json}</tool_call>", "not valid JSON"), ("<tool_call>[1, 2]</tool_call>", "JSON object"),
        ('<tool_call>{"name": "calculator"', "matching </tool_call>"),
        ('<tool_call>{"name": "a", "arguments": [1]}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "a", "args": {}}</tool_call>', "unexpected keys"),
        ('<tool_call>{"name": "a"}</tool_call><answer>1</answer>', "not both"),
        ("<tool_call>" + "[" * 5000 + "</tool_call>", "not valid JSON"),
        ("x" * 10_000, "longer than"),
        ('<tool_call>{"name": "a"}</tool_call>' * 9, "at most 8"),
        # Two calls in one block (one JSON object a line) used to get only "not valid JSON".
        ('<tool_call>{"name": "a", "arguments": {}}\n{"name": "b", "arguments": {}}</tool_call>',
         "one call per <tool_call> block"),
    ],
)
def test_parse_failures_are_explained(text: str, reason: str) -> None:
    assert reason in parse_or_explain(text)
    assert parse_action(text) is None


@pytest.mark.parametrize(
    "text",
    ["<answer>" * 20_000, "</tool_call>" * 12_000 + "<tool_call>" * 12_000],
    ids=["unclosed answers", "closing tags first"],
)
def test_degenerate_tag_spam_parses_in_linear_time(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The lazy "<answer>(.*?)</answer>" rescanned to the end from every unclosed tag: 0.15 s for the 1,000 tags that
    # fit the 8,000-character cap, 6 s for 10,000 and four times that for the 20,000 here. Lifting the cap shows the
    # growth; linear parsing takes milliseconds, so 5 s only guards against a hang on a loaded machine.
    monkeypatch.setattr(text_module, "MAX_ACTION_LENGTH", 10**6)
    start = time.perf_counter()
    parse_or_explain(text)
    assert time.perf_counter() - start < 5.0


_PIECES = ["<tool_call>", "</tool_call>", "<answer>", "</answer>", "<TOOL_CALL>", "</Answer>", "x", "\n", " ", "<"]


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_tag_pairing_agrees_with_the_lazy_regex(pieces: list[str]) -> None:
    # The one-pass pairing must find and remove exactly the blocks the regex did (fine on short text).
    text = "".join(pieces)
    for name in ("tool_call", "answer"):
        regex = re.compile(f"<{name}>(.*?)</{name}>", re.DOTALL | re.IGNORECASE)
        assert text_module._blocks(text, name) == (regex.findall(text), regex.sub("", text))
