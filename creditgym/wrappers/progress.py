"""SPA-RL stepwise progress attribution (Wang et al. 2025, arXiv 2505.20732), for PPO and for LLM trainers.

A progress estimator predicts a contribution ĉ_t for every step; an episode's prediction is Σ_t ĉ_t, regressed
onto the episode outcome R with MSE, online between rollouts and over a replay buffer of recent episodes. The
step reward is r_t = α·ĉ_t + β·g_t, where g_t = 1 when the action was valid and changed the state (the paper's
weighted sum is unverified; its code uses α = 1 and a grounding reward of 0.5, i.e. β = 0.5). The reward goes
into the `progress` channel.

Two estimators:
- `GridProgressEstimator`, a small network over (array observation, action), for grid envs and PPO;
- an LLM head over turn-final hidden states (see `creditgym.wrappers.llm_progress`), for text envs.

Both only need `contributions(episodes) -> Tensor`: the flat ``(Σ_i L_i,)`` ĉ of every step, episode after
episode, differentiable. `ProgressAttribution` owns the loss, the optimiser and the replay buffer.

    >>> import torch
    >>> from creditgym.wrappers.learned import StepEpisode
    >>> spa = ProgressAttribution(GridProgressEstimator((4,), 2, hidden=8, seed=0), seed=0)
    >>> episode = StepEpisode(torch.ones(3, 4), torch.tensor([0, 1, 0]), torch.ones(3, dtype=torch.bool), True, 1.0)
    >>> metrics = spa.update([episode])
    >>> rewards = spa.step_rewards([episode])[0]
    >>> bool(torch.isclose(rewards.sum(), spa.predict([episode])[0], atol=1e-6))
    True
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from creditgym.credit import rloo_advantages
from creditgym.seeding import seeded_torch

from .learned import ReplayBuffer, StepEpisode, check_reward_precision, refuse_non_finite_step, sum_per_episode


class ProgressEstimator(Protocol):
    def contributions(self, episodes: list[Any]) -> Tensor: ...

    def parameters(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class GridProgressEstimator(nn.Module):
    """ĉ(s, a): an MLP over the flattened observation with one output per action, read at the action taken.

    One output per action (as a Q-network has) lets the last layer tell the moves apart; feeding a one-hot action
    into the first layer beside a large observation did not fit Sokoban outcomes at all (held-out explained
    variance below 0 on random play, against 0.87 for this head; docs/results.md).

    `seed` fixes the initial weights without touching the caller's RNG; None draws them from torch's global
    generator (seed it yourself, as `PPO` does). `precision` "bfloat16" runs the network under bfloat16 autocast
    (faster on CPUs with AMX and on GPUs; ĉ then differs by up to about 1e-2 relative), its outputs in float32.
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, *, hidden: int = 128,
                 seed: int | None = None, precision: str = "float32") -> None:
        super().__init__()
        check_reward_precision(precision)
        self.num_actions = num_actions
        self.bfloat16 = precision == "bfloat16"
        with seeded_torch(seed):
            self.net = nn.Sequential(nn.Linear(int(np.prod(obs_shape)), hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))
        # Σ ĉ starts near 0 for every episode instead of growing with its length.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        """ĉ for a batch of any leading shape: obs ``(..., *obs_shape)``, actions ``(...)`` -> ``(...)``."""
        lead = actions.shape
        with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            per_action = self.net(obs.reshape(actions.numel(), -1).float()).float()
        return per_action.gather(1, actions.reshape(-1, 1)).reshape(lead)

    def contributions(self, episodes: list[StepEpisode]) -> Tensor:
        device = self.net[0].weight.device
        obs = torch.cat([episode.obs for episode in episodes]).to(device)
        actions = torch.cat([episode.actions for episode in episodes]).to(device)
        return self(obs, actions)


class ProgressAttribution:
    """SPA's learned step rewards: trains `estimator` on outcomes, then pays r_t = α·ĉ_t + β·g_t.

    `update(episodes)` adds the newly finished episodes to the replay buffer (the `replay_episodes` most recent)
    and trains on `epochs` times as many episodes drawn from it, in minibatches of `batch_episodes`.
    `centered_outcome` regresses onto the leave-one-out-centred outcome R_i − mean_{j≠i} R_j of each minibatch
    instead of R, as SPA's released data script does (code ≠ paper; off by default). `beta` defaults to 0, which
    turns the grounding term off (SPA's code pays 0.5 per valid action): on a task whose episodes run until solved
    or cut, a per-step bonus also pays for merely long episodes; set it to use SPA's grounding.
    """

    channel = "progress"

    def __init__(self, estimator: ProgressEstimator, *, alpha: float = 1.0, beta: float = 0.0,
                 learning_rate: float = 1e-3, replay_episodes: int = 1024, batch_episodes: int = 64,
                 epochs: int = 1, max_grad_norm: float = 1.0, centered_outcome: bool = False, seed: int = 0) -> None:
        for name, value in (("alpha", alpha), ("beta", beta), ("learning_rate", learning_rate)):
            if not math.isfinite(value):
                raise ValueError(f"ProgressAttribution {name} must be a finite number, got {value}")
        if learning_rate <= 0 or batch_episodes < 1 or epochs < 1 or max_grad_norm <= 0:
            raise ValueError("learning_rate and max_grad_norm must be positive, batch_episodes and epochs at least 1")
        self.estimator = estimator
        self.alpha, self.beta = alpha, beta
        self.batch_episodes, self.epochs, self.max_grad_norm = batch_episodes, epochs, max_grad_norm
        self.centered_outcome = centered_outcome
        self.params = [p for p in estimator.parameters() if p.requires_grad]
        self.learning_rate = learning_rate
        self.optimizer = torch.optim.Adam(self.params, lr=learning_rate)
        self.replay = ReplayBuffer(replay_episodes)
        self.generator = torch.Generator().manual_seed(seed)

    # -- predictions ----------------------------------------------------------------------------------------
    def predict(self, episodes: list[Any]) -> Tensor:
        """``(E,)`` Σ_t ĉ_t per episode, the estimator's prediction of each outcome."""
        with torch.no_grad():
            return torch.stack([c.sum() for c in self.contributions(episodes)])

    def contributions(self, episodes: list[Any]) -> list[Tensor]:
        """ĉ of every step, one ``(L_i,)`` tensor per episode."""
        with torch.no_grad():
            flat = self.estimator.contributions(episodes)
        return list(flat.split([len(episode) for episode in episodes]))

    def step_rewards(self, episodes: list[Any]) -> list[Tensor]:
        """r_t = α·ĉ_t + β·g_t, one ``(L_i,)`` tensor per episode."""
        return [self.alpha * c + self.beta * episode.valid.to(c.device, c.dtype)
                for c, episode in zip(self.contributions(episodes), episodes, strict=True)]

    def dense_rewards(self, obs: Tensor, actions: Tensor, valid: Tensor) -> Tensor:
        """r_t for a trainer's rollout buffers of any leading shape (grid estimators only: they take (s, a))."""
        with torch.no_grad():
            return self.alpha * self.estimator(obs, actions) + self.beta * valid.float()

    # -- training --------------------------------------------------------------------------------------------
    def targets(self, episodes: list[Any], like: Tensor) -> Tensor:
        """``(E,)`` what Σ_t ĉ_t is regressed onto: the outcome, or its leave-one-out-centred form."""
        targets = torch.tensor([float(e.outcome) for e in episodes], dtype=like.dtype, device=like.device)
        if self.centered_outcome and len(episodes) > 1:
            targets = rloo_advantages(targets, torch.zeros(len(episodes), dtype=torch.long, device=like.device))
        return targets

    def _predictions_and_targets(self, episodes: list[Any]) -> tuple[Tensor, Tensor]:
        flat = self.estimator.contributions(episodes)
        return sum_per_episode(flat, [len(e) for e in episodes]), self.targets(episodes, flat)

    def loss(self, episodes: list[Any]) -> Tensor:
        """MSE between Σ_t ĉ_t and the outcome (or its leave-one-out-centred form), averaged over episodes."""
        predicted, targets = self._predictions_and_targets(episodes)
        return ((predicted - targets) ** 2).mean()

    def fit_report(self, episodes: list[Any]) -> dict[str, float]:
        """How well Σ_t ĉ_t predicts `episodes`, meant for ones the estimator has not trained on.

        `explained_variance` is 1 − MSE / Var(target): 0 for an estimator no better than predicting the mean
        outcome, whose step rewards are then noise rather than progress; 1 for a perfect one.
        """
        with torch.no_grad():
            predicted, targets = self._predictions_and_targets(episodes)
            mse = ((predicted - targets) ** 2).mean().item()
            variance = targets.var(unbiased=False).item()
        report = {f"{self.channel}/new_episode_mse": mse}
        if variance > 0:
            report[f"{self.channel}/explained_variance"] = 1.0 - mse / variance
        return report

    def update(self, episodes: list[Any]) -> dict[str, float]:
        """Add `episodes` to the replay buffer, then train on as many replayed episodes (times `epochs`).

        Returns `progress/mse`, the mean loss over the minibatches, and `fit_report` on the new episodes taken
        before training on them (a held-out measure), or nothing when no episode finished.
        """
        fresh = [episode for episode in episodes if len(episode)]
        report = self.fit_report(fresh) if fresh else {}
        losses = self.replay.train(fresh, batch_size=self.batch_episodes, epochs=self.epochs,
                                   generator=self.generator, step=self.train_step)
        if not losses:
            return {}
        return {f"{self.channel}/mse": float(np.mean(losses)),
                f"{self.channel}/replay_episodes": float(len(self.replay)), **report}

    def train_step(self, minibatch: list[Any]) -> float:
        """One optimiser step on `minibatch`'s loss; returns the loss.

        A non-finite loss or gradient raises `NonFiniteError` before the step, so the estimator keeps its weights.
        """
        loss = self.loss(minibatch)
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        value, norm = torch.stack([loss.detach(), grad_norm.to(loss.device)]).tolist()  # one sync, as .item() was
        refuse_non_finite_step("SPA's progress estimator", value, norm, self.learning_rate,
                               cause="its training diverged or its outcomes are not finite")
        self.optimizer.step()
        return value

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """For checkpoints (saved at once); as torch's own, its tensors are the live weights and optimiser moments,
        so a snapshot kept in memory while training goes on needs `copy.deepcopy`."""
        return {"estimator": self.estimator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "replay": list(self.replay.episodes), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.estimator.load_state_dict(state["estimator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.episodes = list(state["replay"])
        self.generator.set_state(state["generator"].cpu())
