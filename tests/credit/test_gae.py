import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from creditgym.credit import gae

from .strategies import quick


def ref_gae(r, v, nv, term, trunc, gamma, lam):
    """Per-env loop straight from the definition, on python floats."""
    t_len, n = len(r), len(r[0])
    adv = [[0.0] * n for _ in range(t_len)]
    for j in range(n):
        nxt = 0.0
        for t in reversed(range(t_len)):
            delta = r[t][j] + (0.0 if term[t][j] else gamma * nv[t][j]) - v[t][j]
            if term[t][j] or trunc[t][j]:
                nxt = 0.0
            nxt = delta + gamma * lam * nxt
            adv[t][j] = nxt
    return adv


@st.composite
def rollouts(draw):
    t, n = draw(st.integers(1, 12)), draw(st.integers(1, 4))
    f = st.floats(-5, 5, allow_nan=False)

    def mat(strat):
        return draw(st.lists(st.lists(strat, min_size=n, max_size=n), min_size=t, max_size=t))

    return mat(f), mat(f), mat(f), mat(st.booleans()), mat(st.booleans())


@quick
@given(rollouts(), st.floats(0, 1), st.floats(0, 1))
def test_matches_loop_reference(data, gamma, lam):
    r, v, nv, term, trunc = data
    adv, ret = gae(*(torch.tensor(x, dtype=torch.float64) for x in (r, v, nv)), torch.tensor(term),
                   torch.tensor(trunc), gamma=gamma, lam=lam)
    expected = torch.tensor(ref_gae(r, v, nv, term, trunc, gamma, lam), dtype=torch.float64)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + torch.tensor(v, dtype=torch.float64))


def test_hand_computed_termination_does_not_bootstrap():
    r = torch.tensor([[1.0], [2.0]])
    v = torch.tensor([[0.5], [1.0]])
    nv = torch.tensor([[1.0], [3.0]])  # V(final obs) = 3 must be ignored on termination
    term = torch.tensor([[False], [True]])
    adv, ret = gae(r, v, nv, term, torch.zeros_like(term), gamma=0.9, lam=0.8)
    # δ1 = 2 − 1 = 1; δ0 = 1 + 0.9·1 − 0.5 = 1.4; A0 = 1.4 + 0.72·1 = 2.12
    torch.testing.assert_close(adv, torch.tensor([[2.12], [1.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.62], [2.0]]))


def test_hand_computed_truncation_bootstraps():
    r = torch.tensor([[1.0], [2.0]])
    v = torch.tensor([[0.5], [1.0]])
    nv = torch.tensor([[1.0], [3.0]])
    trunc = torch.tensor([[False], [True]])
    adv, ret = gae(r, v, nv, torch.zeros_like(trunc), trunc, gamma=0.9, lam=0.8)
    # δ1 = 2 + 0.9·3 − 1 = 3.7; A0 = 1.4 + 0.72·3.7 = 4.064
    torch.testing.assert_close(adv, torch.tensor([[4.064], [3.7]]))
    torch.testing.assert_close(ret, torch.tensor([[4.564], [4.7]]))


def test_hand_computed_boundary_cuts_the_trace():
    # Episode 1 is truncated at t=0 (final obs worth 2), episode 2 starts at t=1 and terminates.
    r = torch.tensor([[1.0], [2.0]])
    v = torch.tensor([[0.5], [1.0]])
    nv = torch.tensor([[2.0], [7.0]])
    adv, _ = gae(r, v, nv, torch.tensor([[False], [True]]), torch.tensor([[True], [False]]), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[1 + 0.9 * 2.0 - 0.5], [1.0]]))


@quick
@given(st.integers(1, 10), st.integers(1, 3), st.floats(0.5, 1.0), st.integers(0, 2**16))
def test_lambda_one_equals_discounted_return_minus_value(t_len, n, gamma, seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(t_len, n, generator=g, dtype=torch.float64)
    v = torch.randn(t_len, n, generator=g, dtype=torch.float64)
    term = torch.rand(t_len, n, generator=g) < 0.3
    term[-1] = True  # every episode ends by termination, no truncation
    nv = torch.cat([v[1:], torch.randn(1, n, generator=g, dtype=torch.float64)])  # consistent V(s_{t+1})
    adv, _ = gae(r, v, nv, term, torch.zeros_like(term), gamma=gamma, lam=1.0)
    for j in range(n):
        for t in range(t_len):
            ret, disc = 0.0, 1.0
            for k in range(t, t_len):
                ret += disc * float(r[k, j])
                disc *= gamma
                if term[k, j]:
                    break
            assert abs(float(adv[t, j]) - (ret - float(v[t, j]))) < 1e-9


def test_zero_value_gamma_lambda_one_is_reward_to_go():
    r = torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, 5.0]])
    term = torch.tensor([[False, True], [False, False], [True, True]])
    zeros = torch.zeros_like(r)
    adv, ret = gae(r, zeros, zeros, term, torch.zeros_like(term), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[6.0, 0.0], [5.0, 6.0], [3.0, 5.0]]))
    torch.testing.assert_close(ret, adv)


def test_float_masks_and_shape_check():
    r = torch.ones(3, 2)
    adv_bool, _ = gae(r, r, r, torch.zeros(3, 2, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.bool),
                      gamma=0.9, lam=0.9)
    adv_float, _ = gae(r, r, r, torch.zeros(3, 2), torch.zeros(3, 2), gamma=0.9, lam=0.9)
    torch.testing.assert_close(adv_bool, adv_float)
    with pytest.raises(ValueError):
        gae(r, r[:2], r, r, r, gamma=0.9, lam=0.9)
