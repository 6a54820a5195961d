import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from creditgym.credit import (
    clip_rewards,
    delta_rewards,
    implicit_prm_score,
    implicit_prm_step_rewards,
    implicit_prm_token_rewards,
    par_reward,
    pure_min_form_rewards,
    pure_min_form_weights,
)

from .strategies import masked_matrix, quick


@pytest.mark.parametrize("seed", range(5))
def test_pure_min_form_tends_to_min_at_low_temperature(seed):
    g = torch.Generator().manual_seed(seed)
    pr = torch.rand(256, 8, generator=g, dtype=torch.float64) * 2 - 1
    mask = torch.rand(256, 8, generator=g) < 0.8
    mask[:, 0] = True
    weighted = pure_min_form_rewards(pr, mask, temperature=0.01).sum(-1)
    for i in range(pr.shape[0]):
        true_min = min(float(pr[i, t]) for t in range(8) if mask[i, t])
        assert abs(float(weighted[i]) - true_min) < 0.01


@quick
@given(masked_matrix(lo=-5, hi=5), st.sampled_from([0.1, 1.0, 0.01]))
def test_pure_weights_sum_to_one_and_match_softmax(data, temperature):
    pr, m = data
    w = pure_min_form_weights(pr, m, temperature=temperature)
    for b in range(pr.shape[0]):
        idx = [t for t in range(pr.shape[1]) if m[b, t]]
        if not idx:
            assert torch.all(w[b] == 0)
            continue
        lo = min(float(pr[b, t]) for t in idx)
        z = sum(math.exp(-(float(pr[b, t]) - lo) / temperature) for t in idx)
        assert abs(float(w[b].sum()) - 1.0) < 1e-9
        for t in range(pr.shape[1]):
            expected = math.exp(-(float(pr[b, t]) - lo) / temperature) / z if m[b, t] else 0.0
            assert abs(float(w[b, t]) - expected) < 1e-9


def test_pure_adds_leave_one_out_verifiable_reward_on_last_step():
    pr = torch.tensor([[0.2, 0.9, 0.0], [0.5, 0.5, 0.5], [0.1, 0.3, 0.7]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    vr = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64)
    out = pure_min_form_rewards(pr, mask, verifiable_rewards=vr, group_ids=[1, 1, 1])
    plain = pure_min_form_rewards(pr, mask)
    loo = [-1.0 - 0.0, 0.0 - (-0.5), 0.0 - (-0.5)]
    last = [1, 2, 2]
    expected = plain.clone()
    for b in range(3):
        expected[b, last[b]] += loo[b]
    torch.testing.assert_close(out, expected)
    assert out[0, 2] == 0


@quick
@given(masked_matrix(), st.floats(-2, 2))
def test_clip_is_non_positive_and_matches_formula(data, eta):
    r, m = data
    out = clip_rewards(r, m, eta=eta)
    assert torch.all(out <= 0)
    for b in range(r.shape[0]):
        for t in range(r.shape[1]):
            expected = min(float(r[b, t]) - eta, 0.0) if m[b, t] else 0.0
            assert abs(float(out[b, t]) - expected) < 1e-12


@quick
@given(masked_matrix())
def test_delta_return_from_each_step_telescopes_to_its_reward(data):
    r, m = data
    out = delta_rewards(r, m)
    for b in range(r.shape[0]):
        idx = [t for t in range(r.shape[1]) if m[b, t]]
        for i, t in enumerate(idx):
            assert abs(sum(float(out[b, u]) for u in idx[i:]) - float(r[b, t])) < 1e-9
        assert all(out[b, t] == 0 for t in range(r.shape[1]) if not m[b, t])


def test_delta_hand_computed():
    out = delta_rewards(torch.tensor([[3.0, 1.0, 4.0]]))
    torch.testing.assert_close(out, torch.tensor([[2.0, -3.0, 4.0]]))


@quick
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=6), st.lists(st.floats(-10, 10), min_size=1, max_size=4))
def test_par_range_midpoint_and_formula(rs, refs):
    r = torch.tensor(rs, dtype=torch.float64)
    ref = torch.tensor(refs, dtype=torch.float64).expand(len(rs), len(refs))
    out = par_reward(r, ref)
    assert torch.all((out > 0) & (out < 1))
    for i, x in enumerate(rs):
        expected = sum(1 / (1 + math.exp(-(x - y))) for y in refs) / len(refs)
        assert abs(float(out[i]) - expected) < 1e-12
    torch.testing.assert_close(par_reward(r, r), torch.full_like(r, 0.5))


@quick
@given(st.floats(-10, 10), st.floats(1e-3, 5), st.lists(st.floats(-10, 10), min_size=1, max_size=4))
def test_par_strictly_increasing(r, gap, refs):
    ref = torch.tensor([refs], dtype=torch.float64)
    lo = par_reward(torch.tensor([r], dtype=torch.float64), ref)
    hi = par_reward(torch.tensor([r + gap], dtype=torch.float64), ref)
    assert float(hi) > float(lo)


def _random_logprobs(seed, b=3, length=10):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, length, generator=g, dtype=torch.float64) * 3
    ref = -torch.rand(b, length, generator=g, dtype=torch.float64) * 3
    ends = torch.rand(b, length, generator=g) < 0.3
    ends[:, -1] = True
    return lp, ref, ends


@quick
@given(st.integers(0, 2**16), st.floats(0.01, 1.0))
def test_implicit_prm_step_rewards_telescope_to_sequence_log_ratio(seed, beta):
    lp, ref, ends = _random_logprobs(seed)
    steps = implicit_prm_step_rewards(lp, ref, ends, beta=beta)
    torch.testing.assert_close(steps.sum(-1), beta * (lp - ref).sum(-1), atol=1e-5, rtol=0)
    assert torch.all(steps[~ends] == 0)
    for b in range(lp.shape[0]):
        start = 0
        for t in range(lp.shape[1]):
            if ends[b, t]:
                assert abs(float(steps[b, t]) - beta * float((lp[b, start:t + 1] - ref[b, start:t + 1]).sum())) < 1e-9
                start = t + 1


def test_implicit_prm_is_zero_when_policy_equals_reference():
    lp, _, ends = _random_logprobs(3)
    assert torch.all(implicit_prm_token_rewards(lp, lp) == 0)
    assert torch.all(implicit_prm_step_rewards(lp, lp, ends) == 0)


def test_implicit_prm_token_rewards_respect_mask():
    lp, ref, _ = _random_logprobs(4)
    mask = torch.rand(lp.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    out = implicit_prm_token_rewards(lp, ref, mask, beta=0.05)
    torch.testing.assert_close(out, torch.where(mask, 0.05 * (lp - ref), torch.zeros_like(lp)))


def test_pure_min_form_defaults_to_temperature_0_1_and_zeroes_masked_steps():
    pr = torch.tensor([[0.3, -0.5, 0.2], [1.0, float("inf"), float("nan")]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = pure_min_form_rewards(pr, mask)
    torch.testing.assert_close(out[0], pure_min_form_weights(pr, mask, temperature=0.1)[0] * pr[0])
    assert out[1].tolist() == [1.0, 0.0, 0.0]  # an inf or NaN on a masked step comes back as 0, not NaN


@pytest.mark.parametrize("reduction", ["min", "sum", "mean"])
def test_implicit_prm_score_is_0_for_a_response_without_step_ends(reduction):
    steps = torch.tensor([[0.5, -0.2], [0.3, 0.1]])
    ends = torch.tensor([[False, False], [False, True]])
    score = implicit_prm_score(steps, ends, reduction=reduction)
    assert float(score[0]) == 0.0  # not +inf, which best-of-N would pick
    assert float(score[1]) == pytest.approx(0.1)


@pytest.mark.parametrize("reduction", ["min", "sum", "mean"])
def test_implicit_prm_score_reductions(reduction):
    lp, ref, ends = _random_logprobs(5)
    steps = implicit_prm_step_rewards(lp, ref, ends)
    score = implicit_prm_score(steps, ends, reduction=reduction)
    for b in range(lp.shape[0]):
        vals = [float(steps[b, t]) for t in range(lp.shape[1]) if ends[b, t]]
        expected = {"min": min(vals), "sum": sum(vals), "mean": sum(vals) / len(vals)}[reduction]
        assert abs(float(score[b]) - expected) < 1e-12
    with pytest.raises(ValueError):
        implicit_prm_score(steps, ends, reduction="max")  # type: ignore[arg-type]
