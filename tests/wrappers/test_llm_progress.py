"""SPA for LLM policies: turn-end hidden states, and the reference's properties of the progress head."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import creditgym  # noqa: F401 - registers the ids
from creditgym.agents.llm.policy import MIN_SHARED_PREFIX, shared_prefix_length
from creditgym.wrappers.llm_progress import LLMProgressHead, TurnFeatures, turn_end_hidden_states, turn_features
from creditgym.wrappers.progress import ProgressAttribution
from tests.agents.llm.helpers import LetterCountEnv

from .llm_episodes import collect


@pytest.fixture(scope="module")
def rollouts():  # noqa: ANN201
    torch.set_num_threads(1)
    return collect(lambda: LetterCountEnv(turns=3))


def test_features_are_the_hidden_state_at_each_turn_end(rollouts) -> None:  # noqa: ANN001
    policy, episodes, _ = rollouts
    assert any(len(e.segments) > 1 for e in episodes), "the test needs episodes that span several segments"
    features = turn_end_hidden_states(policy, episodes, micro_batch_size=3)
    decoder = policy.model.get_decoder()
    for episode, feats in zip(episodes, features, strict=True):
        assert feats.shape == (len(episode.turns), policy.model.config.hidden_size)
        expected = []
        for segment in episode.segments:
            with torch.no_grad():
                hidden = decoder(input_ids=torch.tensor([segment.token_ids])).last_hidden_state[0]
            expected += [hidden[p] for p in segment.turn_ends]
        assert torch.allclose(feats, torch.stack(expected), atol=1e-5)


def test_features_with_the_instructions_run_once_match_and_do_not_depend_on_the_micro_batch() -> None:
    policy, episodes, _ = collect(lambda: gym.make("creditgym/Sokoban-6x6-1b-v0", obs_mode="text"),
                                  num_groups=2, group_size=2, max_turns=2, max_new_tokens=3)
    prompts = [seg.token_ids for episode in episodes for seg in episode.segments]
    assert shared_prefix_length(prompts) >= MIN_SHARED_PREFIX, "the test needs segments that open alike"
    decoder = policy.model.get_decoder()
    by_size = {size: turn_end_hidden_states(policy, episodes, micro_batch_size=size) for size in (1, 3, 64)}
    for e, episode in enumerate(episodes):
        expected = []
        for segment in episode.segments:  # each alone, whole: no cache, no padding
            with torch.no_grad():
                hidden = decoder(input_ids=torch.tensor([segment.token_ids])).last_hidden_state[0]
            expected += [hidden[p] for p in segment.turn_ends]
        assert torch.allclose(by_size[64][e], torch.stack(expected), atol=1e-5)
        assert torch.equal(by_size[1][e], by_size[3][e]) and torch.equal(by_size[1][e], by_size[64][e])


def _trained_spa(records: list[TurnFeatures], *, beta: float = 0.0, steps: int = 1) -> ProgressAttribution:
    spa = ProgressAttribution(LLMProgressHead(records[0].features.shape[1]), beta=beta, learning_rate=1e-2, seed=0)
    for _ in range(steps):
        spa.update(records)
    return spa


def _labelled(rollouts) -> list[TurnFeatures]:  # noqa: ANN001
    policy, episodes, _ = rollouts
    records = turn_features(policy, episodes)
    for i, record in enumerate(records):  # a fixed data set with both outcomes
        record.outcome = float(i % 2)
    return records


def test_records_carry_validity_and_outcome(rollouts) -> None:  # noqa: ANN001
    policy, episodes, _ = rollouts
    for episode, record in zip(episodes, turn_features(policy, episodes), strict=True):
        assert len(record) == len(episode.turns)
        assert record.valid.tolist() == [not turn.invalid for turn in episode.turns]
        assert record.outcome == float(episode.success)


def test_a_fresh_head_predicts_0_for_every_turn(rollouts) -> None:  # noqa: ANN001
    # so an untrained SPA pays nothing but the grounding term (and no turn's reward has a built-in bias)
    records = _labelled(rollouts)
    head = LLMProgressHead(records[0].features.shape[1])
    assert torch.equal(head.contributions(records), torch.zeros(sum(len(r) for r in records)))


def test_prediction_is_the_sum_of_contributions(rollouts) -> None:  # noqa: ANN001
    records = _labelled(rollouts)
    spa = _trained_spa(records)
    contributions = spa.contributions(records)
    assert any(float(c.abs().sum()) > 0 for c in contributions), "the head should have moved off zero"
    for predicted, c in zip(spa.predict(records), contributions, strict=True):
        assert abs(float(predicted) - float(c.sum())) < 1e-6


def test_step_rewards_add_grounding_per_valid_turn(rollouts) -> None:  # noqa: ANN001
    records = _labelled(rollouts)
    records[0].valid[0] = False  # at least one invalid turn, so the count matters
    spa = _trained_spa(records, beta=0.5)
    for rewards, c, record in zip(spa.step_rewards(records), spa.contributions(records), records, strict=True):
        assert abs(float(rewards.sum()) - (float(c.sum()) + 0.5 * int(record.valid.sum()))) < 1e-5


def test_mse_decreases_on_a_fixed_data_set(rollouts) -> None:  # noqa: ANN001
    records = _labelled(rollouts)
    spa = _trained_spa(records, steps=0)
    before = float(spa.loss(records).detach())
    for _ in range(30):
        spa.update(records)
    after = float(spa.loss(records).detach())
    assert after < 0.5 * before, (before, after)
