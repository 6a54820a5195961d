"""Rollouts of the tiny random LM for the LLM reward-model tests: episodes and their packed token batch."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import torch

from creditgym.agents.llm import LLMPolicy, RolloutCollector
from creditgym.agents.llm.batch import TokenBatch, pack_episodes
from creditgym.agents.llm.rollout import Episode
from creditgym.llm import tiny_test_model


def collect(make_env: Callable[[], gym.Env], *, num_groups: int = 2, group_size: int = 4, max_turns: int = 3,
            max_new_tokens: int = 6, history_turns: int | None = 1,
            seed: int = 0) -> tuple[LLMPolicy, list[Episode], TokenBatch]:
    """With `history_turns=1` and 3 turns the history window slides, so episodes span several segments (rows)."""
    model, tokenizer = tiny_test_model(seed=0)
    policy = LLMPolicy(model, tokenizer, max_new_tokens=max_new_tokens)
    envs = [make_env() for _ in range(num_groups * group_size)]
    collector = RolloutCollector(envs, policy, group_size=group_size, max_turns=max_turns,
                                 history_turns=history_turns, max_prompt_tokens=8192)
    episodes = collector.collect(list(range(num_groups)), generator=torch.Generator().manual_seed(seed))
    return policy, episodes, pack_episodes(episodes, policy.pad_id, torch.device("cpu"))
