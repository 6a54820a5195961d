"""Edge-case numerics of the shared statistics: float32 zero-variance groups, non-finite and masked inputs,
integer rewards."""

from __future__ import annotations

import pytest
import torch

from creditgym.credit import (
    dr_grpo_advantages,
    grpo_advantages,
    implicit_prm_step_rewards,
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


def test_implicit_prm_step_rewards_keep_their_precision_over_long_responses():
    # Differences of a running float32 sum lost 0.7% of a step's reward 32k tokens into a response
    generator = torch.Generator().manual_seed(0)
    length = 32_768
    logprobs = -torch.rand(1, length, generator=generator) * 3
    ref = logprobs - 1 + torch.randn(1, length, generator=generator) * 0.1  # a PRM that drifted from its reference
    ends = torch.zeros(1, length, dtype=torch.bool)
    ends[0, 1::2] = True  # short steps: their rewards are small next to the running sum
    steps = implicit_prm_step_rewards(logprobs, ref, ends, beta=0.05)[ends]
    exact = (0.05 * (logprobs.double() - ref.double())).view(-1, 2).sum(-1)
    torch.testing.assert_close(steps.double(), exact, rtol=1e-4, atol=1e-6)


def test_implicit_prm_step_rewards_honour_the_mask_and_empty_responses():
    logprobs, ref = torch.tensor([[-1.0, -2.0, -3.0, -4.0]]), torch.zeros(1, 4)
    ends = torch.tensor([[False, True, False, True]])
    mask = torch.tensor([[True, False, True, True]])  # an observation token inside the first step pays nothing
    torch.testing.assert_close(implicit_prm_step_rewards(logprobs, ref, ends, mask, beta=1.0),
                               torch.tensor([[0.0, -1.0, 0.0, -7.0]]))
    assert implicit_prm_step_rewards(torch.zeros(2, 0), torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool)
                                     ).shape == (2, 0)
