"""Implicit process rewards: PRIME (Cui et al. 2025, arXiv 2502.01456) and OPRL / iStar (arXiv 2509.19199).

A process reward model π_φ is a policy-shaped network; its step (or token) reward is the log-ratio against a
frozen reference, r_t = β (log π_φ(a_t | s_t) − log π_ref(a_t | s_t)), so Σ_t r_t = β log π_φ(τ)/π_ref(τ) is an
outcome score and r_t its dense decomposition (Yuan et al. 2024, "Free process rewards without process labels").
π_φ learns from outcome labels only:

- PRIME: cross-entropy, BCE(σ(β Σ_t log π_φ/π_ref), success) (`outcome_ce_loss`);
- OPRL: trajectory DPO over (success, failure) pairs of the same group,
  −log σ(β log π_φ(τ+)/π_ref(τ+) − β log π_φ(τ−)/π_ref(τ−)) (`trajectory_dpo_loss`).

The losses here are shared by the small-network PRM for PPO (`GridImplicitPRM`) and the LLM PRMs.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from creditgym.credit import implicit_prm_token_rewards

from .learned import ReplayBuffer, StepEpisode, sum_per_episode

PRM_LOSSES = ("ce", "dpo")


def outcome_ce_loss(log_ratio_sums: Tensor, success: Tensor, *, beta: float) -> Tensor:
    """PRIME's PRM loss: BCE(σ(β Σ_t log π_φ/π_ref), success), averaged over episodes. log 2 when π_φ ≡ π_ref."""
    return nn.functional.binary_cross_entropy_with_logits(beta * log_ratio_sums, success.to(log_ratio_sums.dtype))


def success_failure_pairs(success: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Every (success, failure) index pair within each group: OPRL's DPO pairs. Empty when no group is mixed."""
    same_group = group_ids[:, None] == group_ids[None, :]
    pairs = (same_group & success.bool()[:, None] & ~success.bool()[None, :]).nonzero()
    return pairs[:, 0], pairs[:, 1]


def trajectory_dpo_loss(chosen_log_ratios: Tensor, rejected_log_ratios: Tensor, *, beta: float) -> Tensor:
    """−log σ(β (log π_φ/π_ref(τ+) − log π_φ/π_ref(τ−))), averaged over pairs; log 2 when π_φ ≡ π_ref."""
    return -nn.functional.logsigmoid(beta * (chosen_log_ratios - rejected_log_ratios)).mean()


class GridImplicitPRM:
    """An implicit PRM for PPO on grid envs: a small policy network π_φ(a | s) against its own frozen start, π_ref.

    Step reward (channel `implicit_prm`): `coef` · β (log π_φ(a_t|s_t) − log π_ref(a_t|s_t)); 0 before any update.
    `loss` is `ce` (PRIME) or `dpo` (OPRL: pairs a success with a failure; with no groups in PPO every finished
    episode of a minibatch is in one group). Trained online over a replay buffer of recent episodes.
    `score` is `sum` (the papers) or `mean` (the OPRL code's mean step score) for DPO's trajectory score.
    """

    channel = "implicit_prm"

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, *, hidden: int = 128, beta: float = 0.05,
                 coef: float = 1.0, loss: str = "ce", score: str = "sum", learning_rate: float = 1e-3,
                 replay_episodes: int = 1024, batch_episodes: int = 64, epochs: int = 1, max_grad_norm: float = 1.0,
                 seed: int = 0) -> None:
        if loss not in PRM_LOSSES:
            raise ValueError(f"implicit PRM loss must be one of {PRM_LOSSES}, got {loss!r}")
        if score not in ("sum", "mean"):
            raise ValueError(f"trajectory score must be 'sum' or 'mean', got {score!r}")
        if not (beta > 0 and math.isfinite(beta) and math.isfinite(coef) and learning_rate > 0):
            raise ValueError("beta and learning_rate must be positive and coef finite")
        with torch.random.fork_rng(devices=[]):  # the PRM's own initial weights, leaving the caller's RNG alone
            torch.manual_seed(seed)
            self.network = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(obs_shape)), hidden), nn.Tanh(),
                                         nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_actions))
        self.reference = copy.deepcopy(self.network).requires_grad_(False)
        self.beta, self.coef, self.loss_kind, self.score = beta, coef, loss, score
        self.batch_episodes, self.epochs, self.max_grad_norm = batch_episodes, epochs, max_grad_norm
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=learning_rate)
        self.replay = ReplayBuffer(replay_episodes)
        self.generator = torch.Generator().manual_seed(seed)

    def to(self, device: torch.device) -> GridImplicitPRM:
        self.network.to(device)
        self.reference.to(device)
        return self

    def log_ratios(self, obs: Tensor, actions: Tensor) -> Tensor:
        """log π_φ(a|s) − log π_ref(a|s) for a batch of any leading shape (differentiable through π_φ)."""
        lead = actions.shape
        flat_obs = obs.reshape(actions.numel(), *obs.shape[len(lead):]).float()
        flat_actions = actions.reshape(-1, 1)
        logp = torch.log_softmax(self.network(flat_obs), -1).gather(1, flat_actions).squeeze(1)
        with torch.no_grad():
            ref = torch.log_softmax(self.reference(flat_obs), -1).gather(1, flat_actions).squeeze(1)
        return (logp - ref).reshape(lead)

    def dense_rewards(self, obs: Tensor, actions: Tensor, valid: Tensor) -> Tensor:
        with torch.no_grad():
            ratio = self.log_ratios(obs, actions)
            return self.coef * implicit_prm_token_rewards(ratio, torch.zeros_like(ratio), beta=self.beta)

    def step_rewards(self, episodes: list[StepEpisode]) -> list[Tensor]:
        """One ``(L_i,)`` tensor of step rewards per episode; Σ_t r_t = coef · β log π_φ(τ)/π_ref(τ)."""
        device = next(self.network.parameters()).device
        return [self.dense_rewards(e.obs.to(device), e.actions.to(device), e.valid) for e in episodes]

    def loss(self, episodes: list[StepEpisode]) -> Tensor:
        device = next(self.network.parameters()).device
        lengths = [len(e) for e in episodes]
        ratios = self.log_ratios(torch.cat([e.obs for e in episodes]).to(device),
                                 torch.cat([e.actions for e in episodes]).to(device))
        sums = sum_per_episode(ratios, lengths)
        success = torch.tensor([float(e.outcome) for e in episodes], device=device)
        if self.loss_kind == "ce":
            return outcome_ce_loss(sums, success, beta=self.beta)
        scores = sums / torch.tensor(lengths, device=device) if self.score == "mean" else sums
        chosen, rejected = success_failure_pairs(success > 0.5, torch.zeros(len(episodes), device=device))
        if not len(chosen):
            return sums.detach().sum() * 0.0  # a minibatch of only successes or only failures has no pair
        return trajectory_dpo_loss(scores[chosen], scores[rejected], beta=self.beta)

    def update(self, episodes: list[StepEpisode]) -> dict[str, float]:
        """Add `episodes` to the replay buffer, then train on as many replayed episodes (times `epochs`)."""
        losses = self.replay.train(episodes, batch_size=self.batch_episodes, epochs=self.epochs,
                                   generator=self.generator, step=self._step)
        if not losses:
            return {}
        return {f"{self.channel}/loss": float(np.mean(losses)),
                f"{self.channel}/replay_episodes": float(len(self.replay))}

    def _step(self, minibatch: list[StepEpisode]) -> float | None:
        loss = self.loss(minibatch)
        if not loss.requires_grad:  # no (success, failure) pair to learn from
            return None
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.network.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return loss.item()

    def state_dict(self) -> dict[str, Any]:
        return {"network": self.network.state_dict(), "reference": self.reference.state_dict(),
                "optimizer": self.optimizer.state_dict(), "replay": list(self.replay.episodes),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.reference.load_state_dict(state["reference"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.episodes = list(state["replay"])
        self.generator.set_state(state["generator"].cpu())
