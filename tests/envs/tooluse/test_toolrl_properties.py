"""ToolRL's score written out as reward-methods.md states it, on cases where shortcuts would give other numbers.

J = multiset intersection / (|A| + |B| − intersection); ground-truth calls are matched greedily among predicted
calls *with the same name*, each predicted call used at most once; S_max = 1 + Σ_gt (1 + |params|);
R_correct = 6·S/S_max − 3.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditgym.envs.tooluse.reward import jaccard, toolrl_correctness
from creditgym.envs.tooluse.tools import Call

items = st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=6)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(items, items)
def test_jaccard_is_intersection_over_size_sum_minus_intersection(a: list[str], b: list[str]) -> None:
    shared = sum((Counter(a) & Counter(b)).values())
    expected = 1.0 if not a and not b else shared / (len(a) + len(b) - shared)
    assert jaccard(a, b) == pytest.approx(expected)


def test_jaccard_hand_values() -> None:
    assert jaccard(["a", "b"], ["a", "c"]) == pytest.approx(1 / 3)  # not 1/2 (intersection over the larger)
    assert jaccard(["a", "a", "b"], ["a", "c", "c", "d"]) == pytest.approx(1 / 6)


def test_calls_are_matched_only_to_predicted_calls_of_the_same_name() -> None:
    truth = Call("date_add", {"date": "2024-01-01", "days": 3})
    same_arguments_other_tool = Call("calculator", {"date": "2024-01-01", "days": 3})
    # J(names) = 0 and no call of the same name to match: S = 0 ⇒ −3
    assert toolrl_correctness([same_arguments_other_tool], [truth]) == -3.0


def test_each_predicted_call_matches_at_most_one_ground_truth_call() -> None:
    one, two = Call("calculator", {"expression": "1+1"}), Call("calculator", {"expression": "2+2"})
    # S = J(names) 1/2 + (J(keys) 1 + 1 equal value) for the first; the second finds no unused call.
    # S_max = 1 + (1 + 1) + (1 + 1) = 5
    assert toolrl_correctness([one], [one, two]) == pytest.approx(6 * 2.5 / 5 - 3)
    # Both predicted: each ground-truth call takes its own best match.
    assert toolrl_correctness([two, one], [one, two]) == pytest.approx(3.0)
