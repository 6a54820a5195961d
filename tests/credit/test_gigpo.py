import statistics

import torch
from hypothesis import given
from hypothesis import strategies as st

from creditgym.credit import anchor_step_groups, gigpo_advantages, text_similarity

from .strategies import quick


def _norm(x, members, scale, eps):
    if len(members) < 2:
        return 0.0
    a = x - statistics.fmean(members)
    return a / (statistics.stdev(members) + eps) if scale else a


def ref_gigpo(rewards, lengths, tasks, obs, gamma, omega, scale, eps=1e-6):
    """Dictionaries and loops, straight from the definition."""
    n = len(rewards)
    ret_ep = [sum(rewards[i][: lengths[i]]) for i in range(n)]
    step_ret = {}
    for i in range(n):
        g = 0.0
        for t in reversed(range(lengths[i])):
            g = rewards[i][t] + gamma * g
            step_ret[i, t] = g
    groups: dict = {}
    for (i, t), g in step_ret.items():
        groups.setdefault((tasks[i], obs[i][t]), []).append(g)
    out = [[0.0] * len(rewards[0]) for _ in range(n)]
    for (i, t), g in step_ret.items():
        a_e = _norm(ret_ep[i], [ret_ep[j] for j in range(n) if tasks[j] == tasks[i]], scale, eps)
        a_s = _norm(g, groups[tasks[i], obs[i][t]], scale, eps)
        out[i][t] = a_e + omega * a_s
    return out


@st.composite
def episodes(draw):
    n, t_len = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    tasks = draw(st.lists(st.sampled_from([3, 99, -7]), min_size=n, max_size=n))
    lengths = draw(st.lists(st.integers(0, t_len), min_size=n, max_size=n))
    rewards = draw(st.lists(st.lists(st.floats(-3, 3), min_size=t_len, max_size=t_len), min_size=n, max_size=n))
    obs = draw(st.lists(st.lists(st.integers(0, 2), min_size=t_len, max_size=t_len), min_size=n, max_size=n))
    return tasks, lengths, rewards, obs


@quick
@given(episodes(), st.sampled_from([0.95, 1.0, 0.5]), st.sampled_from([1.0, 0.5]), st.booleans())
def test_matches_loop_reference_with_keys_and_tensors(data, gamma, omega, scale):
    tasks, lengths, rewards, obs = data
    t_len = len(rewards[0])
    mask = torch.arange(t_len) < torch.tensor(lengths).unsqueeze(1)
    r = torch.tensor(rewards, dtype=torch.float64)
    expected = torch.tensor(ref_gigpo(rewards, lengths, tasks, obs, gamma, omega, scale), dtype=torch.float64)
    # Hashable keys; masked steps hold garbage that must not matter.
    keys = [[f"obs{o}" if t < lengths[i] else object() for t, o in enumerate(row)] for i, row in enumerate(obs)]
    by_key = gigpo_advantages(r, mask, tasks, keys, gamma=gamma, omega=omega, scale_by_std=scale)
    torch.testing.assert_close(by_key, expected)
    # Tensor observations (N, T, 2, 2): hashed by exact equality.
    grid = torch.tensor(obs).view(len(obs), t_len, 1, 1).expand(-1, -1, 2, 2).clone()
    grid[~mask] = 17
    by_tensor = gigpo_advantages(r, mask, torch.tensor(tasks), grid, gamma=gamma, omega=omega, scale_by_std=scale)
    torch.testing.assert_close(by_tensor, expected)


def test_singleton_step_groups_leave_only_episode_advantage():
    r = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(3, 2, dtype=torch.bool)
    distinct = torch.arange(6).view(3, 2)
    adv = gigpo_advantages(r, mask, [0, 0, 0], distinct)
    returns = [1.0, 0.0, 2.0]
    a_e = [(x - 1.0) / (1.0 + 1e-6) for x in returns]
    torch.testing.assert_close(adv, torch.tensor(a_e, dtype=torch.float64).unsqueeze(1).expand(3, 2))


def test_episode_advantages_sum_to_zero_per_task_group():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(8, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(8, 4, dtype=torch.bool)
    tasks = torch.tensor([5, 2, 5, 2, 5, 2, 5, 2])
    adv = gigpo_advantages(r, mask, tasks, torch.zeros(8, 4), omega=0.0)
    for task in (5, 2):
        assert abs(float(adv[tasks == task, 0].sum())) < 1e-9


def test_hand_computed_step_group():
    # Two rollouts of one task both visit state "s" at their first step; γ = 0.5.
    r = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    obs = [["s", "a"], ["s", "b"]]
    adv = gigpo_advantages(r, mask, ["task", "task"], obs, gamma=0.5, scale_by_std=False)
    # A^E = ±0.5; first-step returns 0.5 and 0 ⇒ A^S = ±0.25; second steps are singletons.
    torch.testing.assert_close(adv, torch.tensor([[0.75, 0.5], [-0.75, -0.5]], dtype=torch.float64))


def test_anchor_groups_are_per_task_and_mask_aware():
    obs = [["x", "y"], ["x", "z"], ["x", "x"]]
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    ids = anchor_step_groups(["a", "a", "b"], obs, mask)
    assert ids[0, 0] == ids[1, 0]  # same task, same observation
    assert ids[2, 0] != ids[0, 0]  # same observation, other task
    assert ids[2, 0] == ids[2, 1]
    assert ids[1, 1] == -1
    assert len({int(i) for i in ids[mask]}) == 3


def test_similarity_grouping_uses_threshold():
    obs = [["abcdefghij"], ["abcdefghik"], ["zzzzzzzzzz"]]
    mask = torch.ones(3, 1, dtype=torch.bool)
    assert text_similarity("abcdefghij", "abcdefghik") == 0.9
    loose = anchor_step_groups([0, 0, 0], obs, mask, similarity=text_similarity, similarity_threshold=0.85)
    strict = anchor_step_groups([0, 0, 0], obs, mask, similarity=text_similarity, similarity_threshold=0.95)
    assert loose[0, 0] == loose[1, 0] != loose[2, 0]
    assert len({int(strict[i, 0]) for i in range(3)}) == 3
    # Similar observations in different task groups stay apart.
    other = anchor_step_groups([0, 1, 0], obs, mask, similarity=text_similarity, similarity_threshold=0.85)
    assert other[0, 0] != other[1, 0]


def test_identical_observations_group_at_similarity_threshold_1():
    obs = [["abcdefghij"], ["abcdefghij"], ["abcdefghik"]]
    ids = anchor_step_groups([0, 0, 0], obs, torch.ones(3, 1, dtype=torch.bool), similarity=text_similarity,
                             similarity_threshold=1.0)
    assert ids[0, 0] == ids[1, 0] != ids[2, 0]
