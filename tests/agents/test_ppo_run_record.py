"""PPO's run record and numerics: the precision auto picks, a network independent of --threads, a NaN final
observation named as the env's, and a resume to a larger budget recorded."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from creditgym.agents import ppo
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.agents.vec import NonFiniteError


def _config(tmp_path, **overrides) -> PPOConfig:
    values = dict(num_envs=8, num_steps=16, total_steps=256, progress=False, tensorboard=False,
                  runs_dir=str(tmp_path), run_name="run", checkpoint_every=0)
    values.update(overrides)
    return PPOConfig(**values)


def test_auto_precision_picks_bfloat16_on_cpus_with_avx512_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    # AMD Zen 4/5 EPYC: no AMX, but native bf16 dot products; PPO ran 1.8-2x faster in bfloat16 there.
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": True})
    assert ppo.resolve_precision("auto", torch.device("cpu")) == "bfloat16"


def test_the_seed_gives_the_same_network_whatever_the_thread_count(tmp_path) -> None:
    # The orthogonal initialisers' QR rounds differently with 2 threads: 2e-3 apart after 6 updates
    nets = [PPO(_config(tmp_path, threads=n, run_name=f"t{n}")).agent.state_dict() for n in (1, 2)]
    torch.set_num_threads(1)
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])


class _NanFinalObs(gym.Env):
    observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        truncated = self.t >= 4
        return np.full(3, np.nan if truncated else 1.0, np.float32), 0.0, False, truncated, {}


def test_a_nan_final_observation_is_blamed_on_the_env_not_the_learning_rate(tmp_path) -> None:
    # It was blamed on the learning rate in the first update, before any optimiser step
    gym.register("test/NanFinal-v0", entry_point=_NanFinalObs)
    try:
        config = _config(tmp_path, env_id="test/NanFinal-v0", num_envs=4, num_steps=8, total_steps=64)
        with pytest.raises(NonFiniteError, match="final_obs") as error:
            PPO(config).learn()
        assert "learning-rate" not in str(error.value)
    finally:
        gym.registry.pop("test/NanFinal-v0")


def test_extending_an_annealed_run_is_recorded_in_its_run_record(tmp_path) -> None:
    PPO(_config(tmp_path, total_steps=256)).learn()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = PPO(_config(tmp_path, total_steps=512), resume=tmp_path / "run")
    resumed.learn()
    assert any("anneal_lr" in str(w.message) for w in caught)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["budget_changes"] == [{"update": 2, "from": 256, "to": 512}]
