"""Group-relative episode advantages: GRPO, Dr.GRPO and RLOO.

``rewards`` is ``(B,)``, one outcome per episode; ``group_ids`` ``(B,)`` marks rollouts of the same task/seed;
``mask`` ``(B,)`` drops padding episodes from the statistics (they get 0). Broadcast the result to action tokens
with :func:`creditgym.credit.broadcast_to_tokens`.
"""

import torch
from torch import Tensor

from .normalize import GroupIds, _group_stats, group_normalize

__all__ = ["dr_grpo_advantages", "grpo_advantages", "rloo_advantages"]


def grpo_advantages(
    rewards: Tensor,
    group_ids: GroupIds,
    mask: Tensor | None = None,
    *,
    eps: float = 1e-6,
    unbiased: bool = True,
) -> Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300): A_i = (R_i − μ_G) / (σ_G + eps).

    Singleton group ⇒ 0. σ is the sample std by default as in verl/TRL; the paper does not name the estimator
    (unverified), ``unbiased=False`` gives the population std.
    """
    return group_normalize(rewards, group_ids, mask, scale_by_std=True, unbiased=unbiased, eps=eps)


def dr_grpo_advantages(rewards: Tensor, group_ids: GroupIds, mask: Tensor | None = None) -> Tensor:
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-like training", arXiv 2503.20783): A_i = R_i − μ_G, no std."""
    return group_normalize(rewards, group_ids, mask, scale_by_std=False)


def rloo_advantages(rewards: Tensor, group_ids: GroupIds, mask: Tensor | None = None) -> Tensor:
    """RLOO (Ahmadian et al. 2024, arXiv 2402.14740): A_i = R_i − mean_{j≠i} R_j = K/(K−1)·(R_i − μ_G).

    K counts the masked-in members of the group; singleton group ⇒ 0.
    """
    mean, _, counts, valid = _group_stats(rewards, group_ids, mask, unbiased=False)
    scale = counts / (counts - 1).clamp_min(1)
    out = (rewards.to(mean.dtype) - mean) * scale
    return torch.where(valid & (counts > 1), out, torch.zeros_like(out))
