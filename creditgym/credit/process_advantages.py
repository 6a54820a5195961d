"""Advantages and turn rewards built from learned process signals: PRIME, OPRL / iStar and IGPO.

Token tensors are batch-major ``(B, L)`` (one row per episode, generated tokens only); per-step tensors are
``(B, S)`` with a validity mask, padded on the right; ``group_ids`` ``(B,)`` marks rollouts of the same task.
Formulas follow ``shared/reference/reward-methods.md``.
"""

import torch
from torch import Tensor

from .group import rloo_advantages
from .normalize import GroupIds, group_index, masked_whiten
from .placement import place_outcome_reward
from .returns import reward_to_go

__all__ = ["information_gain_rewards", "oprl_advantages", "prime_advantages"]


def prime_advantages(
    process_rewards: Tensor,
    reward_mask: Tensor,
    outcomes: Tensor,
    token_mask: Tensor,
    group_ids: GroupIds,
    *,
    process_coef: float = 5.0,
    outcome_coef: float = 5.0,
) -> Tensor:
    """PRIME (Cui et al. 2025, arXiv 2502.01456, eq. 5): token advantages ``(B, L)`` from implicit process rewards.

    ``process_rewards`` sit on ``reward_mask`` positions: every generated token (token granularity) or each
    step's last token (step granularity). ``outcomes`` ``(B,)`` are the verifiable episode rewards.

    1. Process rewards, leave-one-out: r_t − mean_{j≠i} m_j at each reward position, where m_j is episode j's
       mean process reward over its reward positions (the paper's r_φ(y^j)/|y^j|). An episode alone in its group
       is centred on its own mean.
    2. Outcome, leave-one-out: R_i − mean_{j≠i} R_j (RLOO; 0 for an episode alone in its group), on the last token.
    3. Sum, scaled by ``process_coef`` and ``outcome_coef`` (5 and 5 in PRIME's code); returns are the reverse
       cumulative sum with γ = 1; the result is whitened over every valid token of the batch.
    """
    valid = token_mask.to(torch.bool)
    positions = reward_mask.to(torch.bool) & valid
    rewards = torch.where(positions, process_rewards, torch.zeros_like(process_rewards))
    means = rewards.sum(-1) / positions.sum(-1).clamp_min(1)
    others_mean = means - rloo_advantages(means, group_ids)  # mean over the rest of the group; own mean if alone
    process = torch.where(positions, rewards - others_mean[:, None], torch.zeros_like(rewards))
    outcome = place_outcome_reward(rloo_advantages(outcomes.to(rewards.dtype), group_ids), valid)
    returns = reward_to_go(process_coef * process + outcome_coef * outcome, valid, gamma=1.0)
    return masked_whiten(returns, valid)


def oprl_advantages(
    step_rewards: Tensor,
    step_mask: Tensor,
    outcomes: Tensor,
    group_ids: GroupIds,
    *,
    step_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """OPRL / iStar (arXiv 2509.19199): per-step advantages A = A^E + w·A^S, returned with A^E and A^S.

    - A^E ``(B,)``: RLOO of the episode outcomes within each group, R_i·K/(K−1) − mean·K/(K−1).
    - A^S ``(B, S)``: RLOO of each valid step reward against *every* valid step of the same group
      (N steps: r·N/(N−1) − mean·N/(N−1)); the released code counts one step per trajectory, which the
      reference treats as a bug. Each sums to 0 over a group.
    - A ``(B, S)``: A^E broadcast to the episode's valid steps plus ``step_weight`` · A^S; 0 on padding.
    """
    valid = step_mask.to(torch.bool)
    episode_adv = rloo_advantages(outcomes.to(step_rewards.dtype), group_ids)
    groups, _ = group_index(group_ids, device=step_rewards.device)
    step_groups = groups[:, None].expand(valid.shape)
    step_adv = torch.zeros_like(step_rewards)
    step_adv[valid] = rloo_advantages(step_rewards[valid], step_groups[valid])
    combined = torch.where(valid, episode_adv[:, None] + step_weight * step_adv, torch.zeros_like(step_adv))
    return combined, episode_adv, step_adv


def information_gain_rewards(probabilities: Tensor, turn_mask: Tensor, outcomes: Tensor) -> Tensor:
    """IGPO (arXiv 2510.14967) turn rewards ``(B, T)``: r_t = p_{t+1} − p_t before the last turn, r_T = outcome.

    ``probabilities[b, t]`` is p_t, the policy's teacher-forced probability of the ground-truth answer given the
    history before turn t (t = 0: the first observation only). The gains telescope: the rewards of every turn but
    the last sum to p_{T−1} − p_0. ``outcomes`` ``(B,)`` go on each episode's last valid turn.
    """
    valid = turn_mask.to(torch.bool)
    following = torch.zeros_like(probabilities)
    following[:, :-1] = probabilities[:, 1:]
    has_next = torch.zeros_like(valid)
    has_next[:, :-1] = valid[:, 1:]
    gains = torch.where(valid & has_next, following - probabilities, torch.zeros_like(probabilities))
    return gains + place_outcome_reward(outcomes.to(probabilities.dtype), valid)
