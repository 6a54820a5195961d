"""Learned dense rewards in the LLM trainers: SPA, PRIME, OPRL and IGPO, selected by `LLMTrainConfig.learned_reward`.

Each hook runs between packing a batch of rollouts and the policy update (`apply(episodes, batch)`):

- `spa` and `igpo` add a reward to every turn (channels `progress` and `info_gain`). It goes into the turn's
  reward and `reward_components`, and into the batch's turn rewards, so it reaches the policy through the
  trainer's own turn-level advantages (`advantage="turn"` or `gigpo`).
- `prime` and `oprl` score the batch with an implicit PRM (channel `implicit_prm`, the per-turn sums, logged) and
  set the batch's advantages themselves: PRIME's leave-one-out, return and whitening, or OPRL's A^E + w·A^S.
  Their outcome is the env's episode return before the learned reward is added.

The reward models learn online from this batch's outcomes, then score it (PRIME's default order; the PRMs can
score first with `prm_update_first=False`). `state_dict()` goes into the trainer checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from creditgym.credit import broadcast_turn_values, oprl_advantages, place_turn_rewards, prime_advantages
from creditgym.wrappers.implicit_prm import LLMImplicitPRM
from creditgym.wrappers.info_gain import InformationGain
from creditgym.wrappers.llm_progress import DEFAULT_HEAD_LR, LLMProgressHead, turn_features
from creditgym.wrappers.progress import ProgressAttribution

from .batch import TokenBatch
from .config import LLMTrainConfig
from .rollout import Episode

if TYPE_CHECKING:
    from .trainer import LLMTrainer

#: The PRIME/OPRL PRM's learning rate (both papers).
DEFAULT_PRM_LR = 1e-6
#: PRIME's code scales the process and the outcome advantage by 5 each; only their ratio survives whitening.
PRIME_SCALE = 5.0


class LearnedReward(Protocol):
    channel: str

    def apply(self, episodes: list[Episode], batch: TokenBatch) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_learned_reward(config: LLMTrainConfig, trainer: LLMTrainer) -> LearnedReward | None:
    """The hook `config.learned_reward` names, or None."""
    if config.learned_reward is None:
        return None
    if config.learned_reward == "spa":
        return SPATurnRewards(config, trainer)
    if config.learned_reward == "igpo":
        return InformationGainTurnRewards(config, trainer)
    return ImplicitPRMAdvantages(config, trainer)


def add_turn_rewards(episodes: Sequence[Episode], batch: TokenBatch, channel: str, rewards: Sequence[Tensor]) -> None:
    """Add ``rewards[e][t]`` to turn t of episode e: its reward and `channel` component, and the batch's turn
    rewards and returns."""
    for e, (episode, episode_rewards) in enumerate(zip(episodes, rewards, strict=True)):
        if len(episode_rewards) != len(episode.turns):
            raise ValueError(f"episode {e} has {len(episode.turns)} turns but {len(episode_rewards)} learned rewards")
        for t, value in enumerate(episode_rewards.tolist()):
            turn = episode.turns[t]
            turn.reward += value
            turn.reward_components[channel] = turn.reward_components.get(channel, 0.0) + value
        count = len(episode_rewards)
        batch.turn_rewards[e, :count] += episode_rewards.to(batch.turn_rewards)
        batch.returns[e] += float(episode_rewards.sum())


class SPATurnRewards:
    """SPA: r_t = α·ĉ_t + β·g_t from a linear progress head on the policy's turn-final hidden states."""

    channel = "progress"

    def __init__(self, config: LLMTrainConfig, trainer: LLMTrainer) -> None:
        self.policy = trainer.policy
        self.micro_batch_size = config.micro_batch_size
        head = LLMProgressHead(self.policy.model.config.hidden_size).to(trainer.device)
        self.spa = ProgressAttribution(head, alpha=config.learned_reward_coef, beta=config.spa_grounding,
                                       learning_rate=config.learned_reward_lr or DEFAULT_HEAD_LR,
                                       replay_episodes=config.learned_reward_replay, epochs=config.spa_epochs,
                                       seed=config.seed)

    def apply(self, episodes: list[Episode], batch: TokenBatch) -> dict[str, float]:
        records = turn_features(self.policy, episodes, micro_batch_size=self.micro_batch_size)
        metrics = self.spa.update(records)
        add_turn_rewards(episodes, batch, self.channel, [r.cpu() for r in self.spa.step_rewards(records)])
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return self.spa.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spa.load_state_dict(state)


class InformationGainTurnRewards:
    """IGPO: each turn but the last earns coef·(p_{t+1} − p_t); the env's last-turn reward is the outcome."""

    channel = "info_gain"

    def __init__(self, config: LLMTrainConfig, trainer: LLMTrainer) -> None:
        self.gain = InformationGain(trainer.policy, coef=config.learned_reward_coef,
                                    history_turns=config.history_turns, micro_batch_size=config.micro_batch_size)

    def apply(self, episodes: list[Episode], batch: TokenBatch) -> dict[str, float]:
        probabilities = self.gain.answer_probabilities(episodes)
        add_turn_rewards(episodes, batch, self.channel, self.gain.gains(episodes, probabilities))
        first = [float(p[0]) for p in probabilities if len(p)]
        last = [float(p[-1]) for p in probabilities if len(p)]
        return {f"{self.channel}/p_first": sum(first) / max(1, len(first)),
                f"{self.channel}/p_last": sum(last) / max(1, len(last))}

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing learned: p_t comes from the policy itself

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ImplicitPRMAdvantages:
    """PRIME (cross-entropy PRM, token or step rewards) or OPRL (trajectory-DPO PRM, step rewards)."""

    channel = "implicit_prm"

    def __init__(self, config: LLMTrainConfig, trainer: LLMTrainer) -> None:
        self.config, self.trainer = config, trainer
        self.kind = config.learned_reward
        reference = config.prm_reference or ("initial" if self.kind == "prime" else "old")
        self.prm = LLMImplicitPRM(trainer.policy, beta=config.prm_beta, loss="ce" if self.kind == "prime" else "dpo",
                                  score=config.prm_score, reference=reference,
                                  learning_rate=config.learned_reward_lr or DEFAULT_PRM_LR,
                                  lora_rank=config.prm_lora_rank, micro_batch_size=config.micro_batch_size,
                                  seed=config.seed)

    def apply(self, episodes: list[Episode], batch: TokenBatch) -> dict[str, float]:
        cfg = self.config
        outcomes = batch.returns.clone()  # the env's return, before the learned reward is logged into the turns
        if self.prm.reference == "old":
            batch.old_scores = self.trainer.score(batch)  # the update's π_old as well: scored once
            ref = batch.old_scores.logprobs
        else:
            ref = self.prm.reference_logprobs(batch)
        success = torch.tensor([ep.success for ep in episodes], device=outcomes.device)
        logprobs = None if cfg.prm_update_first else self.prm.logprobs(batch)
        metrics = self.prm.update(batch, success, batch.group_ids, ref, logprobs=logprobs)
        if cfg.prm_update_first:
            logprobs = self.prm.logprobs(batch)
        step_rewards = self.prm.step_rewards(batch, ref, logprobs)
        if self.kind == "prime":
            if cfg.prime_granularity == "token":
                rewards, positions = self.prm.token_rewards(batch, ref, logprobs), batch.view_mask
            else:
                rewards = place_turn_rewards(step_rewards, batch.turn_ends, batch.turn_mask)
                positions = batch.turn_ends
            batch.learned_advantages = prime_advantages(
                rewards, positions, outcomes, batch.view_mask, batch.group_ids,
                process_coef=PRIME_SCALE * cfg.learned_reward_coef, outcome_coef=PRIME_SCALE)
        else:
            per_turn, _, _ = oprl_advantages(step_rewards, batch.turn_mask, outcomes, batch.group_ids,
                                             step_weight=cfg.learned_reward_coef)
            batch.learned_advantages = broadcast_turn_values(per_turn, batch.turn_ends, batch.view_mask)
        add_turn_rewards(episodes, batch, self.channel,
                         [step_rewards[e, :len(ep.turns)].cpu() for e, ep in enumerate(episodes)])
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return self.prm.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prm.load_state_dict(state)
