"""PRIME and OPRL advantages and IGPO turn rewards: the reference's properties, and loop-based references."""

import statistics

import torch
from hypothesis import given
from hypothesis import strategies as st

from creditgym.credit import information_gain_rewards, oprl_advantages, prime_advantages

from .strategies import close, group_id, quick


@st.composite
def grouped_steps(draw: st.DrawFn, max_episodes: int = 8, max_steps: int = 5) -> tuple:
    """Episodes with 1..S valid steps each (left-aligned), their group ids and outcomes."""
    b = draw(st.integers(1, max_episodes))
    s = draw(st.integers(1, max_steps))
    lengths = draw(st.lists(st.integers(1, s), min_size=b, max_size=b))
    ids = draw(st.lists(group_id, min_size=b, max_size=b))
    values = draw(st.lists(st.floats(-3, 3, allow_nan=False), min_size=b * s, max_size=b * s))
    outcomes = draw(st.lists(st.floats(-1, 1, allow_nan=False), min_size=b, max_size=b))
    mask = torch.arange(s)[None, :] < torch.tensor(lengths)[:, None]
    return (torch.tensor(values, dtype=torch.float64).view(b, s), mask, torch.tensor(outcomes, dtype=torch.float64),
            ids)


def _rloo_reference(values: list[float], ids: list) -> list[float]:
    out = []
    for i, (x, g) in enumerate(zip(values, ids, strict=True)):
        others = [y for j, (y, h) in enumerate(zip(values, ids, strict=True)) if h == g and j != i]
        out.append(x - statistics.fmean(others) if others else 0.0)
    return out


@quick
@given(grouped_steps(), st.sampled_from([0.0, 0.5, 1.0]))
def test_oprl_episode_and_step_advantages_each_sum_to_zero_per_group(data, weight):
    rewards, mask, outcomes, ids = data
    combined, episode_adv, step_adv = oprl_advantages(rewards, mask, outcomes, ids, step_weight=weight)
    for g in set(ids):
        members = [i for i, h in enumerate(ids) if h == g]
        assert abs(float(episode_adv[members].sum())) < 1e-9
        assert abs(float(step_adv[members][mask[members]].sum())) < 1e-9
    assert torch.all(step_adv[~mask] == 0) and torch.all(combined[~mask] == 0)
    expected = episode_adv[:, None] + weight * step_adv
    assert torch.allclose(combined[mask], expected[mask])


@quick
@given(grouped_steps())
def test_oprl_step_baseline_counts_every_step_of_the_group(data):
    rewards, mask, outcomes, ids = data
    _, episode_adv, step_adv = oprl_advantages(rewards, mask, outcomes, ids)
    assert all(close(float(a), b) for a, b in zip(episode_adv, _rloo_reference(outcomes.tolist(), ids), strict=True))
    flat_ids = [ids[b] for b in range(len(ids)) for t in range(mask.shape[1]) if mask[b, t]]
    expected = _rloo_reference(rewards[mask].tolist(), flat_ids)
    assert all(close(float(a), b) for a, b in zip(step_adv[mask], expected, strict=True))


def test_oprl_is_zero_when_every_step_and_outcome_agree():
    rewards = torch.full((4, 3), 0.7)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    combined, _, _ = oprl_advantages(rewards, mask, torch.ones(4), [0, 0, 0, 0])
    assert torch.allclose(combined, torch.zeros_like(combined), atol=1e-6)


def _prime_reference(rewards, positions, valid, outcomes, ids, pc, oc):
    """The paper's eq. 5 written out with loops, before whitening."""
    b, n = rewards.shape
    means = [sum(float(rewards[i, t]) for t in range(n) if positions[i, t]) / max(1, int(positions[i].sum()))
             for i in range(b)]
    out = torch.zeros(b, n, dtype=torch.float64)
    for i in range(b):
        others = [means[j] for j in range(b) if ids[j] == ids[i] and j != i]
        baseline = statistics.fmean(others) if others else means[i]
        other_outcomes = [float(outcomes[j]) for j in range(b) if ids[j] == ids[i] and j != i]
        outcome = float(outcomes[i]) - statistics.fmean(other_outcomes) if other_outcomes else 0.0
        steps = [t for t in range(n) if valid[i, t]]
        running = 0.0
        for t in reversed(steps):
            reward = pc * (float(rewards[i, t]) - baseline) if positions[i, t] else 0.0
            if t == steps[-1]:
                reward += oc * outcome
            running += reward
            out[i, t] = running
    return out


@quick
@given(grouped_steps(max_steps=6), st.booleans())
def test_prime_matches_the_paper_and_is_whitened(data, step_granularity):
    rewards, valid, outcomes, ids = data
    positions = valid.clone()
    if step_granularity:  # rewards only on some tokens: every other one and the last
        positions &= (torch.arange(valid.shape[1]) % 2 == 1)[None, :]
    adv = prime_advantages(rewards, positions, outcomes, valid, ids, process_coef=5.0, outcome_coef=5.0)
    assert torch.all(adv[~valid] == 0)
    raw = _prime_reference(rewards, positions, valid, outcomes, ids, 5.0, 5.0)[valid]
    # whitening divides by σ + 1e-8, so std 1 holds to 1e-4 only when σ is well above that epsilon
    if float(raw.std(unbiased=False)) > 1e-3:
        assert abs(float(adv[valid].mean())) < 1e-6
        assert abs(float(adv[valid].std(unbiased=False)) - 1.0) < 1e-4
        expected = (raw - raw.mean()) / raw.std(unbiased=False)
        assert torch.allclose(adv[valid], expected, atol=1e-5)


def test_prime_without_process_rewards_gives_each_episode_one_outcome_advantage():
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    outcomes = torch.tensor([1.0, 0.0, 1.0, 0.0])
    adv = prime_advantages(torch.zeros(4, 4), valid, outcomes, valid, [0, 0, 0, 0])
    for i in range(4):
        assert torch.allclose(adv[i][valid[i]], adv[i][valid[i]][0].expand(int(valid[i].sum())))
    assert adv[0, 0] > 0 > adv[1, 0]


def test_prime_ignores_process_rewards_on_padding_tokens():
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    rewards = torch.tensor([[0.1, -0.2, 0.3, 0.0], [0.0, 0.2, -0.1, 0.4]])
    outcomes, groups = torch.tensor([1.0, 0.0]), [0, 0]
    clean = prime_advantages(rewards, torch.ones(2, 4, dtype=torch.bool), outcomes, valid, groups)
    rewards[0, 3] = 1e3  # under the reward mask, but a padding token: it must not move the means or baselines
    padded = prime_advantages(rewards, torch.ones(2, 4, dtype=torch.bool), outcomes, valid, groups)
    torch.testing.assert_close(padded, clean)


@quick
@given(grouped_steps(), st.data())
def test_information_gain_telescopes_and_pays_the_outcome_last(data, draw):
    _, mask, _, _ = data
    b, s = mask.shape
    p = torch.tensor(draw.draw(st.lists(st.floats(0, 1), min_size=b * s, max_size=b * s)), dtype=torch.float64)
    p = p.view(b, s)
    outcomes = torch.tensor(draw.draw(st.lists(st.floats(0, 1), min_size=b, max_size=b)), dtype=torch.float64)
    rewards = information_gain_rewards(p, mask, outcomes)
    for i in range(b):
        last = int(mask[i].sum()) - 1
        assert abs(float(rewards[i, :last].sum()) - float(p[i, last] - p[i, 0])) < 1e-9
        assert 0.0 <= float(rewards[i, last]) <= 1.0 and float(rewards[i, last]) == float(outcomes[i])
        assert torch.all(rewards[i, last + 1:] == 0)
