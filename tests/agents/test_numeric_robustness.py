"""Bad numbers during training fail loudly, name what went non-finite and where, and never reach a checkpoint;
edge cases that standard practice handles (a minibatch of one, groups of identical rewards) stay finite."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import creditgym  # noqa: F401
from creditgym.agents.llm import LLMTrainConfig, LLMTrainer
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.agents.vec import NonFiniteError
from creditgym.cli import main as cli_main
from creditgym.credit import grpo_advantages, masked_whiten, rloo_advantages
from creditgym.llm import tiny_test_model
from creditgym.wrappers import shaping
from creditgym.wrappers.implicit_prm import GridImplicitPRM
from creditgym.wrappers.learned import StepEpisode
from creditgym.wrappers.progress import GridProgressEstimator, ProgressAttribution
from creditgym.wrappers.shaping import PotentialShaping

from .llm.helpers import LetterCountEnv


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class BadNumbersEnv(gym.Env):
    """Action 1 pays 1, action 0 pays 0; from its `after`-th step on (counted over episodes) `bad` breaks it."""

    metadata = {"render_modes": []}

    def __init__(self, bad: str = "none", after: int = 0) -> None:
        self.bad, self.after, self.steps, self.t = bad, after, 0, 0
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.steps += 1
        self.t += 1
        obs = np.full(3, 0.5 if action else -0.5, np.float32)
        reward = float(action)
        broken = self.steps >= self.after
        if broken and self.bad in ("nan", "inf"):
            reward = float(self.bad)
        if broken and self.bad == "nan_obs":
            obs[:] = np.nan
        if self.bad == "huge":
            reward *= 1e30
        return obs, reward, self.t >= 4, False, {"success": bool(action)}


gym.register("numeric-test/BadNumbers-v0", entry_point=BadNumbersEnv)


def _config(tmp_path: Path, **overrides: Any) -> PPOConfig:
    values: dict[str, Any] = dict(env_id="numeric-test/BadNumbers-v0", num_envs=4, num_steps=8, total_steps=640,
                                  num_minibatches=2, hidden=16, progress=False, tensorboard=False,
                                  runs_dir=str(tmp_path), run_name="run", checkpoint_every=1)
    values.update(overrides)
    return PPOConfig(**values)


def _diverging(config: Any, **learning_rates: float) -> Any:
    """`config` with learning rates past its own check (which refuses any above 1), as an optimisation that diverges
    at a rate it allows would be: the trainers' non-finite guards must still stop it cleanly."""
    for name, value in learning_rates.items():
        setattr(config, name, value)
    return config


def _rows(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _all_finite(rows: list[dict[str, float]]) -> bool:
    return all(math.isfinite(value) for row in rows for value in row.values())


# -- PPO ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("bad", "message"), [
    ("nan", r"update 3 \(env steps 64-96\).* first in the env's reward: nan at rollout step 3 of env 0"),
    ("inf", r"update 3 .* first in the env's reward: inf at rollout step 3"),
    ("nan_obs", r"update 3 .* first in the env's observation the policy saw: nan at rollout step"),
])
def test_a_bad_env_stops_ppo_and_the_last_good_checkpoint_survives(tmp_path: Path, bad: str, message: str) -> None:
    # The env breaks at its 20th step, in the third update of 8 steps: updates 1 and 2 were saved.
    trainer = PPO(_config(tmp_path, env_kwargs={"bad": bad, "after": 20}))
    with pytest.raises(NonFiniteError, match=message) as error:
        trainer.learn()
    assert "checkpoint.pt still holds update 2, the last good state" in str(error.value)
    state = torch.load(trainer.run_dir / "checkpoint.pt", weights_only=False)
    assert state["update"] == 2
    assert all(weight.isfinite().all() for weight in state["model"].values())
    rows = _rows(trainer.run_dir)
    assert len(rows) == 2 and _all_finite(rows)


def test_rewards_too_large_to_square_name_the_value_loss_and_the_scale(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match=r"update 1 .* first in the value loss at epoch 1, minibatch 1; the "
                                             r"returns reach \|G\| = .*e\+30.*scale the rewards down") as error:
        PPO(_config(tmp_path, env_kwargs={"bad": "huge"})).learn()
    assert "no checkpoint of this run was saved before it" in str(error.value)


def test_a_diverging_learning_rate_stops_before_nan_weights_are_saved_or_logged(tmp_path: Path) -> None:
    config = _config(tmp_path, env_id="creditgym/Sanity-Bandit-v0", anneal_lr=False)
    trainer = PPO(_diverging(config, learning_rate=1e9))
    with pytest.raises(NonFiniteError, match=r"PPO update \d+ .*the optimisation diverged: lower --learning-rate "
                                             r"\(now 1e\+09\)"):
        trainer.learn()
    if (trainer.run_dir / "checkpoint.pt").exists():
        state = torch.load(trainer.run_dir / "checkpoint.pt", weights_only=False)
        assert all(weight.isfinite().all() for weight in state["model"].values())
    assert _all_finite(_rows(trainer.run_dir))


def test_a_nan_shaping_potential_is_named_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_potential(obs: torch.Tensor) -> torch.Tensor:
        return torch.full((obs.shape[0],), float("nan"))

    monkeypatch.setattr(shaping, "_batched", lambda name: nan_potential)
    config = _config(tmp_path, env_id="creditgym/Sokoban-6x6-1b-v0", shaping="box_distance", num_envs=2)
    # The batched shaping wrapper finds it at the first reset, before PPO's rollout checks would (as the single-env
    # wrapper does), and names the potential.
    with pytest.raises(NonFiniteError, match=r"shaping potential 'nan_potential' \(scale 1\) is not finite for envs "
                                             r"\[0, 1\]; make it return a finite number for every state"):
        PPO(config).learn()


def test_a_diverging_learned_reward_model_stops_ppo(tmp_path: Path) -> None:
    config = _diverging(_config(tmp_path, env_id="creditgym/Sokoban-6x6-1b-v0", learned_reward="spa", num_envs=16,
                                num_steps=16, total_steps=4096), learned_reward_lr=1e6)
    with pytest.raises(NonFiniteError, match=r"SPA's progress estimator has a non-finite loss .* lower its learning "
                                             r"rate \(learning_rate 1e\+06; --learned-reward-lr"):
        PPO(config).learn()


def test_an_overflowing_implicit_prm_reward_names_prm_beta(tmp_path: Path) -> None:
    # beta * log-ratio overflows: the error named only --learned-reward-lr and --learned-reward-coef.
    config = _config(tmp_path, env_id="creditgym/Sokoban-6x6-1b-v0", learned_reward="prime", prm_beta=1e300,
                     num_envs=8, num_steps=16, total_steps=128)
    with pytest.raises(NonFiniteError, match=r"learned reward model \(prime\).*lower --prm-beta \(now 1e\+300\), "
                                             r"--learned-reward-lr"):
        PPO(config).learn()


def test_minibatches_of_one_sample_train_with_finite_metrics(tmp_path: Path) -> None:
    # The std of one advantage is NaN, and the variance of a batch of one returns too: neither may reach the loss
    # or the metrics.
    config = _config(tmp_path, env_id="creditgym/Sanity-Bandit-v0", num_envs=1, num_steps=1, num_minibatches=1,
                     total_steps=8)
    metrics = PPO(config).learn()
    assert "losses/explained_variance" not in metrics  # undefined for a single return
    assert _all_finite(_rows(Path(config.runs_dir) / "run"))


def test_cli_reports_a_non_finite_update_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli_main(["train", "--env", "numeric-test/BadNumbers-v0", "--env-kwargs", '{"bad": "nan"}',
                     "--num-envs", "4", "--num-steps", "8", "--total-steps", "64", "--hidden", "16",
                     "--no-progress", "--no-tensorboard", "--runs-dir", str(tmp_path), "--run-name", "run"])
    out = capsys.readouterr().out
    assert code == 2
    assert "error:" in out and "first in the env's reward: nan" in out and "Traceback" not in out


# -- wrappers and learned reward models ------------------------------------------------------------------------
def test_a_nan_potential_in_the_single_env_wrapper_raises() -> None:
    env = PotentialShaping(gym.make("creditgym/Sokoban-6x6-1b-v0"), lambda env: float("nan"), gamma=1.0)
    with pytest.raises(NonFiniteError, match=r"shaping potential '<lambda>' is nan .*return a finite number"):
        env.reset(seed=0)


def _episodes(outcome: float, obs: float = 1.0) -> list[StepEpisode]:
    return [StepEpisode(torch.full((3, 4), obs), torch.tensor([0, 1, 0]), torch.ones(3, dtype=torch.bool), True,
                        outcome) for _ in range(2)]


def test_spa_refuses_a_non_finite_loss_and_keeps_its_weights() -> None:
    spa = ProgressAttribution(GridProgressEstimator((4,), 2, hidden=8), seed=0)
    spa.update(_episodes(1.0))
    before = [p.detach().clone() for p in spa.params]
    with pytest.raises(NonFiniteError, match="SPA's progress estimator has a non-finite loss"):
        spa.update(_episodes(float("nan")))
    assert all(torch.equal(a, b) for a, b in zip(before, spa.params, strict=True))


def test_the_implicit_prm_refuses_a_non_finite_loss_and_keeps_its_weights() -> None:
    prm = GridImplicitPRM((4,), 2, hidden=8, seed=0)
    before = [p.detach().clone() for p in prm.network.parameters()]
    with pytest.raises(NonFiniteError, match=r"implicit PRM has a non-finite loss .*--learned-reward-lr"):
        prm.update(_episodes(1.0, obs=float("nan")))
    assert all(torch.equal(a, b) for a, b in zip(before, prm.network.parameters(), strict=True))


# -- group and batch statistics --------------------------------------------------------------------------------
def test_identical_and_single_member_groups_give_zero_advantages() -> None:
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.5])
    groups = torch.tensor([0, 0, 0, 1])  # a group of identical rewards (std 0) and a group of one
    for advantages in (grpo_advantages(rewards, groups), grpo_advantages(rewards, groups, eps=0.0),
                       rloo_advantages(rewards, groups)):
        assert torch.equal(advantages, torch.zeros(4))
    assert torch.equal(masked_whiten(torch.tensor([3.0])), torch.zeros(1))
    assert torch.equal(masked_whiten(torch.tensor([3.0, 4.0]), torch.tensor([False, False])), torch.zeros(2))


# -- LLM trainers ---------------------------------------------------------------------------------------------
class NanRewardEnv(LetterCountEnv):
    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        obs, _, terminated, truncated, info = super().step(action)
        return obs, float("nan"), terminated, truncated, {**info, "reward_components": {"task": float("nan")}}


def _llm_trainer(tmp_path: Path, make_env: Any = LetterCountEnv, *, diverging_lr: float | None = None,
                 **overrides: Any) -> LLMTrainer:
    settings: dict[str, Any] = dict(
        model="tiny", env_id="creditgym/Sanity-WordBandit-v0", iterations=2, num_groups=2, group_size=4,
        max_turns=3, max_new_tokens=4, learning_rate=1e-3, runs_dir=str(tmp_path), run_name="run", progress=False,
        tensorboard=False, checkpoint_every=1, device="cpu", micro_batch_size=3)
    settings.update(overrides)
    config = LLMTrainConfig(**settings)
    if diverging_lr is not None:
        _diverging(config, learning_rate=diverging_lr)
    model, tokenizer = tiny_test_model(seed=0)
    return LLMTrainer(config, model=model, tokenizer=tokenizer, make_env=make_env)


def test_a_nan_turn_reward_stops_the_llm_trainer_before_any_update(tmp_path: Path) -> None:
    # GRPO's normalisation would turn a NaN group into advantages of 0 and train on nothing, silently.
    trainer = _llm_trainer(tmp_path, NanRewardEnv)
    before = [p.detach().clone() for p in trainer.policy.model.parameters()]
    with pytest.raises(NonFiniteError, match=r"episode 0 \(group 0, seed \d+\) got reward nan at turn 0 \(reward "
                                             r"channel 'task'\)"):
        trainer.learn()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.model.parameters(), strict=True))


@pytest.mark.parametrize("algo", ["grpo", "ppo_llm"])
def test_a_diverging_llm_update_stops_before_the_step_and_keeps_the_checkpoint(tmp_path: Path, algo: str) -> None:
    extra = {"advantage": "turn"} if algo == "ppo_llm" else {}
    trainer = _llm_trainer(tmp_path, algo=algo, diverging_lr=1e30, iterations=3, **extra)
    with pytest.raises(NonFiniteError, match=rf"{algo} iteration 2 .* at epoch 1, minibatch 1; the optimisation "
                                             r"diverged: lower --learning-rate \(now 1e\+30\)") as error:
        trainer.learn()
    assert "checkpoint.pt still holds iteration 1" in str(error.value)
    assert all(p.isfinite().all() for p in trainer.policy.model.parameters())  # the step was not taken
    state = torch.load(trainer.run_dir / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 1 and all(w.isfinite().all() for w in state["trainable"].values())
    assert _all_finite(_rows(trainer.run_dir))


def test_an_accuracy_filter_that_keeps_no_group_skips_the_update_with_finite_metrics(tmp_path: Path) -> None:
    trainer = _llm_trainer(tmp_path, min_group_accuracy=0.9)  # LetterCountEnv's random replies rarely succeed
    before = [p.detach().clone() for p in trainer.policy.model.parameters()]
    metrics = trainer.learn()
    assert metrics["charts/trained_episodes"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.model.parameters(), strict=True))
    assert _all_finite(_rows(trainer.run_dir))


def test_sampling_from_overflowing_logits_names_the_learning_rate(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _llm_trainer(tmp_path)

    def overflowing(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")

    monkeypatch.setattr(trainer.collector, "collect", overflowing)
    with pytest.raises(NonFiniteError, match=r"grpo iteration 1 .* next-token probabilities while sampling .* "
                                             r"lower --learning-rate \(now 0.001\)"):
        trainer.learn()
