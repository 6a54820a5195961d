import statistics

import torch
from hypothesis import given
from hypothesis import strategies as st

from creditgym.credit import dr_grpo_advantages, grpo_advantages, reward_to_go, rloo_advantages

from .strategies import grouped_rewards, quick, ref_group_norm


def _t(xs):
    return torch.tensor(xs, dtype=torch.float64)


def _group_sums(adv, ids):
    sums: dict[int, float] = {}
    for a, g in zip(adv.tolist(), ids, strict=True):
        sums[g] = sums.get(g, 0.0) + a
    return sums


@quick
@given(grouped_rewards())
def test_grpo_matches_reference_and_sums_to_zero(data):
    ids, rewards, mask = data
    adv = grpo_advantages(_t(rewards), torch.tensor(ids), torch.tensor(mask), eps=1e-6)
    expected = ref_group_norm(rewards, ids, mask, std=True, eps=1e-6)
    torch.testing.assert_close(adv, _t(expected))
    for s in _group_sums(adv, ids).values():
        assert abs(s) < 1e-6 * max(1.0, len(ids))


@quick
@given(grouped_rewards())
def test_dr_grpo_is_mean_centred_without_std(data):
    ids, rewards, mask = data
    adv = dr_grpo_advantages(_t(rewards), torch.tensor(ids), torch.tensor(mask))
    torch.testing.assert_close(adv, _t(ref_group_norm(rewards, ids, mask, std=False, eps=0.0)))
    for s in _group_sums(adv, ids).values():
        assert abs(s) < 1e-9 * max(1.0, len(ids)) + 1e-9


@quick
@given(grouped_rewards())
def test_rloo_equals_explicit_leave_one_out_mean(data):
    ids, rewards, mask = data
    adv = rloo_advantages(_t(rewards), torch.tensor(ids), torch.tensor(mask))
    for i, (g, v) in enumerate(zip(ids, mask, strict=True)):
        others = [rewards[j] for j in range(len(ids)) if j != i and ids[j] == g and mask[j]]
        expected = rewards[i] - statistics.fmean(others) if v and others else 0.0
        assert abs(float(adv[i]) - expected) < 1e-9
    for s in _group_sums(adv, ids).values():
        assert abs(s) < 1e-8


def test_singleton_groups_get_zero():
    r = _t([3.0, -1.0, 5.0])
    ids = torch.tensor([9, 4, 2])
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        assert torch.equal(fn(r, ids), torch.zeros(3, dtype=torch.float64))


def test_hashable_ids_equal_tensor_ids_and_order_does_not_matter():
    r = _t([1.0, 0.0, 2.0, 4.0, 3.0, 0.5])
    ids = ["b", "a", "b", "a", "c", "c"]
    as_tensor = torch.tensor([10, -1, 10, -1, 3, 3])
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        torch.testing.assert_close(fn(r, ids), fn(r, as_tensor))
        perm = torch.tensor([5, 2, 0, 4, 1, 3])
        torch.testing.assert_close(fn(r[perm], as_tensor[perm]), fn(r, as_tensor)[perm])


@quick
@given(grouped_rewards(min_size=2), st.lists(st.floats(-10, 10), min_size=16, max_size=16))
def test_masked_episodes_do_not_affect_others(data, junk):
    ids, rewards, mask = data
    replaced = [r if m else junk[i] for i, (r, m) in enumerate(zip(rewards, mask, strict=True))]
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        a = fn(_t(rewards), torch.tensor(ids), torch.tensor(mask))
        b = fn(_t(replaced), torch.tensor(ids), torch.tensor(mask))
        torch.testing.assert_close(a, b)
        assert torch.all(a[~torch.tensor(mask)] == 0)


@quick
@given(st.integers(0, 2**16), st.integers(2, 6), st.integers(1, 4))
def test_pbrs_with_shared_start_leaves_episode_advantages_unchanged(seed, k, groups):
    """γ = 1, terminated episodes, Φ(terminal) = 0 and one s_0 per group ⇒ G' = G − Φ(s_0): same GRPO/RLOO."""
    g = torch.Generator().manual_seed(seed)
    n, t_len = k * groups, 6
    ids = torch.arange(groups).repeat_interleave(k) * 11 + 5
    rewards = torch.randn(n, t_len, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t_len + 1, (n,), generator=g)
    mask = torch.arange(t_len) < lengths.unsqueeze(1)
    phi = torch.randn(n, t_len + 1, generator=g, dtype=torch.float64)
    phi[:, 0] = torch.randn(groups, generator=g, dtype=torch.float64).repeat_interleave(k)  # shared Φ(s_0)
    phi[torch.arange(n), lengths] = 0.0  # Φ(terminal) = 0
    shaped = rewards + phi[:, 1:] - phi[:, :-1]
    ret = reward_to_go(rewards, mask)[:, 0]
    ret_shaped = reward_to_go(shaped, mask)[:, 0]
    torch.testing.assert_close(ret_shaped, ret - phi[:, 0])
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        torch.testing.assert_close(fn(ret_shaped, ids), fn(ret, ids))


@quick
@given(st.integers(0, 2**16), st.floats(0.5, 0.99), st.integers(1, 8))
def test_pbrs_discounted_truncated_return_identity(seed, gamma, t_len):
    """γ < 1, truncation keeps Φ(s_T): G' − G = γ^T Φ(s_T) − Φ(s_0), checked on reward_to_go."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(3, t_len, generator=g, dtype=torch.float64)
    phi = torch.randn(3, t_len + 1, generator=g, dtype=torch.float64)
    shaped = rewards + gamma * phi[:, 1:] - phi[:, :-1]
    diff = reward_to_go(shaped, gamma=gamma)[:, 0] - reward_to_go(rewards, gamma=gamma)[:, 0]
    torch.testing.assert_close(diff, gamma**t_len * phi[:, -1] - phi[:, 0])
