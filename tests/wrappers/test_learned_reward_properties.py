"""reward-methods.md formulas of the learned-reward wrappers that the behaviour tests do not pin down exactly.

SPA's loss is MSE(Σ_t ĉ_t, R); PRIME's PRM loss is BCE(σ(β Σ log π_φ/π_ref), correct); OPRL's is the trajectory
DPO loss −log σ(β Δ); implicit-PRM β defaults to 0.05; IGPO pays r_t = p_{t+1} − p_t before the last turn and the
outcome on the last, with p_t read from the history before turn t.
"""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import pytest
import torch

from creditgym.agents.llm.rollout import Episode, Turn
from creditgym.wrappers.implicit_prm import (
    GridImplicitPRM,
    LLMImplicitPRM,
    outcome_ce_loss,
    trajectory_dpo_loss,
)
from creditgym.wrappers.info_gain import InformationGain
from creditgym.wrappers.learned import StepEpisode
from creditgym.wrappers.progress import GridProgressEstimator, ProgressAttribution


# -- SPA -----------------------------------------------------------------------------------------------------------
def test_spa_loss_is_the_mse_of_summed_contributions_against_the_outcome() -> None:
    generator = torch.Generator().manual_seed(0)
    episodes = []
    for i in range(12):
        length = 2 + i % 4
        obs, actions = torch.rand(length, 4, generator=generator), torch.randint(0, 2, (length,), generator=generator)
        outcome = [0.0, 0.3, 1.0, 1.7][i % 4]  # not only 0/1, where squared and absolute errors can coincide
        episodes.append(StepEpisode(obs, actions, torch.ones(length, dtype=torch.bool), outcome > 0.5, outcome))
    torch.manual_seed(0)
    spa = ProgressAttribution(GridProgressEstimator((4,), 2, hidden=16), learning_rate=1e-2, seed=0)
    for _ in range(3):
        spa.update(episodes)  # move the zero-initialised head away from predicting 0
    predicted = spa.predict(episodes)
    assert predicted.abs().max() > 1e-3
    outcomes = torch.tensor([e.outcome for e in episodes])
    expected = ((predicted - outcomes) ** 2).mean()
    assert float(spa.loss(episodes).detach()) == pytest.approx(float(expected), abs=1e-6)


# -- PRIME / OPRL PRM losses --------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_prime_ce_loss_is_bce_of_sigmoid_beta_times_the_log_ratio_sum(beta: float) -> None:
    sums = torch.tensor([3.0, -2.0, 10.0, 0.5], dtype=torch.float64)
    correct = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    p = torch.sigmoid(beta * sums)
    expected = -(correct * p.log() + (1 - correct) * (1 - p).log()).mean()
    assert float(outcome_ce_loss(sums, correct, beta=beta)) == pytest.approx(float(expected), abs=1e-9)


@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_oprl_dpo_loss_is_minus_log_sigmoid_of_beta_times_the_margin(beta: float) -> None:
    chosen = torch.tensor([3.0, -1.0, 0.2], dtype=torch.float64)
    rejected = torch.tensor([1.0, 2.0, 0.2], dtype=torch.float64)
    expected = sum(-math.log(1 / (1 + math.exp(-beta * (c - r)))) for c, r in zip(chosen.tolist(), rejected.tolist(),
                                                                                   strict=True)) / 3
    assert float(trajectory_dpo_loss(chosen, rejected, beta=beta)) == pytest.approx(expected, abs=1e-9)


def test_implicit_prm_beta_defaults_to_005() -> None:
    for cls in (GridImplicitPRM, LLMImplicitPRM):
        assert inspect.signature(cls).parameters["beta"].default == 0.05


# -- IGPO ------------------------------------------------------------------------------------------------------------
def _episodes() -> list[Episode]:
    episodes = []
    for task in (1.0, 0.0, 0.4):
        episode = Episode(group=0, seed=0, instructions="rules", ground_truth="42")
        episode.turns = [Turn(f"obs{t}", f"act{t}", 0.0, {"task": 0.0}, False, 1) for t in range(3)]
        episode.turns[-1].reward_components["task"] = task
        episodes.append(episode)
    return episodes


@pytest.mark.parametrize("coef", [1.0, 2.0])
def test_igpo_turn_rewards_are_gains_then_the_outcome(coef: float) -> None:
    episodes = _episodes()
    probabilities = [torch.tensor([0.1, 0.5, 0.3]), torch.tensor([0.9, 0.2, 0.4]), torch.tensor([0.0, 0.0, 1.0])]
    gain = InformationGain(SimpleNamespace(), coef=coef)  # probabilities given: the policy is never called
    for episode, p, r in zip(episodes, probabilities, gain.turn_rewards(episodes, probabilities), strict=True):
        torch.testing.assert_close(r[:-1], coef * (p[1:] - p[:-1]))
        assert float(r[:-1].sum()) == pytest.approx(coef * float(p[-1] - p[0]), abs=1e-6)  # telescoping
        # r_T = the outcome itself, in [0, 1], whatever scales the gains
        assert float(r[-1]) == pytest.approx(episode.turns[-1].reward_components["task"])
        assert 0.0 <= float(r[-1]) <= 1.0


@pytest.mark.parametrize("history_turns", [None, 1])
def test_igpo_p_t_reads_the_history_before_turn_t(history_turns: int | None) -> None:
    """p_0 sees the first observation only; p_t sees the earlier turns (the last `history_turns` of them) and turn
    t's observation, not its action."""
    episode = _episodes()[0]
    gain = InformationGain(SimpleNamespace(chat_prompt=lambda messages: messages), history_turns=history_turns)
    contexts = gain.contexts(episode)
    assert len(contexts) == len(episode.turns)
    for t, messages in enumerate(contexts):
        texts = [m["content"] for m in messages]
        first = 0 if history_turns is None else max(0, t - history_turns)
        assert messages[0] == {"role": "system", "content": "rules"}
        assert messages[-1] == {"role": "user", "content": f"obs{t}"}
        assert [x for x in texts if x.startswith("act")] == [f"act{k}" for k in range(first, t)]
        assert [x for x in texts if x.startswith("obs")] == [f"obs{k}" for k in range(first, t + 1)]


def test_igpo_gains_are_the_turn_rewards_without_the_outcome() -> None:
    """What the trainer adds to the env's rewards: coef·(p_{t+1} − p_t), and 0 on the last turn, where the env
    itself already pays the outcome (non-zero here, unlike the random model's rollouts)."""
    episodes = _episodes()
    probabilities = [torch.tensor([0.1, 0.5, 0.3]), torch.tensor([0.9, 0.2, 0.4]), torch.tensor([0.0, 0.0, 1.0])]
    gains = InformationGain(SimpleNamespace(), coef=2.0).gains(episodes, probabilities)
    for p, g in zip(probabilities, gains, strict=True):
        torch.testing.assert_close(g, torch.cat([2.0 * (p[1:] - p[:-1]), torch.zeros(1)]))
