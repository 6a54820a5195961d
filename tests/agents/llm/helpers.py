"""Small text envs and a trainer factory shared by the LLM trainer tests."""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from creditgym.agents.llm import LLMTrainConfig, LLMTrainer
from creditgym.llm import tiny_test_model


class LetterCountEnv(gym.Env):
    """Two turns; each pays the share of lower-case letters in the reply, so random replies get varied rewards."""

    metadata = {"render_modes": []}

    def __init__(self, turns: int = 2) -> None:
        self.turns = turns
        self.action_space = spaces.Text(max_length=1000, charset=string.printable)
        self.observation_space = spaces.Text(max_length=1000, charset=string.printable)
        self._t = 0

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        text = str(action)
        reward = sum(c in string.ascii_lowercase for c in text) / max(1, len(text))
        self._t += 1
        done = self._t >= self.turns
        info = {"reward_components": {"task": reward}, "success": reward > 0.5}
        return f"turn {self._t} of {self.turns}", reward, done, False, info

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return "turn 0", {"reward_components": {"task": 0.0}, "instructions": "write letters"}


def make_trainer(tmp_path: Any, *, resume: Any = None, **overrides: Any) -> LLMTrainer:
    settings: dict[str, Any] = dict(
        model="tiny", env_id="creditgym/Sanity-WordBandit-v0", iterations=2, num_groups=2, group_size=4,
        max_turns=3, max_new_tokens=4, learning_rate=1e-3, runs_dir=str(tmp_path), run_name="run", progress=False,
        tensorboard=False, checkpoint_every=0, device="cpu", micro_batch_size=3,
    )
    settings.update(overrides)
    model, tokenizer = tiny_test_model(seed=0)
    return LLMTrainer(LLMTrainConfig(**settings), model=model, tokenizer=tokenizer, make_env=LetterCountEnv,
                       resume=resume)


def igpo_dialogue_trainer(tmp_path: Any) -> LLMTrainer:
    """IGPO on Dialogue-Gather with a tiny model: one iteration of one group of two two-turn episodes (the config
    asks the env for the ground truth IGPO scores)."""
    model, tokenizer = tiny_test_model(seed=0)
    config = LLMTrainConfig(model="tiny", env_id="creditgym/Dialogue-Gather-v0", learned_reward="igpo",
                            advantage="turn", iterations=1, num_groups=1, group_size=2, max_turns=2, max_new_tokens=4,
                            runs_dir=str(tmp_path), run_name="igpo", progress=False, tensorboard=False,
                            checkpoint_every=0, device="cpu")
    return LLMTrainer(config, model=model, tokenizer=tokenizer)
