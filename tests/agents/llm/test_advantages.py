"""The LLM trainer's advantage dispatch (`batch.advantages`) against loop references written from the definitions.

The trainer tests only check that a step changes the weights, which any sign or any estimator does; here a small
hand-made episode view (4 episodes in 2 task groups, 1-3 turns of 1-3 tokens) is run through every
(algo, advantage) setting and compared with plain-Python formulas from shared/reference/reward-methods.md.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from creditgym.agents.llm import LLMTrainConfig
from creditgym.agents.llm.batch import TokenBatch, advantages

GAMMA, LAM, OMEGA, BETA = 0.9, 0.8, 0.5, 0.3
# tokens per turn, per episode; episodes 0, 1 share task group 0 and episodes 2, 3 task group 1
TURN_TOKENS = [[2, 1], [3], [1, 1, 2], [2, 3]]
GROUPS = [0, 0, 1, 1]
TURN_REWARDS = [[0.5, 1.0], [-0.25], [0.0, 2.0, -1.0], [1.5, 0.25]]
TERMINATED = [True, False, True, False]
OBSERVATIONS = [["s", "a"], ["s"], ["s", "b", "c"], ["s", "b"]]


def _batch() -> TokenBatch:
    e, width, turns = len(TURN_TOKENS), max(sum(t) for t in TURN_TOKENS), max(len(t) for t in TURN_TOKENS)
    view_mask = torch.zeros(e, width, dtype=torch.bool)
    turn_ends = torch.zeros(e, width, dtype=torch.bool)
    turn_rewards = torch.zeros(e, turns)
    turn_mask = torch.zeros(e, turns, dtype=torch.bool)
    for i, tokens in enumerate(TURN_TOKENS):
        view_mask[i, :sum(tokens)] = True
        end = -1
        for t, n in enumerate(tokens):
            end += n
            turn_ends[i, end] = True
            turn_rewards[i, t] = TURN_REWARDS[i][t]
            turn_mask[i, t] = True
    dummy = torch.zeros(1, 1)
    return TokenBatch(
        input_ids=dummy.long(), attention_mask=dummy.long(), action_mask=dummy, rollout_logprobs=dummy,
        rows=torch.zeros(0, dtype=torch.long), positions=torch.zeros(0, dtype=torch.long), view_mask=view_mask,
        turn_ends=turn_ends, turn_rewards=turn_rewards, turn_mask=turn_mask,
        returns=torch.tensor([sum(r) for r in TURN_REWARDS]), group_ids=torch.tensor(GROUPS),
        terminated=torch.tensor(TERMINATED), observations=OBSERVATIONS,
    )


def _turn_of_token(i: int) -> list[int]:
    return [t for t, n in enumerate(TURN_TOKENS[i]) for _ in range(n)]


def _normalise(algo: str, x: float, members: list[float], others: list[float]) -> float:
    if len(members) < 2:
        return 0.0
    if algo == "grpo":
        return (x - statistics.fmean(members)) / (statistics.stdev(members) + 1e-6)
    if algo == "drgrpo":
        return x - statistics.fmean(members)
    return x - statistics.fmean(others)  # rloo


def _turn_returns(i: int) -> list[float]:
    out, g = [], 0.0
    for r in reversed(TURN_REWARDS[i]):
        g = r + GAMMA * g
        out.append(g)
    return out[::-1]


def _episode_reference(algo: str) -> list[list[float]]:
    returns = [sum(r) for r in TURN_REWARDS]
    out = []
    for i, r in enumerate(returns):
        members = [returns[j] for j in range(4) if GROUPS[j] == GROUPS[i]]
        others = [returns[j] for j in range(4) if GROUPS[j] == GROUPS[i] and j != i]
        out.append([_normalise(algo, r, members, others)] * sum(TURN_TOKENS[i]))
    return out


def _turn_reference(algo: str) -> list[list[float]]:
    g = {i: _turn_returns(i) for i in range(4)}
    out = []
    for i in range(4):
        per_turn = []
        for t, x in enumerate(g[i]):
            members = [y for j in range(4) if GROUPS[j] == GROUPS[i] for y in g[j]]
            others = [y for j in range(4) if GROUPS[j] == GROUPS[i] for u, y in enumerate(g[j]) if (j, u) != (i, t)]
            per_turn.append(_normalise(algo, x, members, others))
        out.append([per_turn[t] for t in _turn_of_token(i)])
    return out


def _gigpo_reference(algo: str) -> list[list[float]]:
    scale = "grpo" if algo == "grpo" else "drgrpo"
    episode = _episode_reference(scale)
    g = {i: _turn_returns(i) for i in range(4)}
    out = []
    for i in range(4):
        per_turn = []
        for t, x in enumerate(g[i]):
            anchor = [g[j][u] for j in range(4) for u in range(len(g[j]))
                      if GROUPS[j] == GROUPS[i] and OBSERVATIONS[j][u] == OBSERVATIONS[i][t]]
            per_turn.append(episode[i][0] + OMEGA * _normalise(scale, x, anchor, []))
        out.append([per_turn[t] for t in _turn_of_token(i)])
    return out


def _token_rewards(kl: list[list[float]], outcome_only: bool) -> list[list[float]]:
    """Turn rewards (or the group-centred outcome) on each turn's last token, minus β·KL on every token."""
    returns = [sum(r) for r in TURN_REWARDS]
    out = []
    for i, tokens in enumerate(TURN_TOKENS):
        row = [-BETA * k for k in kl[i][:sum(tokens)]]
        if outcome_only:
            mean = statistics.fmean(returns[j] for j in range(4) if GROUPS[j] == GROUPS[i])
            row[-1] += returns[i] - mean
        else:
            end = -1
            for t, n in enumerate(tokens):
                end += n
                row[end] += TURN_REWARDS[i][t]
        out.append(row)
    return out


def _whiten(rows: list[list[float]]) -> list[list[float]]:
    flat = [x for row in rows for x in row]
    mean, std = statistics.fmean(flat), statistics.pstdev(flat)
    return [[(x - mean) / (std + 1e-8) for x in row] for row in rows]


def _reinforce_reference(kl: list[list[float]], outcome_only: bool) -> list[list[float]]:
    out = []
    for row in _token_rewards(kl, outcome_only):
        g, to_go = 0.0, []
        for r in reversed(row):
            g = r + GAMMA * g
            to_go.append(g)
        out.append(to_go[::-1])
    return _whiten(out)


def _ppo_reference(kl: list[list[float]], values: list[list[float]],
                   bootstrap: list[float] | None = None) -> tuple[list[list[float]], list[list[float]]]:
    """GAE per episode; the last token bootstraps from V(s_T) (`bootstrap`; without it, its own value) when the
    episode was cut, never when it ended."""
    adv, ret = [], []
    for i, row in enumerate(_token_rewards(kl, outcome_only=False)):
        v = values[i][:len(row)]
        a, running = [0.0] * len(row), 0.0
        for t in reversed(range(len(row))):
            if t == len(row) - 1:
                nxt = 0.0 if TERMINATED[i] else (v[t] if bootstrap is None else bootstrap[i])
            else:
                nxt = v[t + 1]
            running = row[t] + GAMMA * nxt - v[t] + (GAMMA * LAM * running if t < len(row) - 1 else 0.0)
            a[t] = running
        adv.append(a)
        ret.append([x + y for x, y in zip(a, v, strict=True)])
    return _whiten(adv), ret


def _turn_reference_rewards_first(algo: str) -> list[list[float]]:
    """IGPO's order: each turn reward normalised against every turn reward of its task group, then summed to go."""
    normalised = {}
    for i in range(4):
        for t, x in enumerate(TURN_REWARDS[i]):
            members = [y for j in range(4) if GROUPS[j] == GROUPS[i] for y in TURN_REWARDS[j]]
            others = [y for j in range(4) if GROUPS[j] == GROUPS[i] for u, y in enumerate(TURN_REWARDS[j])
                      if (j, u) != (i, t)]
            normalised[i, t] = _normalise(algo, x, members, others)
    out = []
    for i in range(4):
        to_go, g = [], 0.0
        for t in reversed(range(len(TURN_REWARDS[i]))):
            g = normalised[i, t] + GAMMA * g
            to_go.append(g)
        per_turn = to_go[::-1]
        out.append([per_turn[t] for t in _turn_of_token(i)])
    return out


def _view(rows: list[list[float]], width: int) -> torch.Tensor:
    return torch.tensor([row + [0.0] * (width - len(row)) for row in rows])


def _config(algo: str, advantage: str) -> LLMTrainConfig:
    return LLMTrainConfig(model="tiny", algo=algo, advantage=advantage, gamma=GAMMA, gae_lambda=LAM,
                          gigpo_omega=OMEGA, kl_coef=BETA)


@pytest.mark.parametrize(("algo", "advantage"), [
    (algo, advantage) for algo in ("grpo", "drgrpo", "rloo") for advantage in ("episode", "turn", "gigpo")
    if (algo, advantage) != ("rloo", "gigpo")  # a config error, tested in test_trainer
])
def test_group_estimators_match_the_reference(algo: str, advantage: str) -> None:
    batch = _batch()
    reference = {"episode": _episode_reference, "turn": _turn_reference, "gigpo": _gigpo_reference}[advantage]
    adv, value_targets = advantages(_config(algo, advantage), batch)
    assert value_targets is None
    expected = _view(reference(algo), batch.view_mask.shape[1])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)
    assert torch.all(adv[~batch.view_mask] == 0)


@pytest.mark.parametrize("advantage", ["turn", "episode"])
def test_reinforce_pp_matches_the_reference(advantage: str) -> None:
    batch = _batch()
    kl = torch.linspace(-0.5, 0.7, batch.view_mask.numel()).view(batch.view_mask.shape)  # junk on padding too
    adv, value_targets = advantages(_config("reinforce_pp", advantage), batch, kl=kl)
    assert value_targets is None
    expected = _reinforce_reference(kl.tolist(), outcome_only=advantage == "episode")
    torch.testing.assert_close(adv, _view(expected, batch.view_mask.shape[1]), atol=1e-5, rtol=1e-5)


def test_ppo_llm_gae_bootstraps_only_cut_episodes() -> None:
    batch = _batch()
    width = batch.view_mask.shape[1]
    # padding holds non-zero junk that must not leak into any valid token or value target
    kl = torch.linspace(0.4, -0.2, batch.view_mask.numel()).view(4, width)
    values = torch.linspace(-1.0, 2.0, batch.view_mask.numel()).view(4, width)
    adv, targets = advantages(_config("ppo_llm", "turn"), batch, kl=kl, values=values)
    expected_adv, expected_targets = _ppo_reference(kl.tolist(), values.tolist())
    torch.testing.assert_close(adv, _view(expected_adv, width), atol=1e-5, rtol=1e-5)
    assert targets is not None
    torch.testing.assert_close(targets, _view(expected_targets, width), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="value head"):
        advantages(_config("ppo_llm", "turn"), batch, kl=kl)


@pytest.mark.parametrize("algo", ["grpo", "drgrpo", "rloo"])
def test_turn_rewards_normalised_before_summing_as_igpo(algo: str) -> None:
    batch = _batch()
    config = LLMTrainConfig(model="tiny", algo=algo, advantage="turn", gamma=GAMMA, turn_normalization="rewards")
    adv, _ = advantages(config, batch)
    expected = _view(_turn_reference_rewards_first(algo), batch.view_mask.shape[1])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(adv, _view(_turn_reference(algo), batch.view_mask.shape[1]), atol=1e-3)


def test_turn_normalization_defaults_to_igpos_order_with_igpo_and_is_refused_where_it_does_nothing() -> None:
    assert LLMTrainConfig(model="tiny", advantage="turn").turn_normalization == "returns"
    igpo = LLMTrainConfig(model="tiny", env_id="creditgym/ToolUse-v1", advantage="turn", learned_reward="igpo")
    assert igpo.turn_normalization == "rewards"
    assert LLMTrainConfig(model="tiny").turn_normalization is None  # advantage episode: nothing to normalise per turn
    with pytest.raises(ValueError, match=r"turn_normalization \(--turn-normalization\) only applies with "
                                         r"advantage='turn'"):
        LLMTrainConfig(model="tiny", turn_normalization="rewards")
    with pytest.raises(ValueError, match="turn_normalization must be returns or rewards"):
        LLMTrainConfig(model="tiny", advantage="turn", turn_normalization="tokens")


def test_ppo_llm_cut_episodes_bootstrap_from_the_value_of_the_next_prompt() -> None:
    """V(s_T) is the value of the state after the last turn. Bootstrapping from the last generated token's own value
    instead counts that turn's reward twice: values [1, 2, 3] and no reward gave returns [3, 3, 3]."""
    batch = _batch()
    width = batch.view_mask.shape[1]
    kl = torch.linspace(0.4, -0.2, batch.view_mask.numel()).view(4, width)
    values = torch.linspace(-1.0, 2.0, batch.view_mask.numel()).view(4, width)
    bootstrap = [7.0, -3.0, 11.0, 0.5]  # the ended episodes' (0 and 2) must not count
    adv, targets = advantages(_config("ppo_llm", "turn"), batch, kl=kl, values=values,
                              bootstrap_values=torch.tensor(bootstrap))
    expected_adv, expected_targets = _ppo_reference(kl.tolist(), values.tolist(), bootstrap)
    torch.testing.assert_close(adv, _view(expected_adv, width), atol=1e-5, rtol=1e-5)
    assert targets is not None
    torch.testing.assert_close(targets, _view(expected_targets, width), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(targets, _view(_ppo_reference(kl.tolist(), values.tolist())[1], width))
