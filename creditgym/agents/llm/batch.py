"""Rollouts to training tensors, and advantages from `creditgym.credit`.

Two layouts of the same tokens:
- rows ``(R, L)``: one row per segment, right-padded, what the model scores;
- the episode view ``(E, A)``: each episode's generated tokens in order, observation tokens left out. Returns,
  reward-to-go and GAE run here, so a return crosses segment boundaries and skips observations.
Per-turn rewards sit on the last generated token of each turn (``turn_ends``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from creditgym.agents.vec import NonFiniteError
from creditgym.credit import (
    broadcast_to_tokens,
    broadcast_turn_values,
    dr_grpo_advantages,
    gae,
    gigpo_advantages,
    grpo_advantages,
    masked_whiten,
    place_turn_rewards,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    reward_to_go,
    rloo_advantages,
    turn_end_positions_to_mask,
)

from .config import LLMTrainConfig
from .policy import shared_row_prefix
from .rollout import Episode


@dataclass
class TokenBatch:
    input_ids: Tensor
    attention_mask: Tensor
    action_mask: Tensor
    """(R, L) float: 1 on generated tokens"""
    rollout_logprobs: Tensor
    """(R, L) logprobs recorded while sampling"""
    rows: Tensor
    """(N,) row of each generated token, in episode-view order"""
    positions: Tensor
    """(N,) position of each generated token in its row"""
    view_mask: Tensor
    """(E, A) bool: valid episode-view tokens (N in all)"""
    turn_ends: Tensor
    """(E, A) bool: last generated token of each turn"""
    turn_rewards: Tensor
    """(E, T) reward of each turn"""
    turn_mask: Tensor
    """(E, T) bool: valid turns"""
    returns: Tensor
    """(E,) undiscounted episode return"""
    group_ids: Tensor
    """(E,) task group of each episode"""
    terminated: Tensor
    """(E,) the env ended the episode (False: truncated or cut)"""
    observations: list[list[str]]
    """the observation each turn answered, per episode (GiGPO's anchor states)"""
    learned_advantages: Tensor | None = None
    """(E, A) advantages a learned reward model set (PRIME, OPRL); they replace `config.advantage`'s"""
    shared_prefix: int = 0
    """leading tokens every row has alike (the instructions): scoring runs them once for all rows"""
    next_prompts: list[list[int] | None] = field(default_factory=list)
    """per episode, the prompt after its last turn where it was cut and the collector kept it (PPO's bootstrap)"""
    old_scores: Any = None
    """`LLMTrainer.score` of the batch under the rollout policy, where a learned reward computed it already"""

    def to_view(self, row_values: Tensor) -> Tensor:
        out = torch.zeros(self.view_mask.shape, dtype=row_values.dtype, device=row_values.device)
        out[self.view_mask] = row_values[self.rows, self.positions]
        return out

    def to_rows(self, view_values: Tensor) -> Tensor:
        out = torch.zeros(self.input_ids.shape, dtype=view_values.dtype, device=view_values.device)
        out[self.rows, self.positions] = view_values[self.view_mask]
        return out


def played_episodes(episodes: list[Episode]) -> list[Episode]:
    """The episodes that played at least one turn. One whose first prompt was longer than max_prompt_tokens played
    none: it has no tokens to train, and counted in its group it would move the others' baselines like a failure.
    None played at all raises a ValueError that says what to change."""
    played = [episode for episode in episodes if episode.turns]
    if not played:
        raise ValueError("no episode generated a single token: every first prompt (instructions and observation) "
                         "was longer than max_prompt_tokens; raise --max-prompt-tokens or shorten the prompt")
    return played


def pack_episodes(episodes: list[Episode], pad_id: int, device: torch.device) -> TokenBatch:
    """Rows from every segment that holds generated tokens, and the episode view that maps onto them.

    A NaN or infinite turn reward raises `NonFiniteError`: every advantage of its group would be NaN (GRPO's
    normalisation turns those into 0, silently training on nothing).
    """
    for e, episode in enumerate(episodes):
        for t, turn in enumerate(episode.turns):
            if not math.isfinite(turn.reward):
                channels = [name for name, value in turn.reward_components.items() if not math.isfinite(value)]
                named = f" (reward channel {', '.join(map(repr, channels))})" if channels else ""
                raise NonFiniteError(
                    f"episode {e} (group {episode.group}, seed {episode.seed}) got reward {turn.reward} at turn {t}"
                    f"{named}; fix the env's reward, or wrap the env to replace NaN and inf rewards. Nothing was "
                    "trained on it")
    played_episodes(episodes)
    segments = [(e, seg) for e, episode in enumerate(episodes) for seg in episode.segments if any(seg.action_mask)]
    width = max(len(seg.token_ids) for _, seg in segments)
    input_ids = torch.full((len(segments), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(segments), width), dtype=torch.long)
    action = torch.zeros((len(segments), width))
    logprobs = torch.zeros((len(segments), width))
    rows: list[int] = []
    positions: list[int] = []
    lengths = [0] * len(episodes)
    turn_ends: list[list[int]] = [[] for _ in episodes]
    for r, (e, seg) in enumerate(segments):
        n = len(seg.token_ids)
        input_ids[r, :n] = torch.tensor(seg.token_ids)
        attention[r, :n] = 1
        action[r, :n] = torch.tensor(seg.action_mask, dtype=torch.float32)
        logprobs[r, :n] = torch.tensor(seg.logprobs)
        ends = set(seg.turn_ends)
        for p in (p for p, is_action in enumerate(seg.action_mask) if is_action):
            rows.append(r)
            positions.append(p)
            if p in ends:
                turn_ends[e].append(lengths[e])
            lengths[e] += 1
    for e, episode in enumerate(episodes):
        if len(turn_ends[e]) != len(episode.turns):  # each turn's reward goes on its own last generated token
            raise ValueError(f"episode {e} has {len(episode.turns)} turns but {len(turn_ends[e])} of them end on a "
                             "generated token; every turn needs at least one generated token")
    view_width = max(lengths)
    view_mask = torch.arange(view_width)[None, :] < torch.tensor(lengths)[:, None]
    num_turns = max(len(ends) for ends in turn_ends)
    end_positions = torch.full((len(episodes), num_turns), -1, dtype=torch.long)
    turn_rewards = torch.zeros((len(episodes), num_turns))
    for e, episode in enumerate(episodes):
        end_positions[e, :len(turn_ends[e])] = torch.tensor(turn_ends[e], dtype=torch.long)
        turn_rewards[e, :len(turn_ends[e])] = torch.tensor([t.reward for t in episode.turns[:len(turn_ends[e])]])
    turn_mask = end_positions >= 0
    return TokenBatch(
        input_ids=input_ids.to(device), attention_mask=attention.to(device), action_mask=action.to(device),
        rollout_logprobs=logprobs.to(device), rows=torch.tensor(rows, device=device),
        positions=torch.tensor(positions, device=device), view_mask=view_mask.to(device),
        turn_ends=turn_end_positions_to_mask(end_positions, view_width).to(device),
        turn_rewards=turn_rewards.to(device), turn_mask=turn_mask.to(device),
        returns=torch.tensor([ep.total_reward for ep in episodes], device=device),
        group_ids=torch.tensor([ep.group for ep in episodes], device=device),
        terminated=torch.tensor([ep.terminated for ep in episodes], device=device),
        observations=[[turn.observation for turn in ep.turns] for ep in episodes],
        next_prompts=[ep.next_prompt if not ep.terminated else None for ep in episodes],
        shared_prefix=shared_row_prefix(input_ids, attention, action),
    )


_GROUP_ESTIMATORS = {"grpo": grpo_advantages, "drgrpo": dr_grpo_advantages, "rloo": rloo_advantages}


def advantages(config: LLMTrainConfig, batch: TokenBatch, *, kl: Tensor | None = None,
               values: Tensor | None = None, bootstrap_values: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Episode-view advantages ``(E, A)`` for `config.algo` / `config.advantage`, plus value targets (ppo_llm).

    `kl` ``(E, A)`` is log π_old − log π_ref per token (the reward penalty of reinforce_pp and ppo_llm);
    `values` ``(E, A)`` the value head's estimates and `bootstrap_values` ``(E,)`` its estimate of the state after
    each cut episode's last turn, V(s_T) (ppo_llm).

    - GRPO family, `episode`: the group-relative advantage of the episode return on every token.
    - GRPO family, `turn`: with `turn_normalization` returns, each turn's reward-to-go (γ over turns),
      normalised against every turn of the same task group; with rewards (IGPO's order), each turn's reward
      normalised against every turn reward of the group, then summed to go. On that turn's tokens.
    - `gigpo`: GiGPO's episode plus anchor-state step advantage, on each turn's tokens.
    - reinforce_pp: `turn` gives token-level REINFORCE++ (turn rewards on end-of-turn tokens, KL penalty,
      reward-to-go, global whitening); `episode` gives REINFORCE++-baseline (group-centred outcome).
    - ppo_llm: GAE over generated tokens; an episode that was cut bootstraps from V(s_T) (`bootstrap_values`;
      without them, from its last token's value, which counts that turn's reward twice).
    - `batch.learned_advantages`, when a learned reward model (PRIME, OPRL) set them, replace all of the above.
    """
    mask, algo = batch.view_mask, config.algo
    if batch.learned_advantages is not None:
        return batch.learned_advantages, None
    if algo in _GROUP_ESTIMATORS and config.advantage == "episode":
        return broadcast_to_tokens(_GROUP_ESTIMATORS[algo](batch.returns, batch.group_ids), mask), None
    if algo in _GROUP_ESTIMATORS and config.advantage == "turn":
        def normalised(per_turn: Tensor) -> Tensor:  # against every valid turn of the same task group
            groups = batch.group_ids[:, None].expand_as(per_turn)
            out = torch.zeros_like(per_turn)
            out[batch.turn_mask] = _GROUP_ESTIMATORS[algo](per_turn[batch.turn_mask], groups[batch.turn_mask])
            return out

        if config.turn_normalization == "rewards":
            per_turn = reward_to_go(normalised(batch.turn_rewards), batch.turn_mask, gamma=config.gamma)
        else:
            per_turn = normalised(reward_to_go(batch.turn_rewards, batch.turn_mask, gamma=config.gamma))
        return broadcast_turn_values(per_turn, batch.turn_ends, mask), None
    if config.advantage == "gigpo":
        per_turn = gigpo_advantages(batch.turn_rewards, batch.turn_mask, batch.group_ids, batch.observations,
                                    gamma=config.gamma, omega=config.gigpo_omega, scale_by_std=algo == "grpo")
        return broadcast_turn_values(per_turn, batch.turn_ends, mask), None
    if algo == "reinforce_pp" and config.advantage == "episode":
        return reinforce_pp_baseline_advantages(batch.returns, batch.group_ids, mask, kl=kl, kl_coef=config.kl_coef,
                                                gamma=config.gamma), None
    token_rewards = place_turn_rewards(batch.turn_rewards, batch.turn_ends, batch.turn_mask)
    if algo == "reinforce_pp":
        return reinforce_pp_advantages(token_rewards, mask, kl=kl, kl_coef=config.kl_coef, gamma=config.gamma), None
    if values is None:
        raise ValueError("ppo_llm needs the value head's estimates")
    if kl is not None:
        token_rewards = token_rewards - config.kl_coef * kl * mask
    last = torch.zeros_like(mask)
    last[torch.arange(mask.shape[0], device=mask.device), mask.sum(-1) - 1] = True
    terminated = last & batch.terminated[:, None]
    truncated = last & ~batch.terminated[:, None]
    next_values = torch.zeros_like(values)
    next_values[:, :-1] = values[:, 1:]
    bootstrap = values if bootstrap_values is None else bootstrap_values[:, None].expand_as(values)
    next_values = torch.where(truncated, bootstrap, next_values)
    # gae runs time-major; the view's padding sits after each episode's done flag, so it never leaks back.
    adv, returns = gae(token_rewards.T, values.T, next_values.T, terminated.T, truncated.T, gamma=config.gamma,
                       lam=config.gae_lambda)
    return masked_whiten(adv.T, mask), returns.T * mask
