"""GiGPO: group-in-group step advantages (Feng et al. 2025, arXiv 2505.10978; verl-agent).

Episodes are rows of ``(N, T)`` step tensors with a ``(N, T)`` step mask; ``group_ids`` ``(N,)`` marks rollouts of
the same task. Step groups are the anchor states: steps with identical observations within one task group.
"""

from collections.abc import Callable, Hashable, Sequence
from difflib import SequenceMatcher
from typing import Any

import torch
from torch import Tensor

from .normalize import GroupIds, group_index, group_normalize
from .returns import reward_to_go

__all__ = ["anchor_step_groups", "gigpo_advantages", "text_similarity"]

Observations = Tensor | Sequence[Sequence[Any]]


def text_similarity(a: str, b: str) -> float:
    """``difflib.SequenceMatcher`` ratio in [0, 1], the similarity verl-agent uses for text observations."""
    return SequenceMatcher(None, a, b).ratio()


def _cluster(
    task: list[int], items: list[Any], similarity: Callable[[Any, Any], float], threshold: float
) -> list[int]:
    """Greedy clustering in step order: join the first cluster of the same task whose representative is similar."""
    representatives: dict[int, list[tuple[Any, int]]] = {}
    labels: list[int] = []
    next_label = 0
    for g, item in zip(task, items, strict=True):
        for rep, label in representatives.setdefault(g, []):
            if similarity(item, rep) >= threshold:
                labels.append(label)
                break
        else:
            representatives[g].append((item, next_label))
            labels.append(next_label)
            next_label += 1
    return labels


def anchor_step_groups(
    group_ids: GroupIds,
    observations: Observations,
    step_mask: Tensor,
    *,
    similarity: Callable[[Any, Any], float] | None = None,
    similarity_threshold: float = 0.95,
) -> Tensor:
    """Step-group id per step ``(N, T)``: equal (task group, observation) ⇒ equal id; −1 on masked steps.

    ``observations`` is a ``(N, T, ...)`` tensor (exact equality of the whole observation), or nested sequences
    ``observations[n][t]`` of hashable keys (e.g. text or precomputed hashes; only valid steps are read).
    With ``similarity`` (e.g. :func:`text_similarity`), a step joins the first earlier cluster of its task group
    whose first member scores ≥ ``similarity_threshold``, as verl-agent's ``enable_similarity`` does (unverified
    against the paper).
    """
    valid = step_mask.to(torch.bool)
    n, t = valid.shape
    task, _ = group_index(group_ids, device=valid.device)
    if task.numel() != n:
        raise ValueError(f"{task.numel()} group ids for {n} episodes")
    rows, cols = valid.nonzero(as_tuple=True)
    step_task = task[rows]
    out = torch.full((n, t), -1, dtype=torch.long, device=valid.device)
    if rows.numel() == 0:
        return out
    if similarity is None and isinstance(observations, Tensor):
        if tuple(observations.shape[:2]) != (n, t):
            raise ValueError(f"observations shape {tuple(observations.shape)} does not start with {(n, t)}")
        obs = observations.to(valid.device)[rows, cols].reshape(rows.numel(), -1)
        _, obs_id = torch.unique(obs, dim=0, return_inverse=True)
        _, labels = torch.unique(torch.stack([step_task, obs_id], dim=1), dim=0, return_inverse=True)
        out[rows, cols] = labels
        return out
    row_list, col_list, task_list = rows.tolist(), cols.tolist(), step_task.tolist()
    if isinstance(observations, Tensor):
        items: list[Any] = [observations[r, c] for r, c in zip(row_list, col_list, strict=True)]
    else:
        items = [observations[r][c] for r, c in zip(row_list, col_list, strict=True)]
    if similarity is None:
        mapping: dict[tuple[int, Hashable], int] = {}
        label_list = [mapping.setdefault((g, key), len(mapping)) for g, key in zip(task_list, items, strict=True)]
    else:
        label_list = _cluster(task_list, items, similarity, similarity_threshold)
    out[rows, cols] = torch.tensor(label_list, dtype=torch.long, device=valid.device)
    return out


def gigpo_advantages(
    step_rewards: Tensor,
    step_mask: Tensor,
    group_ids: GroupIds,
    observations: Observations,
    *,
    gamma: float = 0.95,
    omega: float = 1.0,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    episode_returns: Tensor | None = None,
    similarity: Callable[[Any, Any], float] | None = None,
    similarity_threshold: float = 0.95,
) -> Tensor:
    """GiGPO step advantages ``(N, T)``: A = A^E + ω·A^S, 0 on masked steps.

    A^E = (R − mean_group)[/std] over episodes of a task group, R = Σ_t r_t unless ``episode_returns`` is given.
    A^S = (G_t − mean_stepgroup)[/std] with G_t = Σ_{k≥t} γ^{k−t} r_k over the episode's valid steps and step
    groups from :func:`anchor_step_groups`; singleton step group ⇒ A^S = 0. ``scale_by_std`` switches both
    divisions (verl-agent's ``mean_std_norm`` / ``mean_norm``); std is the sample std as in verl-agent.
    """
    valid = step_mask.to(torch.bool)
    if step_rewards.shape != valid.shape or step_rewards.dim() != 2:
        raise ValueError(f"step_rewards {tuple(step_rewards.shape)} and step_mask {tuple(valid.shape)} must be (N, T)")
    if episode_returns is None:
        episode_returns = torch.where(valid, step_rewards, torch.zeros_like(step_rewards)).sum(-1)
    episode_adv = group_normalize(episode_returns, group_ids, scale_by_std=scale_by_std, eps=eps)
    step_groups = anchor_step_groups(
        group_ids, observations, valid, similarity=similarity, similarity_threshold=similarity_threshold
    )
    returns = reward_to_go(step_rewards, valid, gamma=gamma)
    step_adv = torch.zeros_like(returns)
    step_adv[valid] = group_normalize(returns[valid], step_groups[valid], scale_by_std=scale_by_std, eps=eps)
    out = episode_adv.unsqueeze(-1) + omega * step_adv
    return torch.where(valid, out, torch.zeros_like(out))
