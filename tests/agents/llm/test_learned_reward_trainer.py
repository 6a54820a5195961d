"""Learned dense rewards in the LLM trainer: one run each, exact resume, the advantages they set, config errors."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from creditgym.agents.llm import LLMTrainConfig, LLMTrainer
from creditgym.agents.llm.batch import advantages
from creditgym.llm import tiny_test_model

from .helpers import LetterCountEnv, igpo_dialogue_trainer


class CoinEnv(LetterCountEnv):
    """LetterCountEnv whose episodes succeed when the last reply starts with an even byte: about half of a random
    model's, so groups mix successes and failures (DPO pairs, CE labels of both kinds, SPA targets)."""

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        info["success"] = bool(action) and ord(str(action)[0]) % 2 == 0
        return obs, reward, terminated, truncated, info


def make_trainer(tmp_path: Any, *, resume: Any = None, **overrides: Any) -> LLMTrainer:
    settings: dict[str, Any] = dict(
        model="tiny", env_id="coin", iterations=2, num_groups=2, group_size=4, max_turns=3, max_new_tokens=4,
        learning_rate=1e-3, runs_dir=str(tmp_path), run_name="run", progress=False, tensorboard=False,
        checkpoint_every=0, device="cpu", micro_batch_size=3,
    )
    settings.update(overrides)
    model, tokenizer = tiny_test_model(seed=0)
    return LLMTrainer(LLMTrainConfig(**settings), model=model, tokenizer=tokenizer, make_env=CoinEnv, resume=resume)

# learned reward -> (advantage setting, the metric its model logs)
CASES = {"spa": ("turn", "progress/mse"), "prime": ("episode", "implicit_prm/loss"),
         "oprl": ("episode", "implicit_prm/pairs")}
CHANNELS = {"spa": "progress", "prime": "implicit_prm", "oprl": "implicit_prm", "igpo": "info_gain"}


def _weights(trainer: LLMTrainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.policy.model.named_parameters()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_short_run_trains_the_policy_and_logs_the_channel(tmp_path: Path, name: str) -> None:
    advantage, model_metric = CASES[name]
    trainer = make_trainer(tmp_path, learned_reward=name, advantage=advantage, iterations=2,
                           learned_reward_lr=1e-2)
    before = _weights(trainer)
    metrics = trainer.learn()
    assert any(not torch.equal(before[n], p) for n, p in _weights(trainer).items())
    assert f"reward/{CHANNELS[name]}" in metrics and model_metric in metrics
    losses = {k: v for k, v in metrics.items() if k.startswith("losses/")}
    assert all(math.isfinite(v) for v in losses.values()) and metrics["charts/advantage_abs_mean"] > 0
    if name != "spa":  # the PRM learned from each batch before scoring it, so it pays process rewards
        assert metrics["reward/implicit_prm"] != 0.0


def test_igpo_runs_on_dialogue_with_the_ground_truth_exposed(tmp_path: Path) -> None:
    trainer = igpo_dialogue_trainer(tmp_path)
    assert trainer.config.env_kwargs == {"expose_ground_truth": True}
    metrics = trainer.learn()
    assert "reward/info_gain" in metrics and 0 < metrics["info_gain/p_first"] <= 1
    assert math.isfinite(metrics["losses/policy_loss"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_continues_exactly(tmp_path: Path, name: str) -> None:
    settings = dict(learned_reward=name, advantage=CASES[name][0], iterations=2, learned_reward_lr=1e-2,
                    prm_lora_rank=4 if name == "oprl" else 0)
    straight = make_trainer(tmp_path / "a", **settings)
    straight.learn()
    first = make_trainer(tmp_path / "b", **settings)
    first.learn(until_iteration=1)
    resumed = make_trainer(tmp_path / "c", resume=tmp_path / "b" / "run", **settings)
    assert resumed.iteration == 1
    resumed.learn()
    for (n, a), (_, b) in zip(_weights(straight).items(), _weights(resumed).items(), strict=True):
        assert torch.equal(a, b), n
    expected, got = straight.learned_reward.state_dict(), resumed.learned_reward.state_dict()
    weights = "estimator" if name == "spa" else "trainable"
    assert expected[weights].keys() == got[weights].keys()
    assert all(torch.equal(expected[weights][k], got[weights][k]) for k in expected[weights])
    initial = make_trainer(tmp_path / "d", **settings).learned_reward.state_dict()[weights]
    assert any(not torch.equal(initial[k], got[weights][k]) for k in initial), "the reward model should have trained"
    if name == "spa":
        assert len(got["replay"]) == len(expected["replay"]) == 16


@pytest.mark.parametrize("score", ["sum", "mean"])
def test_prm_score_reaches_the_llm_prm(tmp_path: Path, score: str) -> None:
    prm = make_trainer(tmp_path, learned_reward="oprl", iterations=1, prm_score=score).learned_reward.prm
    assert (prm.loss_kind, prm.score, prm.reference) == ("dpo", score, "old")


def test_an_old_policy_reference_is_scored_once_an_iteration(tmp_path: Path) -> None:
    # OPRL's reference is π_old, which an update of two epochs reads too: it was scored twice on the same weights
    trainer = make_trainer(tmp_path, learned_reward="oprl", iterations=1, update_epochs=2)
    calls = []
    real = trainer.score
    trainer.score = lambda *args, **kwargs: (calls.append(1), real(*args, **kwargs))[1]  # type: ignore[method-assign]
    trainer.learn()
    assert len(calls) == 1


def test_learned_advantages_replace_the_configured_ones(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, learned_reward="oprl", iterations=1)
    episodes = trainer.collector.collect([0, 1], generator=trainer.generator)
    from creditgym.agents.llm.batch import pack_episodes

    batch = pack_episodes(episodes, trainer.policy.pad_id, trainer.device)
    plain = copy.deepcopy(batch)
    trainer.learned_reward.apply(episodes, batch)
    assert batch.learned_advantages is not None
    assert advantages(trainer.config, batch)[0] is batch.learned_advantages
    assert not torch.equal(advantages(trainer.config, plain)[0], batch.learned_advantages)
    # the process channel is logged per turn and sums into the turn rewards
    for e, episode in enumerate(episodes):
        logged = [turn.reward_components["implicit_prm"] for turn in episode.turns]
        env_only = plain.turn_rewards[e, :len(logged)]
        assert torch.allclose(batch.turn_rewards[e, :len(logged)] - env_only, torch.tensor(logged), atol=1e-6)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"learned_reward": "curiosity"}, "learned_reward must be one of"),
    ({"learned_reward": "spa", "advantage": "episode"}, "set advantage='turn'"),
    ({"learned_reward": "igpo", "advantage": "episode"}, "set advantage='turn'"),
    ({"learned_reward": "prime", "algo": "reinforce_pp"}, "use one of those algos"),
    ({"learned_reward": "oprl", "prm_reference": "sft"}, "prm_reference must be"),
    ({"learned_reward": "oprl", "prm_score": "max"}, "prm_score must be sum or mean"),
    ({"learned_reward": "prime", "prime_granularity": "word"}, "prime_granularity must be"),
    ({"learned_reward": "prime", "learned_reward_lr": 0.0}, r"learned_reward_lr must be in \(0, 1\]"),
    ({"learned_reward": "prime", "learned_reward_lr": 1e6}, r"learned_reward_lr must be in \(0, 1\].*got 1e\+06"),
    ({"learned_reward": "oprl", "prm_beta": -1.0}, "prm_beta must be positive"),
    ({"learned_reward": "spa", "advantage": "turn", "spa_epochs": 0}, "spa_epochs must be at least 1"),
])
def test_config_errors_say_what_to_change(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLMTrainConfig(**overrides)


def test_prime_keeps_only_groups_solved_20_to_80_percent_of_the_time() -> None:
    from creditgym.agents.llm.rollout import Episode
    from creditgym.agents.llm.trainer import kept_groups

    # Group g has g successes out of 4: accuracies 0, 0.25, 0.5, 0.75 and 1.
    episodes = [Episode(group=g, seed=0, instructions="", success=i < g) for g in range(5) for i in range(4)]
    low, high = LLMTrainConfig(model="tiny", learned_reward="prime").group_accuracy_range
    assert (low, high) == (0.2, 0.8)
    assert {ep.group for ep in kept_groups(episodes, low, high)} == {1, 2, 3}
    assert kept_groups(episodes, *LLMTrainConfig(model="tiny").group_accuracy_range) == episodes
    unfiltered = LLMTrainConfig(model="tiny", learned_reward="prime", min_group_accuracy=0.0, max_group_accuracy=1.0)
    assert kept_groups(episodes, *unfiltered.group_accuracy_range) == episodes
    with pytest.raises(ValueError, match="0 <= min <= max <= 1"):
        LLMTrainConfig(model="tiny", min_group_accuracy=0.9, max_group_accuracy=0.1)


def test_an_iteration_whose_groups_are_all_filtered_out_leaves_the_policy_alone(tmp_path: Path) -> None:
    # min = max = 0.6 cannot hold for groups of 4 (accuracies are multiples of 0.25): nothing is trained on.
    trainer = make_trainer(tmp_path, learned_reward="prime", min_group_accuracy=0.6, max_group_accuracy=0.6)
    before = _weights(trainer)
    metrics = trainer.learn()
    assert metrics["charts/trained_episodes"] == 0
    assert all(torch.equal(before[n], p) for n, p in _weights(trainer).items())
    assert "charts/success_rate" in metrics or "charts/episodic_return" in metrics


def test_spa_epochs_sets_how_many_head_updates_a_round_makes(tmp_path: Path) -> None:
    steps = {}
    for epochs in (1, 4):
        trainer = make_trainer(tmp_path / str(epochs), learned_reward="spa", advantage="turn", iterations=1,
                               spa_epochs=epochs)
        optimizer = trainer.learned_reward.spa.optimizer
        trainer.learn()
        steps[epochs] = max(int(state["step"]) for state in optimizer.state.values())
    assert steps[4] == 4 * steps[1] > 0
