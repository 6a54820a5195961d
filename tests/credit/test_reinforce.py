import statistics

import torch
from hypothesis import given
from hypothesis import strategies as st

from creditgym.credit import (
    place_outcome_reward,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    reward_to_go,
)

from .strategies import masked_matrix, quick


def ref_reward_to_go(r, m, gamma):
    """Loop over valid positions only: masked positions carry no reward and no discount step."""
    out = torch.zeros_like(r)
    for b in range(r.shape[0]):
        idx = [t for t in range(r.shape[1]) if m[b, t]]
        for i, t in enumerate(idx):
            out[b, t] = sum(gamma ** (j - i) * float(r[b, idx[j]]) for j in range(i, len(idx)))
    return out


def ref_whiten(x, m):
    vals = [float(v) for v, k in zip(x.flatten(), m.flatten(), strict=True) if k]
    if not vals:
        return torch.zeros_like(x)
    mean, std = statistics.fmean(vals), statistics.pstdev(vals)
    return torch.where(m, (x - mean) / (std + 1e-8), torch.zeros_like(x))


@quick
@given(masked_matrix(), st.sampled_from([1.0, 0.9, 0.5, 0.0]))
def test_reward_to_go_matches_loop(data, gamma):
    r, m = data
    torch.testing.assert_close(reward_to_go(r, m, gamma=gamma), ref_reward_to_go(r, m, gamma))


@quick
@given(st.integers(0, 2**16), st.floats(0.0, 0.5))
def test_reinforce_pp_unwhitened_is_outcome_minus_future_kl(seed, beta):
    """Paper eq.: A_t = r(o, q) − β Σ_{i ≥ t} KL(i) with the outcome on the last token and γ = 1."""
    g = torch.Generator().manual_seed(seed)
    b, length = 4, 7
    outcome = torch.randn(b, generator=g, dtype=torch.float64)
    kl = torch.randn(b, length, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (b,), generator=g)
    mask = torch.arange(length) < lengths.unsqueeze(1)
    adv = reinforce_pp_advantages(place_outcome_reward(outcome, mask), mask, kl=kl, kl_coef=beta, whiten=False)
    for i in range(b):
        for t in range(length):
            expected = float(outcome[i]) - beta * float(kl[i, t:lengths[i]].sum()) if t < lengths[i] else 0.0
            assert abs(float(adv[i, t]) - expected) < 1e-9


@quick
@given(masked_matrix(), st.sampled_from([1.0, 0.95]))
def test_reinforce_pp_whitened_over_batch(data, gamma):
    r, m = data
    kl = torch.linspace(-1, 1, r.numel(), dtype=torch.float64).view_as(r)
    adv = reinforce_pp_advantages(r, m, kl=kl, kl_coef=0.1, gamma=gamma)
    torch.testing.assert_close(adv, ref_whiten(ref_reward_to_go(r - 0.1 * kl, m, gamma), m))


def test_reinforce_pp_baseline_subtracts_group_mean_then_whitens():
    outcome = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    ids = ["p", "p", "q", "q", "q", "r"]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    raw = reinforce_pp_baseline_advantages(outcome, ids, mask, whiten=False)
    centred = [0.5, -0.5, -2 / 3, 1 / 3, 1 / 3, 0.0]
    expected = torch.tensor(centred, dtype=torch.float64).unsqueeze(1) * mask
    torch.testing.assert_close(raw, expected)
    torch.testing.assert_close(reinforce_pp_baseline_advantages(outcome, ids, mask), ref_whiten(expected, mask))
