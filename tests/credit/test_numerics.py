"""Edge-case numerics of the shared statistics: float32 zero-variance groups, non-finite and masked inputs,
integer rewards."""

from __future__ import annotations

import pytest
import torch

from creditgym.credit import (
    dr_grpo_advantages,
    grpo_advantages,
    masked_whiten,
    place_outcome_reward,
    prime_advantages,
    reinforce_pp_advantages,
    reward_to_go,
    rloo_advantages,
)


@pytest.mark.parametrize("value", [0.97, 0.9, 0.1, -0.3, 100 / 3])
@pytest.mark.parametrize("k", [5, 8, 16])
def test_float32_zero_variance_group_gets_exactly_zero(value, k):
    r = torch.full((k,), value)  # float32, as TokenBatch.returns
    assert torch.equal(grpo_advantages(r, [0] * k), torch.zeros(k))


@pytest.mark.parametrize("value", [0.97, 0.9, 0.1, -0.3])
def test_float32_whitening_of_a_constant_batch_is_zero(value):
    mask = torch.ones(8, 64, dtype=torch.bool)
    tokens = place_outcome_reward(torch.full((8,), value), mask)
    assert torch.equal(reinforce_pp_advantages(tokens, mask), torch.zeros(8, 64))
    assert torch.equal(masked_whiten(torch.full((1000,), value)), torch.zeros(1000))


@pytest.mark.parametrize("junk", [float("nan"), float("inf")])
def test_masked_non_finite_values_do_not_reach_the_group_statistics(junk):
    r, m = torch.tensor([1.0, 0.0, junk]), torch.tensor([True, True, False])
    torch.testing.assert_close(rloo_advantages(r, [0, 0, 0], m), torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(dr_grpo_advantages(r, [0, 0, 0], m), torch.tensor([0.5, -0.5, 0.0]))
    assert grpo_advantages(r, [0, 0, 0], m)[0] > 0.7


def test_non_finite_valid_inputs_stay_non_finite_for_the_trainers_checks():
    assert not torch.isfinite(masked_whiten(torch.tensor([1.0, 2.0, float("nan")]))).all()
    assert not torch.isfinite(grpo_advantages(torch.tensor([1.0, 0.0, float("inf")]), [0, 0, 0])).all()
    m = torch.ones(4, 5, dtype=torch.bool)
    pr = torch.zeros(4, 5)
    pr[2, 3] = float("inf")
    assert not torch.isfinite(prime_advantages(pr, m, torch.tensor([1.0, 0.0, 1.0, 0.0]), m, [0] * 4)).all()


def test_integer_rewards_work_like_float_rewards():
    r = torch.tensor([1, 0, 1, 1])
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        torch.testing.assert_close(fn(r, [0] * 4), fn(r.float(), [0] * 4))
    torch.testing.assert_close(reward_to_go(torch.tensor([[1, 0, 1]]), gamma=0.5), torch.tensor([[1.25, 0.5, 1.0]]))
