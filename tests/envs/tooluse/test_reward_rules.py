"""ToolUse reward rules: booleans are not numbers, a date answer is not judged by its first date, calculator
expressions compare by value, and counts are exact."""

from __future__ import annotations

import pytest

from creditgym.envs.tooluse.reward import (
    answer_matches,
    argument_values_equal,
    toolrl_correctness,
    toolrl_reward,
    values_equal,
)
from creditgym.envs.tooluse.tools import Call


@pytest.mark.parametrize(("a", "b"), [(True, 1), (1, True), (False, 0), (0.0, False), (True, 1.0)])
def test_a_bool_never_equals_a_number(a: object, b: object) -> None:
    # bool subclasses int in Python, but JSON true and 1 are different argument values.
    assert values_equal(a, b) is False


@pytest.mark.parametrize(("a", "b"), [(True, True), (False, False), (3, 3.0), (" Oslo ", "oslo")])
def test_equal_values(a: object, b: object) -> None:
    assert values_equal(a, b) is True


def test_a_bool_argument_for_a_number_loses_the_value_point() -> None:
    truth = [Call("query_inventory", {"store": "Oslo", "limit": 1}), Call("calculator", {"expression": "2*3"})]
    # Call order differs from the truth's, so the scorer goes through values_equal rather than its shortcut.
    # J(names) 1 + query: J(keys) 1 + store 1 + calculator: 1 + 1, of S_max = 1 + (1 + 2) + (1 + 1) = 6.
    predicted = [Call("calculator", {"expression": "2*3"}), Call("query_inventory", {"store": "Oslo", "limit": True})]
    assert toolrl_correctness(predicted, truth) == pytest.approx(6 * 5 / 6 - 3)


def test_the_exact_match_shortcut_agrees_with_values_equal() -> None:
    # One call in the truth's order takes the exact-match shortcut, which returned 3 when it compared with ==,
    # where {"limit": True} == {"limit": 1}; scored value by value it is 6 * 3 / 4 - 3 = 1.5.
    truth = Call("query_inventory", {"store": "Oslo", "limit": 1})
    predicted = Call("query_inventory", {"store": "Oslo", "limit": True})
    assert toolrl_correctness([predicted], [truth]) == pytest.approx(6 * 3 / 4 - 3)


@pytest.mark.parametrize(
    ("answer", "correct"),
    [
        # The last ISO date is the answer's, as the last number is: an answer may state a start date first.
        ("Started 2024-01-01; due 2024-02-03", True),
        ("From 2024-01-01 to 2024-02-03.", True),
        ("Due 2024-02-03, started 2024-01-01", False),  # its final date is another one
        ("Started 2024-01-01; due 2024-02-30", False),  # 2024-02-30 is no date, and 2024-01-01 is the wrong one
    ],
)
def test_the_answers_last_date_is_compared(answer: str, correct: bool) -> None:
    assert answer_matches(answer, "2024-02-03") is correct


def test_greedy_matching_gives_a_tie_to_the_earliest_predicted_call() -> None:
    """ToolRL's reference code takes a strictly better score only, so of two equally good calls the first is
    matched. Here that leaves the worse call for the second ground-truth call; `>=` would score 3.0 + 1/3."""
    truth = [Call("f", {"a": 1}), Call("f", {"a": 1, "b": 5})]
    predicted = [Call("f", {"a": 1, "b": 5}), Call("f", {"a": 1, "c": 3})]
    # J(names) = 1; truth 1 ties at 0.5 + 1 and takes predicted 0; truth 2 gets predicted 1: J = 1/3, one value.
    score = 1 + 1.5 + (1 / 3 + 1)
    best_possible = 1 + 2 + 3
    assert toolrl_correctness(predicted, truth) == pytest.approx(6 * score / best_possible - 3)


def test_a_call_that_scores_nothing_stays_free_for_a_later_ground_truth_call() -> None:
    truth = [Call("f", {"a": 1}), Call("f", {"b": 2})]
    predicted = [Call("f", {"b": 2})]
    # truth 1 scores 0 against it (no shared key), so truth 2 still matches it fully: J = 1, one value.
    score = 0.5 + 0 + 2
    assert toolrl_correctness(predicted, truth) == pytest.approx(6 * score / 5 - 3)


@pytest.mark.parametrize("expression", ["64.97*2", "2 * 64.97", "(64.97 * 2)", "64.97 * 2.0", " 129.94 "])
def test_calculator_expressions_are_compared_by_value(expression: str) -> None:
    # The policy cannot know the plan's spacing or order; these scored 2 (half the credit) when compared as text.
    plan = [Call("calculator", {"expression": "64.97 * 2"})]
    assert toolrl_reward([Call("calculator", {"expression": expression})], plan) == 4.0


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("64.97 * 3", "64.97 * 2", False),  # different values
        ("x + 1", "X + 1", True), ("x + 1", "x+1", False),  # neither evaluates: text, ignoring case and outer spaces
        ("1 / 0", "1/0", False),  # an error on both sides is no value to compare
        ("2 + 2", "four", False),
    ],
)
def test_calculator_expressions_that_do_not_evaluate_compare_as_text(a: str, b: str, equal: bool) -> None:
    assert argument_values_equal("calculator", "expression", a, b) is equal


def test_only_calculator_expressions_are_evaluated() -> None:
    assert argument_values_equal("query_inventory", "store", "1 + 1", "2") is False
    assert argument_values_equal("calculator", "expression", "1 + 1", "2") is True


@pytest.mark.parametrize(("answer", "correct"), [("400", True), ("400.0", True), ("It took 400 days.", True),
                                                 ("401", False), ("399", False), ("400.4", False)])
def test_exact_answers_allow_no_tolerance(answer: str, correct: bool) -> None:
    assert answer_matches(answer, 400, exact=True) is correct
    assert answer_matches(answer, 400) is True  # 0.5% of 400 is 2
