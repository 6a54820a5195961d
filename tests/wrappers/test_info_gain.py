"""IGPO: the envs hand over the ground truth only when asked, and the information-gain rewards telescope."""

from __future__ import annotations

import copy
import dataclasses
import math

import gymnasium as gym
import pytest
import torch

import creditgym  # noqa: F401
from creditgym.agents.llm.policy import MIN_SHARED_PREFIX, shared_prefix_length
from creditgym.envs.testing import check_conformance
from creditgym.wrappers.info_gain import InformationGain, episode_outcome

from .llm_episodes import collect

ENV_IDS = ["creditgym/ToolUse-Easy-v1", "creditgym/Dialogue-Gather-v0"]


@pytest.fixture(scope="module")
def rollouts():  # noqa: ANN201
    torch.set_num_threads(1)
    return collect(lambda: gym.make("creditgym/Dialogue-Gather-v0", expose_ground_truth=True), num_groups=2,
                   group_size=2, max_turns=3, max_new_tokens=4)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_ground_truth_appears_only_when_exposed_and_solves_the_task(env_id: str) -> None:
    _, info = gym.make(env_id).reset(seed=3)
    assert "ground_truth" not in info
    env = gym.make(env_id, expose_ground_truth=True)
    obs, info = env.reset(seed=3)
    assert info["ground_truth"] == env.unwrapped.ground_truth()
    assert info["ground_truth"] not in obs and info["ground_truth"] not in info["instructions"]
    _, reward, terminated, _, step_info = env.step(info["ground_truth"])
    assert terminated and step_info["success"] and reward == 1.0


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_exposed_envs_still_conform(env_id: str) -> None:
    check_conformance(env_id, expose_ground_truth=True)


def test_rollouts_keep_the_ground_truth_out_of_every_prompt(rollouts) -> None:  # noqa: ANN001
    policy, episodes, _ = rollouts
    for episode in episodes:
        assert episode.ground_truth and episode.ground_truth.startswith("<propose>")
        for segment in episode.segments:
            assert episode.ground_truth not in policy.tokenizer.decode(segment.token_ids)


def test_gains_telescope_and_the_last_turn_pays_the_outcome(rollouts) -> None:  # noqa: ANN001
    policy, episodes, _ = rollouts
    gain = InformationGain(policy, history_turns=1, micro_batch_size=3)
    probabilities = gain.answer_probabilities(episodes)
    rewards = gain.turn_rewards(episodes, probabilities)
    assert any(len(e.turns) > 1 for e in episodes)
    for episode, p, r in zip(episodes, probabilities, rewards, strict=True):
        assert len(p) == len(r) == len(episode.turns)
        assert torch.all((p > 0) & (p <= 1))
        assert abs(float(r[:-1].sum()) - float(p[-1] - p[0])) < 1e-6
        assert 0.0 <= float(r[-1]) <= 1.0 and float(r[-1]) == episode_outcome(episode)
    # the trainer's dense part: scaled gains, nothing on the last turn (the env pays the outcome there)
    scaled = InformationGain(policy, coef=2.0, history_turns=1).gains(episodes, probabilities)
    for p, g in zip(probabilities, scaled, strict=True):
        assert float(g[-1]) == 0.0 and torch.allclose(g[:-1], 2.0 * (p[1:] - p[:-1]))


def test_probability_is_the_mean_answer_logprob_before_the_turn(rollouts) -> None:  # noqa: ANN001
    policy, episodes, _ = rollouts
    # The random model is nearly uniform over its 259 tokens (every logprob about −5.6), so a mean over the wrong
    # tokens (one prompt token too many, say) matched it to 1e-5; tenfold (tied) embeddings make logprobs differ.
    policy = copy.deepcopy(policy)
    with torch.no_grad():
        policy.model.get_input_embeddings().weight.mul_(10.0)
    gain = InformationGain(policy, history_turns=1)
    episode = next(e for e in episodes if len(e.turns) > 1)
    # The contexts share their instructions, so this also checks the shared-prefix pass against plain logits.
    assert shared_prefix_length(gain.contexts(episode)) >= MIN_SHARED_PREFIX
    p = gain.answer_probabilities([episode])[0]
    answer = policy.tokenizer(episode.ground_truth, add_special_tokens=False)["input_ids"]
    for t, prompt in enumerate(gain.contexts(episode)):
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = policy.model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(answer)[:, None])
        # compared on the log scale, as p is tiny for a long answer
        assert float(logprobs.std()) > 1.0  # the tokens' logprobs differ, so which ones are averaged matters
        assert abs(math.log(float(p[t])) - float(logprobs.mean())) < 1e-4
    later = policy.tokenizer.decode(gain.contexts(episode)[1])
    assert episode.turns[0].action in later and episode.turns[1].observation in later
    # Twice the first turn alone: the two sequences are alike to their end, and the shared prefix must stop before
    # the answer, which it scores, so p_0 is the same as scored beside the later turns.
    alone = dataclasses.replace(episode, turns=episode.turns[:1])
    twice = gain.answer_probabilities([alone, alone])
    assert [float(q[0]) for q in twice] == pytest.approx([float(p[0])] * 2, rel=1e-4)


def test_outcome_is_the_task_channel_clipped() -> None:
    from creditgym.agents.llm.rollout import Episode, Turn

    episode = Episode(group=0, seed=0, instructions="")
    episode.turns = [Turn("o", "a", 0.2, {"task": 0.0, "format": -0.1}, True, 1),
                     Turn("o", "a", 1.5, {"task": 1.5, "format": 0.0}, False, 1)]
    assert episode_outcome(episode) == 1.0
    episode.turns[1].reward_components["task"] = 0.4
    assert episode_outcome(episode) == pytest.approx(0.4)


def test_missing_ground_truth_says_how_to_expose_it(rollouts) -> None:  # noqa: ANN001
    policy, episodes, _ = rollouts
    episode = episodes[0]
    saved, episode.ground_truth = episode.ground_truth, None
    try:
        with pytest.raises(ValueError, match="expose_ground_truth=True"):
            InformationGain(policy).answer_probabilities([episode])
    finally:
        episode.ground_truth = saved
