import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from creditgym.credit import (
    broadcast_to_tokens,
    broadcast_turn_values,
    gather_turn_values,
    place_outcome_reward,
    place_turn_rewards,
    turn_end_mask,
    turn_end_positions_to_mask,
)

from .strategies import quick


@st.composite
def action_masks(draw):
    b, length = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    bits = draw(st.lists(st.booleans(), min_size=b * length, max_size=b * length))
    return torch.tensor(bits).view(b, length)


def ref_turn_ends(mask):
    """Loop: an action token whose successor is not an action token (or that is the last token)."""
    b, length = mask.shape
    return [[t for t in range(length) if mask[i, t] and (t == length - 1 or not mask[i, t + 1])] for i in range(b)]


@quick
@given(action_masks(), st.integers(0, 2**16))
def test_turn_rewards_land_exactly_on_end_of_turn_tokens(mask, seed):
    ends = ref_turn_ends(mask)
    k = max((len(e) for e in ends), default=0)
    rewards = torch.randn(mask.shape[0], k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    turn_mask = torch.tensor([[j < len(e) for j in range(k)] for e in ends], dtype=torch.bool).reshape(mask.shape[0], k)
    em = turn_end_mask(mask)
    placed = place_turn_rewards(rewards, em, turn_mask)
    expected = torch.zeros(mask.shape, dtype=torch.float64)
    for i, e in enumerate(ends):
        for j, t in enumerate(e):
            expected[i, t] = rewards[i, j]
    assert torch.equal(placed, expected)
    assert [[t for t in range(mask.shape[1]) if em[i, t]] for i in range(mask.shape[0])] == ends
    # Gathering back recovers the turn rewards; positions round-trip through the mask form.
    got, got_mask = gather_turn_values(placed, em, num_turns=k)
    assert torch.equal(got_mask, turn_mask)
    assert torch.equal(got, torch.where(turn_mask, rewards, torch.zeros_like(rewards)))
    positions = torch.tensor([e + [-1] * (k - len(e)) for e in ends], dtype=torch.long).reshape(mask.shape[0], k)
    assert torch.equal(turn_end_positions_to_mask(positions, mask.shape[1]), em)


@quick
@given(action_masks(), st.integers(0, 2**16))
def test_broadcast_turn_values_gives_each_action_token_its_turn(mask, seed):
    ends = ref_turn_ends(mask)
    k = max((len(e) for e in ends), default=0)
    values = torch.randn(mask.shape[0], k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = broadcast_turn_values(values, turn_end_mask(mask), mask)
    for i, e in enumerate(ends):
        for t in range(mask.shape[1]):
            turn = next((j for j, end in enumerate(e) if end >= t), None)
            expected = float(values[i, turn]) if mask[i, t] and turn is not None else 0.0
            assert float(out[i, t]) == expected


def test_observation_tokens_get_nothing_hand_case():
    # prompt prompt | a a | obs obs | a | obs
    mask = torch.tensor([[0, 0, 1, 1, 0, 0, 1, 0]], dtype=torch.bool)
    placed = place_turn_rewards(torch.tensor([[0.5, 2.0]]), turn_end_mask(mask))
    assert placed.tolist() == [[0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 2.0, 0.0]]


def test_turn_count_mismatch_raises():
    ends = torch.tensor([[True, False, True, True]])
    with pytest.raises(ValueError):
        place_turn_rewards(torch.tensor([[1.0, 2.0]]), ends)
    with pytest.raises(ValueError):
        place_turn_rewards(torch.tensor([[1.0, 2.0, 3.0]]), ends, torch.tensor([[True, True, False]]))
    # fewer ends than valid turns would drop the last turns' rewards (often the outcome) without a word
    with pytest.raises(ValueError, match="1 turn ends but 2 turn rewards"):
        place_turn_rewards(torch.tensor([[1.0, 2.0]]), torch.tensor([[False, True, False]]),
                           torch.tensor([[True, True]]))


def test_action_tokens_after_the_last_turn_end_get_nothing():
    # turn ends given apart from the action mask (turn-level mode): trailing action tokens belong to no turn
    ends = torch.tensor([[False, True, False, False, False]])
    act = torch.tensor([[True, True, False, True, True]])
    assert broadcast_turn_values(torch.tensor([[1.0, 2.0]]), ends, act).tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]


def test_outcome_on_last_valid_token_and_broadcast():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    r = torch.tensor([1.0, -2.0, 3.0])
    assert place_outcome_reward(r, mask).tolist() == [[0, 1, 0, 0], [0, 0, 0, -2], [0, 0, 3, 0]]
    assert broadcast_to_tokens(r, mask).tolist() == [[1, 1, 0, 0], [-2, -2, -2, -2], [0, 3, 3, 0]]
