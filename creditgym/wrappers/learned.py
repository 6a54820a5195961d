"""What learned step-reward models (SPA, implicit PRM) share: finished episodes, a replay buffer, the PPO hook.

A learned reward model is trained online from outcome labels only. The trainer hands it the episodes that
finished since the last update (`update(episodes)`), then asks it for dense step rewards on the new rollout
(`dense_rewards(...)`), which it adds to the env reward under the model's channel. Its `state_dict()` goes into
the training checkpoint, replay buffer included, so a resumed run continues exactly.

`StepEpisode` is the record for array-observation envs (PPO); LLM trainers use their own episode records with
the same `outcome` and `valid` meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from creditgym.agents.vec import NonFiniteError


@dataclass
class StepEpisode:
    """One finished episode of an array env: what a step-reward model sees, and the outcome label it learns from."""

    obs: Tensor
    """(L, *obs_shape) the observation each action was taken in"""
    actions: Tensor
    """(L,) int64"""
    valid: Tensor
    """(L,) bool: the action was valid and changed the state (SPA's grounding term)"""
    success: bool
    outcome: float
    """the label the model regresses or classifies: 1.0/0.0 success by default"""
    reference_logprobs: Tensor | None = None
    """(L,) log π_ref(a_t | s_t) of an implicit PRM's frozen reference, scored once on the rollout (`EpisodeAssembler`)
    so that training on the replayed episode skips the reference's forward pass; None where it was not (SPA,
    episodes from older checkpoints)"""

    def __len__(self) -> int:
        return int(self.actions.shape[0])


class GridRewardModel(Protocol):
    """The hook PPO calls between rollouts (see `creditgym.agents.ppo`)."""

    channel: str

    def update(self, episodes: list[StepEpisode]) -> dict[str, float]: ...

    def dense_rewards(self, obs: Tensor, actions: Tensor, valid: Tensor) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ReplayBuffer:
    """The most recent `capacity` episodes (first in, first out), sampled with an explicit generator."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be at least 1 episode, got {capacity}")
        self.capacity = capacity
        self.episodes: list[Any] = []

    def add(self, episodes: list[Any]) -> None:
        self.episodes.extend(episodes)
        del self.episodes[:max(0, len(self.episodes) - self.capacity)]

    def minibatches(self, count: int, size: int, generator: torch.Generator) -> list[list[Any]]:
        """`count` minibatches of `size` distinct episodes each, drawn uniformly from the buffer.

        Trainers ask for as many episodes as just arrived (times the epochs), so the model's cost follows the
        new data, while replay keeps older episodes in the mix.
        """
        size = min(size, len(self.episodes))
        return [[self.episodes[i] for i in torch.randperm(len(self.episodes), generator=generator)[:size].tolist()]
                for _ in range(count)]

    def train(self, new_episodes: list[Any], *, batch_size: int, epochs: int, generator: torch.Generator,
              step: Any) -> list[float]:
        """Add `new_episodes`, then call `step(minibatch) -> loss` on ceil(new / batch_size) · epochs minibatches."""
        new_episodes = [e for e in new_episodes if len(e)]
        self.add(new_episodes)
        if not new_episodes:
            return []
        count = epochs * -(-len(new_episodes) // batch_size)
        losses = [step(minibatch) for minibatch in self.minibatches(count, batch_size, generator)]
        return [loss for loss in losses if loss is not None]

    def __len__(self) -> int:
        return len(self.episodes)


class EpisodeAssembler:
    """Cuts PPO's time-major rollout buffers into finished episodes; unfinished ones carry over to the next rollout.

    Truncated episodes are kept with outcome 0 unless they succeeded, since a time limit is a failure to solve
    (pass `keep_truncated=False` to learn from terminated episodes only).
    """

    def __init__(self, num_envs: int, *, keep_truncated: bool = True) -> None:
        self.num_envs = num_envs
        self.keep_truncated = keep_truncated
        self.pending: list[list[tuple[Tensor, ...]]] = [[] for _ in range(num_envs)]

    def add_rollout(self, obs: Tensor, actions: Tensor, valid: Tensor, terminated: Tensor, truncated: Tensor,
                    success: Tensor, reference_logprobs: Tensor | None = None) -> list[StepEpisode]:
        """Buffers are ``(T, N, ...)``; `success` ``(T, N)`` is read on the step an episode ends.

        `reference_logprobs` ``(T, N)`` (an implicit PRM's frozen reference, see `StepEpisode`) is cut with the
        rest; an episode gets it when every one of its steps has it.
        """
        done = (terminated | truncated).cpu()
        buffers = (obs, actions, valid) + (() if reference_logprobs is None else (reference_logprobs,))
        finished: list[StepEpisode] = []
        for n in range(self.num_envs):
            start = 0
            for t in done[:, n].nonzero().squeeze(1).tolist():
                self.pending[n].append(tuple(b[start:t + 1, n] for b in buffers))
                chunks, self.pending[n] = self.pending[n], []
                won = bool(success[t, n])
                if bool(truncated[t, n]) and not won and not self.keep_truncated:
                    start = t + 1
                    continue
                obs_n, actions_n, valid_n, *reference = _joined(chunks)
                finished.append(StepEpisode(obs=obs_n, actions=actions_n, valid=valid_n, success=won,
                                            outcome=float(won), reference_logprobs=reference[0] if reference else None))
                start = t + 1
            if start < obs.shape[0]:  # cloned: the trainer overwrites its rollout buffers
                self.pending[n].append(tuple(b[start:, n].clone() for b in buffers))
        return finished

    def state_dict(self) -> dict[str, Any]:
        return {"pending": self.pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state["pending"]


def _joined(chunks: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """The steps of an episode's chunks (one per rollout it spans) in one copy each; the reference log-probs only
    where every chunk has them (a chunk from an older checkpoint has none)."""
    width = min(len(chunk) for chunk in chunks)
    return tuple(torch.cat([chunk[i] for chunk in chunks]) for i in range(width))


REWARD_PRECISIONS = ("float32", "bfloat16")


def check_reward_precision(precision: str) -> None:
    if precision not in REWARD_PRECISIONS:
        raise ValueError(f"a learned reward model's precision must be float32 or bfloat16, got {precision!r}")


def episode_index(lengths: list[int], device: torch.device) -> Tensor:
    """``(sum(lengths),)`` the episode each step belongs to, for `index_add_` sums over steps."""
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))


def sum_per_episode(step_values: Tensor, lengths: list[int]) -> Tensor:
    """Σ over each episode's steps of a flat ``(sum(lengths),)`` tensor; differentiable."""
    index = episode_index(lengths, step_values.device)
    return torch.zeros(len(lengths), dtype=step_values.dtype, device=step_values.device).index_add(0, index,
                                                                                                  step_values)


def refuse_non_finite_step(model: str, loss: float, grad_norm: float, learning_rate: float, *,
                           cause: str = "its training diverged") -> None:
    """Raise `NonFiniteError` before an optimiser step on a non-finite loss or gradient, so the learned reward model
    (`model`, e.g. "the implicit PRM") keeps its weights."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise NonFiniteError(
            f"{model} has a non-finite loss ({loss}, gradient norm {grad_norm}): {cause}; lower its learning rate "
            f"(learning_rate {learning_rate:g}; --learned-reward-lr in creditgym train). It was not updated with it")
