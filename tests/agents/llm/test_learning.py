"""GRPO learns the two-armed word bandit: from chance (0.5) to at least 0.9 success within seconds on the CPU.

The tiny model is random, so a few supervised steps first teach it the format ("A" or "B", one each, for the
same prompt): it then answers at chance. Only the reward says that door B pays. If the advantage sign, the
mask alignment, the ratio or the optimiser step broke, success would stay near 0.5 or fall.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from creditgym.agents.llm import LLMPolicy, LLMTrainConfig, LLMTrainer, RolloutCollector
from creditgym.llm import tiny_test_model

ENV_ID = "creditgym/Sanity-WordBandit-v0"


def _teach_format(policy: LLMPolicy, steps: int = 30) -> None:
    env = gym.make(ENV_ID)
    obs, info = env.reset(seed=0)
    prompt = policy.chat_prompt([{"role": "system", "content": info["instructions"]}, {"role": "user", "content": obs}])
    tok = policy.tokenizer
    replies = [tok(letter, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for letter in "AB"]
    ids = torch.tensor([prompt + reply for reply in replies])
    action = torch.zeros(ids.shape)
    action[:, len(prompt):] = 1
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=3e-3)
    for _ in range(steps):
        logprobs, _ = policy.sequence_logprobs(ids, torch.ones_like(ids), action)
        loss = -(logprobs * action).sum() / action.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _success(policy: LLMPolicy, seed: int) -> float:
    envs = [gym.make(ENV_ID) for _ in range(64)]
    collector = RolloutCollector(envs, policy, group_size=8, max_turns=2, history_turns=1, max_prompt_tokens=512)
    episodes = collector.collect(list(range(seed, seed + 8)), generator=torch.Generator().manual_seed(seed))
    return float(np.mean([ep.success for ep in episodes]))


def test_grpo_learns_the_word_bandit(tmp_path: Path) -> None:
    model, tokenizer = tiny_test_model(seed=0)
    config = LLMTrainConfig(
        algo="grpo", model="tiny", env_id=ENV_ID, iterations=30, num_groups=8, group_size=8, max_turns=2,
        max_new_tokens=2, learning_rate=3e-4, num_minibatches=2, micro_batch_size=64, runs_dir=str(tmp_path),
        progress=False, tensorboard=False, checkpoint_every=0, device="cpu",
    )
    trainer = LLMTrainer(config, model=model, tokenizer=tokenizer)
    _teach_format(trainer.policy)
    before = _success(trainer.policy, seed=10_000)
    assert 0.3 <= before <= 0.7, f"after the format warm-up the policy should be at chance, got {before:.2f}"
    trainer.learn()
    after = _success(trainer.policy, seed=20_000)
    assert after >= 0.9, f"GRPO reached only {after:.2f} success (from {before:.2f})"
