"""LLM policies on text envs: batched multi-turn rollouts and GRPO / Dr.GRPO / RLOO / REINFORCE++ / PPO trainers.

Names import lazily, so the command line can read `LLMTrainConfig` without importing transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import ADVANTAGES, ALGOS, LLMTrainConfig

_LAZY = {
    "TokenBatch": "batch", "advantages": "batch", "pack_episodes": "batch",
    "Generation": "policy", "LLMPolicy": "policy",
    "Episode": "rollout", "RolloutCollector": "rollout", "Segment": "rollout", "Turn": "rollout",
    "LLMTrainer": "trainer", "episode_summary": "trainer", "make_text_env": "trainer",
}

__all__ = ["ADVANTAGES", "ALGOS", "LLMTrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
