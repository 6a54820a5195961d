"""SPA progress attribution for LLM policies: a linear head on the LM's hidden state at the end of each turn.

SPA-RL (Wang et al. 2025, arXiv 2505.20732) reads ĉ_t off the last token of each assistant turn. Here the head
reads a *frozen trunk*: the policy's own last hidden states, computed without gradients. That costs one forward
pass per batch and no second model, and the policy update is left alone (SPA's paper fine-tunes a full LM copy at
lr 3e-6, which doubles the memory and compute). A linear probe on fixed features is a convex regression and wants
a far larger step than a whole LM, hence `DEFAULT_HEAD_LR`. The replay buffer stores the features, not the
tokens: replayed episodes are not re-encoded, so their features come from the policy that played them (it moves
slowly at RL learning rates).

Plugs into the generic `creditgym.wrappers.progress.ProgressAttribution`:

    records = turn_features(policy, episodes)                 # trainer `Episode`s -> `TurnFeatures`
    spa = ProgressAttribution(LLMProgressHead(hidden_size), learning_rate=DEFAULT_HEAD_LR)
    spa.update(records)
    rewards = spa.step_rewards(records)                       # r_t = α·ĉ_t + β·g_t, one tensor per episode
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from creditgym.seeding import seeded_torch

if TYPE_CHECKING:
    from creditgym.agents.llm.policy import LLMPolicy
    from creditgym.agents.llm.rollout import Episode

#: Adam learning rate for the linear head (SPA's 3e-6 is for fine-tuning a whole LM).
DEFAULT_HEAD_LR = 1e-3


@dataclass
class TurnFeatures:
    """One episode as the progress head sees it: a feature vector per turn and the outcome label."""

    features: Tensor
    """(T, H) the LM's last hidden state at the last generated token of each turn"""
    valid: Tensor
    """(T,) bool: the env accepted the turn's action (SPA's grounding term g_t)"""
    outcome: float
    """the regression target: 1.0 for success, 0.0 otherwise"""

    def __len__(self) -> int:
        return int(self.valid.shape[0])


class LLMProgressHead(nn.Module):
    """ĉ_t = w·h_t + b on turn-final hidden states; zero-initialised, so every prediction starts at 0."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        with seeded_torch(None):  # the weights are zeroed anyway; leave the caller's RNG alone
            self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def contributions(self, episodes: Sequence[TurnFeatures]) -> Tensor:
        """ĉ of every turn, episode after episode: flat ``(Σ_i T_i,)``, differentiable."""
        weight = self.linear.weight
        features = torch.cat([e.features for e in episodes]).to(weight.device, weight.dtype)
        return self.linear(features).squeeze(-1)


@torch.no_grad()
def turn_end_hidden_states(policy: LLMPolicy, episodes: Sequence[Episode], *,
                           micro_batch_size: int = 8) -> list[Tensor]:
    """``(T_i, H)`` float32 CPU tensors: the last hidden state at the last generated token of each turn.

    Segments are scored as they were generated (right-padded rows), so each state has read the whole turn. The
    instructions every segment opens with run once per micro-batch (`LLMPolicy.shared_prefix_inputs`); how many
    tokens that is is fixed for the whole call, so a turn's features do not depend on the segments beside it.
    """
    from creditgym.agents.llm.policy import shared_prefix_length  # here: the LLM trainer imports this module

    decoder = policy.model.get_decoder()
    hidden_size = policy.model.config.hidden_size
    segments = [(e, seg) for e, episode in enumerate(episodes) for seg in episode.segments if seg.turn_ends]
    parts: list[list[Tensor]] = [[] for _ in episodes]
    shared = shared_prefix_length([seg.token_ids for _, seg in segments],
                                  limit=min((min(seg.turn_ends) for _, seg in segments), default=0))
    for start in range(0, len(segments), micro_batch_size):
        chunk = segments[start:start + micro_batch_size]
        width = max(len(seg.token_ids) for _, seg in chunk)
        input_ids = torch.full((len(chunk), width), policy.pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, seg) in enumerate(chunk):
            input_ids[row, :len(seg.token_ids)] = torch.tensor(seg.token_ids)
            attention[row, :len(seg.token_ids)] = 1
        input_ids, attention = input_ids.to(policy.device), attention.to(policy.device)
        prefix = policy.shared_prefix_inputs(input_ids, attention, shared)
        with policy.autocast():
            out = decoder(input_ids=input_ids[:, shared:], attention_mask=attention, **prefix)
        last = out.last_hidden_state.float().cpu()
        for row, (e, seg) in enumerate(chunk):
            parts[e].append(last[row, torch.tensor(seg.turn_ends) - shared])
    return [torch.cat(p) if p else torch.zeros(0, hidden_size) for p in parts]


def turn_features(policy: LLMPolicy, episodes: Sequence[Episode], *, micro_batch_size: int = 8) -> list[TurnFeatures]:
    """The trainer's episodes as SPA records: turn-end hidden states, valid = the env accepted the action,
    outcome = success (1.0 or 0.0)."""
    features = turn_end_hidden_states(policy, episodes, micro_batch_size=micro_batch_size)
    records = []
    for episode, feats in zip(episodes, features, strict=True):
        if feats.shape[0] != len(episode.turns):
            raise ValueError(f"episode has {len(episode.turns)} turns but {feats.shape[0]} turn ends in its segments")
        valid = torch.tensor([not turn.invalid for turn in episode.turns], dtype=torch.bool)
        records.append(TurnFeatures(feats, valid, float(episode.success)))
    return records

