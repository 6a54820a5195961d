"""Defaults that shared/reference/reward-methods.md states for the credit functions, checked by behaviour.

The formula tests elsewhere pass every coefficient explicitly, so a changed default would go unnoticed; these
call each function with its defaults and compare with the reference's values written out.
"""

import torch

from creditgym.credit import (
    gigpo_advantages,
    implicit_prm_score,
    implicit_prm_step_rewards,
    implicit_prm_token_rewards,
    oprl_advantages,
    prime_advantages,
    pure_min_form_weights,
)


def _random(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_gigpo_defaults_are_gamma_095_and_omega_1():
    """GiGPO: step return γ-discounted with γ 0.95; A = A^E + ω·A^S with ω = 1 (values by hand, no std)."""
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    obs = [["s", "a"], ["s", "b"]]  # one anchor state at step 0, singletons at step 1
    adv = gigpo_advantages(rewards, mask, ["task", "task"], obs, scale_by_std=False)
    # A^E = R − mean = ±0.5; step-0 returns 0.95·1 and 0 ⇒ A^S = ±0.475; step 1 is a singleton group ⇒ A^S = 0.
    expected = torch.tensor([[0.5 + 0.475, 0.5], [-0.5 - 0.475, -0.5]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected)


def test_prime_default_coefficients_are_5_and_5():
    """PRIME scales the process and outcome leave-one-out terms by 5 and 5 (only their ratio survives whitening)."""
    rewards = _random(0, 6, 5)
    valid = torch.ones(6, 5, dtype=torch.bool)
    valid[1, 3:] = False
    outcomes = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    ids = [0, 0, 0, 1, 1, 1]
    default = prime_advantages(rewards, valid, outcomes, valid, ids)
    explicit = prime_advantages(rewards, valid, outcomes, valid, ids, process_coef=5.0, outcome_coef=5.0)
    torch.testing.assert_close(default, explicit)
    other_ratio = prime_advantages(rewards, valid, outcomes, valid, ids, process_coef=1.0, outcome_coef=5.0)
    assert not torch.allclose(default, other_ratio)  # the data can tell the ratio apart


def test_oprl_default_step_weight_is_1():
    """OPRL: A = A^E + w·A^S with w = 1.0 by default."""
    rewards = _random(1, 4, 3)
    mask = torch.ones(4, 3, dtype=torch.bool)
    combined, episode_adv, step_adv = oprl_advantages(rewards, mask, torch.tensor([1.0, 0.0, 1.0, 0.0]), [0] * 4)
    assert step_adv.abs().max() > 0
    torch.testing.assert_close(combined, episode_adv[:, None] + step_adv)


def test_pure_default_temperature_is_01():
    """PURE: w_t = softmax_t(−PR_t / T) with T = 0.1."""
    pr = _random(2, 3, 6)
    torch.testing.assert_close(pure_min_form_weights(pr), torch.softmax(-pr / 0.1, dim=-1))


def test_implicit_prm_default_beta_005_and_min_score():
    """Implicit PRM / PRIME: β 0.05; the best-of-N response score is the min over step rewards by default."""
    lp, ref = -_random(3, 2, 8).abs(), -_random(4, 2, 8).abs()
    torch.testing.assert_close(implicit_prm_token_rewards(lp, ref), 0.05 * (lp - ref))
    ends = torch.zeros(2, 8, dtype=torch.bool)
    ends[:, [2, 5, 7]] = True
    steps = implicit_prm_step_rewards(lp, ref, ends)
    torch.testing.assert_close(steps.sum(-1), 0.05 * (lp - ref).sum(-1))
    torch.testing.assert_close(implicit_prm_score(steps, ends), steps[:, [2, 5, 7]].amin(-1))
