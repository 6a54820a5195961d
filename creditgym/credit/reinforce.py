"""REINFORCE++ (Hu 2025, arXiv 2501.03262): token-level returns with a KL penalty, globally whitened."""

from torch import Tensor

from .normalize import GroupIds, group_mean, masked_whiten
from .placement import place_outcome_reward
from .returns import reward_to_go

__all__ = ["reinforce_pp_advantages", "reinforce_pp_baseline_advantages"]


def reinforce_pp_advantages(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    whiten: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++: A_t = Σ_{i≥t} γ^{i−t} (r_i − β·KL_i), then (A − mean_batch) / std_batch over all valid tokens.

    ``token_rewards`` ``(B, L)`` hold the outcome on the last response token (see ``place_outcome_reward``) or
    turn rewards on end-of-turn tokens; ``kl`` ``(B, L)`` is the per-token estimate log π_old/π_ref and β =
    ``kl_coef``. The paper uses γ = 1. Masked tokens get 0 and do not advance the discount.
    """
    rewards = token_rewards if kl is None else token_rewards - kl_coef * kl
    returns = reward_to_go(rewards, mask, gamma=gamma)
    return masked_whiten(returns, mask, eps=eps) if whiten else returns


def reinforce_pp_baseline_advantages(
    outcome_rewards: Tensor,
    group_ids: GroupIds,
    mask: Tensor,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    whiten: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++-baseline: A' = R − mean_group(R) on the last token, then as ``reinforce_pp_advantages``.

    ``outcome_rewards`` ``(B,)``, ``group_ids`` ``(B,)``, ``mask`` ``(B, L)``. In the paper's baseline variant the
    KL term moves into the loss (k2 estimator), so ``kl`` defaults to None here; passing it keeps the token-level
    penalty in the reward as OpenRLHF allows (unverified against the paper).
    """
    centred = outcome_rewards - group_mean(outcome_rewards, group_ids)
    token_rewards = place_outcome_reward(centred, mask)
    return reinforce_pp_advantages(token_rewards, mask, kl=kl, kl_coef=kl_coef, gamma=gamma, whiten=whiten, eps=eps)
