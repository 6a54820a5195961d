"""Generalised advantage estimation (Schulman et al. 2016, arXiv 1506.02438)."""

import torch
from torch import Tensor

__all__ = ["gae"]


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """GAE over time-major ``(T, N)`` tensors (any trailing shape works); returns ``(advantages, returns)``.

    ``next_values[t] = V(s_{t+1})`` where s_{t+1} is the true next state of step t (the final observation when
    the episode ended at t). Bootstraps on truncation, never on termination:
    δ_t = r_t + γ(1 − terminated_t)·next_values_t − values_t;
    A_t = δ_t + γλ(1 − (terminated_t | truncated_t))·A_{t+1}; returns = A + values.
    With V ≡ 0 and γ = λ = 1 this is the reward-to-go.
    """
    shape = rewards.shape
    for name, x in (("values", values), ("next_values", next_values), ("terminated", terminated),
                    ("truncated", truncated)):
        if x.shape != shape:
            raise ValueError(f"{name} shape {tuple(x.shape)} != rewards shape {tuple(shape)}")
    term = terminated.to(dtype=torch.bool)
    done = term | truncated.to(dtype=torch.bool)
    not_term = (~term).to(rewards.dtype)
    carry = (~done).to(rewards.dtype) * (gamma * lam)
    deltas = rewards + gamma * not_term * next_values - values
    advantages = torch.empty_like(deltas)
    last = deltas.new_zeros(shape[1:])
    for t in range(shape[0] - 1, -1, -1):
        last = deltas[t] + carry[t] * last
        advantages[t] = last
    return advantages, advantages + values
