"""Discounted reward-to-go over batch-major ``(B, L)`` sequences (tokens, turns or steps)."""

import torch
from torch import Tensor

__all__ = ["reward_to_go"]


def reward_to_go(rewards: Tensor, mask: Tensor | None = None, *, gamma: float = 1.0) -> Tensor:
    """G_t = Σ_{k ≥ t, k valid} γ^{(number of valid positions in [t, k))} r_k along the last dimension.

    Masked-out positions (e.g. observation tokens between turns) carry no reward and do not advance the discount:
    the return runs over the valid positions only. Each row is one episode. Masked positions come back as 0.
    """
    if not rewards.is_floating_point():  # integer rewards: a discounted return is not an integer
        rewards = rewards.to(torch.get_default_dtype())
    valid = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    if valid.shape != rewards.shape:
        raise ValueError(f"mask shape {tuple(valid.shape)} != rewards shape {tuple(rewards.shape)}")
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    if gamma == 1.0:
        returns = r.flip(-1).cumsum(-1).flip(-1)
        return torch.where(valid, returns, torch.zeros_like(returns))
    returns = torch.zeros_like(r)
    running = torch.zeros_like(r[..., 0])
    for t in range(r.shape[-1] - 1, -1, -1):
        running = torch.where(valid[..., t], r[..., t] + gamma * running, running)
        returns[..., t] = running
    return torch.where(valid, returns, torch.zeros_like(returns))
