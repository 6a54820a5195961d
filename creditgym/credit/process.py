"""Process-reward transforms: PURE min-form weighting, Clip and Delta, the PAR sigmoid and implicit-PRM rewards.

Per-step tensors are ``(B, S)`` along the last dimension with an optional ``(B, S)`` validity mask; a token-level
tensor whose step rewards sit on end-of-step tokens works the same way with the end-of-step mask as ``mask``.
Masked entries come back as 0.
"""

from typing import Literal

import torch
from torch import Tensor

from .group import rloo_advantages
from .normalize import GroupIds, valid_mask
from .placement import place_outcome_reward, place_turn_rewards

__all__ = [
    "clip_rewards",
    "delta_rewards",
    "implicit_prm_score",
    "implicit_prm_step_rewards",
    "implicit_prm_token_rewards",
    "par_reward",
    "pure_min_form_rewards",
    "pure_min_form_weights",
]


def pure_min_form_weights(process_rewards: Tensor, mask: Tensor | None = None, *, temperature: float = 0.1) -> Tensor:
    """PURE (Cheng et al. 2025, "Stop summation", arXiv 2504.15275): w_t = softmax_t(−PR_t / T) over valid steps.

    Σ_t w_t = 1 in every row with a valid step (rows without one are all 0); Σ_t w_t·PR_t → min_t PR_t as T → 0.
    """
    valid = valid_mask(process_rewards, mask)
    logits = torch.where(valid, -process_rewards / temperature, torch.full_like(process_rewards, float("-inf")))
    weights = torch.softmax(logits, dim=-1)
    return torch.where(valid, weights, torch.zeros_like(weights))


def pure_min_form_rewards(
    process_rewards: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: float = 0.1,
    verifiable_rewards: Tensor | None = None,
    group_ids: GroupIds | None = None,
) -> Tensor:
    """PURE min-form credit: step rewards w_t·PR_t with w from :func:`pure_min_form_weights`.

    With ``verifiable_rewards`` ``(B,)`` (−1 or 0 in PURE), the verifiable reward is added on the last valid step,
    leave-one-out centred within ``group_ids`` (RLOO) when groups are given. Turn the result into returns with
    ``reward_to_go`` (γ = 1).
    """
    valid = valid_mask(process_rewards, mask)
    out = pure_min_form_weights(process_rewards, valid, temperature=temperature) * process_rewards
    out = torch.where(valid, out, torch.zeros_like(out))
    if verifiable_rewards is not None:
        vr = verifiable_rewards.to(out.dtype)
        if group_ids is not None:
            vr = rloo_advantages(vr, group_ids)
        out = out + place_outcome_reward(vr, valid)
    return out


def clip_rewards(rewards: Tensor, mask: Tensor | None = None, *, eta: float = 0.0) -> Tensor:
    """Clip (Gao et al. 2024, "On designing effective RL reward at training time", arXiv 2410.15115): r̃ = min(r − η, 0).

    Every r̃ ≤ 0, so repeating steps cannot earn reward. The paper tunes η per setting; the default η = 0 is
    ours (unverified).
    """
    valid = valid_mask(rewards, mask)
    out = torch.clamp_max(rewards - eta, 0.0)
    return torch.where(valid, out, torch.zeros_like(out))


def delta_rewards(rewards: Tensor, mask: Tensor | None = None) -> Tensor:
    """Delta (Gao et al. 2024, arXiv 2410.15115): r̃_k = r_k − r_{k+1} for k < K, r̃_K = r_K, over valid steps.

    The undiscounted return from any valid step k telescopes to r_k: Σ_{t≥k} r̃_t = r_k.
    """
    valid = valid_mask(rewards, mask)
    out = torch.zeros_like(rewards)
    following = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        v = valid[..., t]
        out[..., t] = torch.where(v, rewards[..., t] - following, torch.zeros_like(following))
        following = torch.where(v, rewards[..., t], following)
    return out


def par_reward(rewards: Tensor, reference_rewards: Tensor) -> Tensor:
    """PAR (Fu et al. 2025, "Reward shaping to mitigate reward hacking in RLHF", arXiv 2502.18770).

    r_RL = (1/M) Σ_m σ(r − r_ref,m). ``reference_rewards`` has the shape of ``rewards`` (M = 1) or that shape plus
    a trailing M dimension. Range (0, 1), 0.5 at r = r_ref, strictly increasing in r.
    """
    if reference_rewards.dim() == rewards.dim():
        reference_rewards = reference_rewards.unsqueeze(-1)
    return torch.sigmoid(rewards.unsqueeze(-1) - reference_rewards).mean(-1)


def implicit_prm_token_rewards(
    logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor | None = None, *, beta: float = 0.05
) -> Tensor:
    """Implicit PRM / PRIME token rewards (Yuan et al. 2024, arXiv 2412.01981; Cui et al. 2025, arXiv 2502.01456).

    r_t = β (log π_φ(y_t) − log π_ref(y_t)); 0 on masked tokens and everywhere when π_φ ≡ π_ref.
    """
    valid = valid_mask(logprobs, mask)
    out = beta * (logprobs - ref_logprobs)
    return torch.where(valid, out, torch.zeros_like(out))


def implicit_prm_step_rewards(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    step_ends: Tensor,
    mask: Tensor | None = None,
    *,
    beta: float = 0.05,
) -> Tensor:
    """Implicit PRM step rewards r^k = q^k − q^{k−1}, q^k = Σ_{i ≤ end of step k} β log π_θ(y_i)/π_ref(y_i).

    Returns a ``(B, L)`` tensor with r^k on the end token of step k (``step_ends``) and 0 elsewhere; tokens after
    the last step end belong to no step. Σ_k r^k = β log π_θ(y)/π_ref(y) when the last token ends a step.
    """
    tokens = implicit_prm_token_rewards(logprobs, ref_logprobs, mask, beta=beta)
    ends = step_ends.to(device=tokens.device, dtype=torch.long)
    # q^k − q^{k−1} is the sum of step k's own tokens: summed so, not as differences of a running float32 sum,
    # which lost 0.7% of a step's reward 32k tokens into a response.
    step_of = ends.cumsum(-1) - ends
    counts = ends.sum(-1)
    k = int(counts.max()) if counts.numel() else 0
    sums = tokens.new_zeros(tokens.shape[0], k + 1).scatter_add_(1, step_of.clamp(max=k), tokens)[:, :k]
    step_mask = torch.arange(k, device=tokens.device) < counts.unsqueeze(-1)  # tokens after the last end: no step
    rewards = torch.where(step_mask, sums, torch.zeros_like(sums))
    return place_turn_rewards(rewards, step_ends, step_mask)


def implicit_prm_score(
    step_rewards: Tensor, step_ends: Tensor, *, reduction: Literal["min", "sum", "mean"] = "min"
) -> Tensor:
    """Best-of-N response score from implicit-PRM step rewards: min over steps (sum or mean as options); 0 if none."""
    ends = step_ends.to(torch.bool)
    any_step = ends.any(-1)
    if reduction == "min":
        score = torch.where(ends, step_rewards, torch.full_like(step_rewards, float("inf"))).amin(-1)
    elif reduction == "sum":
        score = torch.where(ends, step_rewards, torch.zeros_like(step_rewards)).sum(-1)
    elif reduction == "mean":
        score = torch.where(ends, step_rewards, torch.zeros_like(step_rewards)).sum(-1) / ends.sum(-1).clamp_min(1)
    else:
        raise ValueError(f"reduction must be 'min', 'sum' or 'mean', got {reduction!r}")
    return torch.where(any_step, score, torch.zeros_like(score))
