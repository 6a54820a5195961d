"""`creditgym eval` of a PPO run: the run's time limit, and the uncertainty of the success rate it reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from creditgym.agents.evaluate import evaluate, wilson_interval
from creditgym.agents.ppo import PPO, PPOConfig


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _train(root: Path, name: str, **env_kwargs: object) -> Path:
    PPO(PPOConfig(env_id="creditgym/Sokoban-6x6-1b-v0", num_envs=8, num_steps=16, total_steps=256, hidden=16,
                  progress=False, tensorboard=False, runs_dir=str(root), run_name=name, checkpoint_every=0,
                  env_kwargs=env_kwargs)).learn()
    return root / name


def test_sokoban_eval_plays_with_the_runs_time_limit_and_says_which(tmp_path: Path) -> None:
    # The batched Sokoban evaluation kept the run's view and rewards but not its limit: a run trained with 12 steps
    # was played with the env's 120, so its success rate was not the one it trained for.
    short = evaluate(_train(tmp_path, "short", max_episode_steps=12), episodes=8)
    assert short["max_episode_steps"] == 12 and short["mean_steps"] <= 12
    plain = evaluate(_train(tmp_path, "plain"), episodes=8)
    assert plain["max_episode_steps"] == 120  # the env's, as the run trained with


def test_the_success_rate_comes_with_its_wilson_interval(tmp_path: Path) -> None:
    result = evaluate(_train(tmp_path, "run", max_episode_steps=12), episodes=8)
    low, high = result["success_rate_ci95"]
    assert [low, high] == [round(x, 4) for x in wilson_interval(round(result["success_rate"] * 8), 8)]
    assert 0 <= low <= result["success_rate"] <= high <= 1 and high - low > 0.2  # 8 episodes say little
    assert list(result).index("success_rate_ci95") == list(result).index("success_rate") + 1  # shown beside it


def test_wilson_interval_by_hand() -> None:
    # The textbook values: 5 of 10 gives 0.2366-0.7634; 0 of 10 still gives an upper bound (p ± z·SE gives 0-0).
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(180, 200) == pytest.approx((0.8506, 0.9343), abs=1e-4)
    for successes, trials in ((-1, 10), (11, 10), (0, 0)):
        with pytest.raises(ValueError, match="successes <= trials"):
            wilson_interval(successes, trials)
