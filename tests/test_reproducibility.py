"""Reproducibility: seeds fix everything, randomness never comes from the global RNGs, and results do not depend on
PYTHONHASHSEED. Each test pins one place where that standard was broken or could silently break."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import creditgym
from creditgym.envs.dialogue.env import DialogueGatherEnv
from creditgym.envs.dialogue.simulator import LLMUser
from creditgym.envs.sokoban.vector import SokobanVectorEnv
from creditgym.envs.testing import ConformanceError, check_conformance
from creditgym.llm import tiny_test_model
from creditgym.llm.hf import HFChatModel
from creditgym.wrappers.learned import StepEpisode
from creditgym.wrappers.llm_reward.designer import DesignerConfig, RewardDesigner
from creditgym.wrappers.progress import GridProgressEstimator, ProgressAttribution

torch.set_num_threads(1)


# -- the conformance suite ------------------------------------------------------------------------------------
class _Env(gym.Env):
    """A tiny correct env: count up to 10 from a start drawn with np_random."""

    metadata = {"render_modes": []}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(0, 10, (1,), np.int64)
        self.action_space = gym.spaces.Discrete(2)
        self.count = 0

    def step(self, action):
        if self.count >= 10:
            raise RuntimeError("the count is done; call reset()")
        self.count = min(10, self.count + int(action))
        done = self.count >= 10
        return np.array([self.count]), float(done), done, False, {"reward_components": {"task": float(done)},
                                                                   "success": done}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count = self._start()
        info = {"reward_components": {"task": 0.0}, "success": False, "instructions": "count to ten"}
        return np.array([self.count]), info

    def _start(self) -> int:
        return int(self.np_random.integers(0, 8))


class _SeedsTheGlobalRNG(_Env):
    def _start(self) -> int:
        random.seed(int(self.np_random.integers(1 << 30)))  # the bug under test: reproducible, but global
        return random.randrange(8)


class _FreshGeneratorEachReset(_Env):
    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.np_random = np.random.default_rng(seed)  # the bug under test: reset() without a seed draws entropy
        self.count = self._start()
        return np.array([self.count]), info


def test_conformance_accepts_the_correct_env() -> None:
    check_conformance(_Env, num_steps=50)


def test_conformance_catches_an_env_that_uses_the_global_rng() -> None:
    with pytest.raises(ConformanceError, match="global RNG"):
        check_conformance(_SeedsTheGlobalRNG, num_steps=50)


def test_conformance_catches_a_seedless_reset_that_is_not_reproducible() -> None:
    with pytest.raises(ConformanceError, match="without a seed"):
        check_conformance(_FreshGeneratorEachReset, num_steps=50)


# -- envs -----------------------------------------------------------------------------------------------------
def test_sokoban_vector_env_keeps_its_np_random_across_seedless_resets() -> None:
    draws = []
    for _ in range(2):
        env = SokobanVectorEnv(2)
        env.reset(seed=3)
        env.reset()
        assert env.np_random_seed == 3
        draws.append(env.np_random.integers(1 << 30, size=4).tolist())
    assert draws[0] == draws[1]


def test_llm_user_replies_follow_the_env_seed_not_the_global_rng() -> None:
    model, tokenizer = tiny_test_model(seed=0)
    chat = HFChatModel(model, tokenizer, max_new_tokens=6, temperature=1.0)
    conversations = []
    for env_seed, global_seed in ((0, 0), (0, 1), (1, 0)):
        torch.manual_seed(global_seed)
        env = DialogueGatherEnv(simulator=LLMUser(chat))
        env.reset(seed=env_seed)
        conversations.append([env.step("What is your budget?")[0] for _ in range(3)])
    same_seed, other_global, other_seed = conversations
    assert same_seed == other_global
    assert same_seed != other_seed
    assert len(set(same_seed)) > 1  # each question samples anew


# -- learned rewards ------------------------------------------------------------------------------------------
def test_spa_estimator_weights_come_from_its_seed() -> None:
    episode = StepEpisode(torch.eye(4)[[0, 1, 2]], torch.tensor([0, 1, 0]), torch.ones(3, dtype=torch.bool), True,
                          1.0)
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        state = torch.random.get_rng_state()
        spa = ProgressAttribution(GridProgressEstimator((4,), 2, hidden=8, seed=0), seed=0)
        assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
        spa.update([episode])
        runs.append((spa.step_rewards([episode])[0], [p.detach().clone() for p in spa.estimator.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


# -- trainers -------------------------------------------------------------------------------------------------
def _trained_ppo(tmp_path: Path, global_seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    from creditgym.agents.ppo import PPO, PPOConfig

    torch.manual_seed(global_seed)
    state = torch.random.get_rng_state()
    config = PPOConfig(env_id="creditgym/Sokoban-6x6-1b-v0", num_envs=8, num_steps=16, total_steps=512, hidden=16,
                       learned_reward="spa", seed=3, progress=False, tensorboard=False, checkpoint_every=2,
                       runs_dir=str(tmp_path / str(global_seed)), run_name="run")
    PPO(config).learn(until_steps=256)
    PPO(config, resume=tmp_path / str(global_seed) / "run" / "checkpoint.pt").learn()
    assert torch.equal(torch.random.get_rng_state(), state), "the trainer moved the caller's torch generator"
    run = tmp_path / str(global_seed) / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    untimed = [{k: v for k, v in row.items() if "sps" not in k and not k.endswith("_s")} for row in rows]
    return torch.load(run / "checkpoint.pt", weights_only=False)["model"], untimed


def test_ppo_leaves_the_callers_torch_generator_alone_and_ignores_it(tmp_path: Path) -> None:
    (weights_a, rows_a), (weights_b, rows_b) = _trained_ppo(tmp_path, 0), _trained_ppo(tmp_path, 1)
    assert len(rows_a) == 4 and rows_a == rows_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_resume_keeps_the_precision_auto_chose_where_the_run_started(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from creditgym.agents.ppo import PPO, PPOConfig

    config = PPOConfig(env_id="creditgym/Sokoban-6x6-1b-v0", num_envs=8, num_steps=16, total_steps=512, hidden=16,
                       progress=False, tensorboard=False, runs_dir=str(tmp_path), run_name="run")
    first = PPO(config)
    first.learn(until_steps=256)
    started = json.loads((tmp_path / "run" / "config.json").read_text())["precision"]
    # A machine where auto resolves the other way (bfloat16 there needs AMX tiles on a CPU).
    has_amx = started == "float32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": has_amx})
    resumed = PPO(config, resume=tmp_path / "run")
    assert resumed.precision == started and resumed.agent.bfloat16 == (started == "bfloat16")
    resumed.learn()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == started
    assert PPO(config).precision != started  # a fresh run on this "machine" would have chosen otherwise


def _trained_llm(tmp_path: Path, global_seed: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    from tests.agents.llm.helpers import make_trainer

    torch.manual_seed(global_seed)
    state = torch.random.get_rng_state()
    trainer = make_trainer(tmp_path / str(global_seed), lora_rank=4)  # LoRA's initialiser draws at construction
    metrics = trainer.learn(until_iteration=1)
    trainer.save_checkpoint()
    resumed = make_trainer(tmp_path / str(global_seed), lora_rank=4,
                           resume=tmp_path / str(global_seed) / "run" / "checkpoint.pt")
    metrics = resumed.learn()
    assert torch.equal(torch.random.get_rng_state(), state), "the trainer moved the caller's torch generator"
    weights = {name: p.detach().clone() for name, p in resumed.policy.model.named_parameters() if p.requires_grad}
    return weights, {k: v for k, v in metrics.items() if not k.endswith("_s") and k != "charts/tokens_per_s"}


def test_llm_trainer_leaves_the_callers_torch_generator_alone_and_ignores_it(tmp_path: Path) -> None:
    (weights_a, metrics_a), (weights_b, metrics_b) = _trained_llm(tmp_path, 0), _trained_llm(tmp_path, 1)
    assert metrics_a == metrics_b
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_an_llm_run_records_its_model_and_warns_when_a_resume_loads_another(tmp_path: Path) -> None:
    from creditgym.agents.llm import LLMTrainConfig, LLMTrainer
    from creditgym.llm.models import weights_fingerprint
    from tests.agents.llm.helpers import LetterCountEnv, make_trainer

    trainer = make_trainer(tmp_path, iterations=2)
    trainer.learn(until_iteration=1)
    trainer.save_checkpoint()
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["model_weights"] == weights_fingerprint(tiny_test_model(seed=0)[0])
    assert record["transformers"] and record["torch"] == torch.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same model: no warning
        make_trainer(tmp_path, iterations=2, resume=tmp_path / "run")
    other, tokenizer = tiny_test_model(seed=1)  # the same shapes, other weights: it would load without a word
    assert weights_fingerprint(other) != record["model_weights"]
    config = LLMTrainConfig(**{**record["config"], "progress": False})
    with pytest.warns(UserWarning, match="not the one .* started from"):
        LLMTrainer(config, model=other, tokenizer=tokenizer, make_env=LetterCountEnv, resume=tmp_path / "run")


# -- run records ----------------------------------------------------------------------------------------------
class _NoCode:
    model = "no-code"

    def generate(self, batch, **sampling):
        return ["no program today"] * len(batch)


def test_reward_design_run_records_config_seed_and_version(tmp_path: Path) -> None:
    config = DesignerConfig(iterations=1, samples=1, critic=False, seed=7, runs_dir=str(tmp_path), run_name="run")
    RewardDesigner(_NoCode(), config).run()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["seed"] == 7 and report["creditgym"] == creditgym.__version__
    assert report["config"]["seed"] == 7 and report["config"]["samples"] == 1


# -- PYTHONHASHSEED ------------------------------------------------------------------------------------------
_HASH_SEED_SCRIPT = """
import json, sys
import gymnasium as gym, numpy as np, torch
torch.set_num_threads(1)
import creditgym
from creditgym.agents.llm import LLMTrainConfig, LLMTrainer
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.envs.testing import _actions
from creditgym.llm import tiny_test_model
from creditgym.trajectories import add_shaping, offline_potential, record_episodes, with_advantages

out = {}
for env_id in ("creditgym/Dialogue-Gather-v0", "creditgym/ToolUse-v1", "creditgym/Shop-v1",
               "creditgym/BabyAIText-GoToLocal-v0"):
    env = gym.make(env_id)
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=0)
    trace = [obs]
    for _ in range(40):
        obs, reward, terminated, truncated, info = env.step(_actions(env, info, rng))
        trace.append([obs, reward])
        if terminated or truncated:
            trace.append(env.reset()[0])
    out[env_id] = trace
env = gym.make("creditgym/Sokoban-6x6-1b-v0", obs_mode="text", max_episode_steps=10)
episodes = record_episodes(env, lambda obs, info: env.action_space.sample(), n=4, seed=0, group_size=2)
episodes = with_advantages([add_shaping(e, offline_potential("box_distance"), 0.9) for e in episodes], "grpo")
out["trajectories"] = [e.to_dict() for e in episodes]
config = PPOConfig(total_steps=256, num_envs=8, num_steps=16, hidden=16, seed=3, device="cpu", runs_dir=sys.argv[1],
                   run_name="ppo", progress=False, tensorboard=False, precision="float32", learned_reward="spa",
                   shaping="solver_distance")
ppo = PPO(config)
out["ppo_metrics"] = {k: v for k, v in ppo.learn().items() if k != "charts/sps"}
out["ppo"] = [p.tolist() for p in ppo.agent.parameters()]
model, tokenizer = tiny_test_model(seed=0)
llm = LLMTrainConfig(model="tiny", env_id="creditgym/Sanity-WordBandit-v0", iterations=1, num_groups=2, group_size=2,
                     max_turns=2, max_new_tokens=4, learning_rate=1e-3, seed=5, runs_dir=sys.argv[1], run_name="llm",
                     progress=False, tensorboard=False, checkpoint_every=0, device="cpu")
trainer = LLMTrainer(llm, model=model, tokenizer=tokenizer)
out["llm_metrics"] = {k: v for k, v in trainer.learn().items() if not k.endswith("_s") and "per_s" not in k}
out["llm"] = [p.tolist() for p in trainer.policy.model.parameters()]
print(json.dumps(out))
"""


def test_results_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", _HASH_SEED_SCRIPT, str(tmp_path / hash_seed)], env=env,
                              capture_output=True, text=True, timeout=120, check=True)
        outputs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert outputs[0].keys() == outputs[1].keys()
    for key in outputs[0]:
        assert outputs[0][key] == outputs[1][key], f"{key} depends on PYTHONHASHSEED"
