import statistics

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from creditgym.credit import group_mean, group_normalize, masked_mean, masked_var, masked_whiten

from .strategies import grouped_rewards, masked_matrix, quick, ref_group_norm


def _loop_stats(x, m):
    vals = [float(v) for v, k in zip(x.flatten(), m.flatten(), strict=True) if k]
    return vals, statistics.fmean(vals), statistics.pstdev(vals)


@quick
@given(masked_matrix())
def test_whiten_gives_masked_mean_zero_and_std_one(data):
    x, m = data
    assume(int(m.sum()) >= 2)
    _, mean, std = _loop_stats(x, m)
    assume(std > 1e-3)
    w = masked_whiten(x, m)
    _, w_mean, w_std = _loop_stats(w, m)
    assert abs(w_mean) < 1e-9
    assert abs(w_std - 1.0) < 1e-6
    assert torch.all(w[~m] == 0)
    for v, k, out in zip(x.flatten(), m.flatten(), w.flatten(), strict=True):
        if k:
            assert abs(float(out) - (float(v) - mean) / (std + 1e-8)) < 1e-9


@quick
@given(masked_matrix())
def test_whiten_ignores_masked_values(data):
    x, m = data
    junk = torch.where(m, x, x * 100 + 7)
    torch.testing.assert_close(masked_whiten(x, m), masked_whiten(junk, m))
    torch.testing.assert_close(masked_mean(x, m), masked_mean(junk, m))
    torch.testing.assert_close(masked_var(x, m), masked_var(junk, m))


def test_whiten_without_mean_shift_only_rescales():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0], dtype=torch.float64)
    m = torch.tensor([True, True, True, False])
    std = statistics.pstdev([1.0, 2.0, 3.0])
    expected = torch.tensor([(v - 2.0) / (std + 1e-8) + 2.0 for v in (1.0, 2.0, 3.0)] + [0.0], dtype=torch.float64)
    torch.testing.assert_close(masked_whiten(x, m, shift_mean=False), expected)


def test_unbiased_variance_option():
    x = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert abs(float(masked_var(x, unbiased=True)) - statistics.variance([1.0, 2.0, 4.0])) < 1e-12
    assert abs(float(masked_var(x)) - statistics.pvariance([1.0, 2.0, 4.0])) < 1e-12


@quick
@given(grouped_rewards(), st.booleans())
def test_group_normalize_matches_reference(data, scale):
    ids, rewards, mask = data
    out = group_normalize(torch.tensor(rewards, dtype=torch.float64), ids, torch.tensor(mask), scale_by_std=scale)
    expected = ref_group_norm(rewards, ids, mask, std=scale, eps=1e-6)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def test_group_normalize_population_std_option():
    x = torch.tensor([0.0, 2.0, 10.0, 10.0], dtype=torch.float64)
    out = group_normalize(x, torch.tensor([3, 3, 1, 1]), unbiased=False, eps=0.0)
    torch.testing.assert_close(out[:2], torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert torch.all(out[2:] == 0)  # zero-variance group


@quick
@given(grouped_rewards())
def test_group_mean_matches_reference(data):
    ids, rewards, mask = data
    out = group_mean(torch.tensor(rewards, dtype=torch.float64), torch.tensor(ids), torch.tensor(mask))
    for i, (g, v) in enumerate(zip(ids, mask, strict=True)):
        members = [r for r, h, w in zip(rewards, ids, mask, strict=True) if h == g and w]
        assert abs(float(out[i]) - (statistics.fmean(members) if v else 0.0)) < 1e-9
