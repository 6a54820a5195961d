"""Moving rewards and advantages between episode, turn and token level.

Token tensors are batch-major ``(B, L)``. A turn-end mask marks the last generated token of each assistant turn;
the k-th true position in a row is turn k. Per-turn tensors are ``(B, K)``, padded on the right.
"""

import torch
from torch import Tensor

__all__ = [
    "broadcast_to_tokens",
    "broadcast_turn_values",
    "gather_turn_values",
    "place_outcome_reward",
    "place_turn_rewards",
    "turn_end_mask",
    "turn_end_positions_to_mask",
]


def turn_end_mask(action_mask: Tensor) -> Tensor:
    """Last token of each run of action (assistant) tokens: action_mask_t ∧ ¬action_mask_{t+1} (end counts as ¬)."""
    m = action_mask.to(torch.bool)
    following = torch.zeros_like(m)
    following[..., :-1] = m[..., 1:]
    return m & ~following


def turn_end_positions_to_mask(positions: Tensor, seq_len: int) -> Tensor:
    """``(B, K)`` token positions of turn ends, padded with −1, to a ``(B, seq_len)`` boolean turn-end mask."""
    if positions.numel() and int(positions.max()) >= seq_len:
        raise ValueError(f"turn-end position {int(positions.max())} outside a sequence of length {seq_len}")
    valid = positions >= 0
    out = torch.zeros(positions.shape[0], seq_len + 1, dtype=torch.bool, device=positions.device)
    # Padding (−1) is sent to an extra column that is dropped.
    out.scatter_(1, torch.where(valid, positions, torch.full_like(positions, seq_len)), valid)
    return out[:, :seq_len]


def _turn_index(ends: Tensor) -> Tensor:
    """For each token, the index of the turn whose end is at or after it (number of ends strictly before it)."""
    counts = ends.to(torch.long).cumsum(-1)
    return counts - ends.to(torch.long)


def place_turn_rewards(turn_rewards: Tensor, turn_ends: Tensor, turn_mask: Tensor | None = None) -> Tensor:
    """Put ``turn_rewards[b, k]`` on the k-th end-of-turn token of row b and 0 on every other token.

    ``turn_ends`` is a ``(B, L)`` boolean mask. With ``turn_mask`` ``(B, K)`` each row must have exactly
    ``turn_mask[b].sum()`` ends; without it, at most K (trailing turn rewards are then ignored). Observation and
    padding tokens stay 0, so turn-level rewards feed straight into token-level returns.
    """
    ends = turn_ends.to(torch.bool)
    if ends.dim() != 2 or turn_rewards.dim() != 2 or ends.shape[0] != turn_rewards.shape[0]:
        raise ValueError(f"expected (B, L) turn_ends and (B, K) turn_rewards, got {tuple(ends.shape)} and "
                         f"{tuple(turn_rewards.shape)}")
    n_ends = ends.sum(-1)
    if turn_mask is None:
        n_turns = torch.full_like(n_ends, turn_rewards.shape[1])
        bad = n_ends > n_turns
    else:
        n_turns = turn_mask.to(device=n_ends.device, dtype=torch.bool).sum(-1)
        bad = n_ends != n_turns
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"row {row} has {int(n_ends[row])} turn ends but {int(n_turns[row])} turn rewards")
    if turn_rewards.shape[1] == 0:
        return torch.zeros(ends.shape, dtype=turn_rewards.dtype, device=turn_rewards.device)
    index = _turn_index(ends).clamp_max(turn_rewards.shape[1] - 1)
    values = turn_rewards.gather(1, index.to(turn_rewards.device))
    return torch.where(ends.to(values.device), values, torch.zeros_like(values))


def gather_turn_values(token_values: Tensor, turn_ends: Tensor, num_turns: int | None = None) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`place_turn_rewards`: ``(B, K)`` values at the end-of-turn tokens and their validity mask.

    K defaults to the largest number of turns in a row.
    """
    ends = turn_ends.to(torch.bool)
    counts = ends.sum(-1)
    if num_turns is None:
        num_turns = int(counts.max()) if counts.numel() else 0
    k = num_turns
    index = _turn_index(ends)
    keep = ends & (index < k)
    out = token_values.new_zeros(ends.shape[0], k + 1)
    # Positions that are not kept turn ends scatter into a dropped extra column.
    kept = torch.where(keep, token_values, torch.zeros_like(token_values))
    out.scatter_(1, torch.where(keep, index, torch.full_like(index, k)), kept)
    turn_mask = torch.arange(k, device=ends.device) < counts.unsqueeze(-1)
    return out[:, :k], turn_mask


def broadcast_turn_values(turn_values: Tensor, turn_ends: Tensor, action_mask: Tensor) -> Tensor:
    """Give every action token the value of its turn (the turn whose end is at or after it); other tokens 0.

    Turns are counted from ``turn_ends``; action tokens after the last turn end get 0.
    """
    ends = turn_ends.to(torch.bool)
    act = action_mask.to(torch.bool)
    index = _turn_index(ends)
    inside = act & (index < ends.sum(-1, keepdim=True)) & (index < turn_values.shape[1])
    if turn_values.shape[1] == 0:
        return torch.zeros(ends.shape, dtype=turn_values.dtype, device=turn_values.device)
    values = turn_values.gather(1, index.clamp_max(turn_values.shape[1] - 1))
    return torch.where(inside, values, torch.zeros_like(values))


def place_outcome_reward(rewards: Tensor, mask: Tensor) -> Tensor:
    """Put each episode's scalar reward ``rewards[b]`` on the last valid token of row b; 0 elsewhere."""
    m = mask.to(torch.bool)
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    last = torch.where(m, positions, torch.full_like(positions, -1)).amax(-1)
    ends = (positions == last.unsqueeze(-1)) & m
    r = rewards.unsqueeze(-1)
    return torch.where(ends, r, torch.zeros_like(r))


def broadcast_to_tokens(values: Tensor, mask: Tensor) -> Tensor:
    """Episode-level values ``(B,)`` copied to every valid token of ``(B, L)``; 0 on masked tokens."""
    m = mask.to(torch.bool)
    return torch.where(m, values.unsqueeze(-1), torch.zeros((), dtype=values.dtype, device=values.device))
