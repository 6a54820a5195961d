"""LLM policies on text envs: batched multi-turn rollouts and GRPO / Dr.GRPO / RLOO / REINFORCE++ / PPO trainers."""

from .batch import TokenBatch, advantages, pack_episodes
from .config import ADVANTAGES, ALGOS, LLMTrainConfig
from .policy import Generation, LLMPolicy
from .rollout import Episode, RolloutCollector, Segment, Turn
from .trainer import LLMTrainer, episode_summary, make_text_env

__all__ = [
    "ADVANTAGES",
    "ALGOS",
    "Episode",
    "Generation",
    "LLMPolicy",
    "LLMTrainConfig",
    "LLMTrainer",
    "RolloutCollector",
    "Segment",
    "TokenBatch",
    "Turn",
    "advantages",
    "episode_summary",
    "make_text_env",
    "pack_episodes",
]
