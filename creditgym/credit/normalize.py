"""Masked statistics, masked whitening (batch normalisation) and group normalisation.

Group ids are a 1-D tensor of any values (need not be contiguous or sorted) or a sequence of hashables, one per
row; rows sharing an id form a group. Masks are boolean (or 0/1) tensors; masked-out entries are ignored by every
statistic and come back as 0.
"""

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

GroupIds = Tensor | Sequence[Hashable]

__all__ = ["GroupIds", "group_index", "group_mean", "group_normalize", "masked_mean", "masked_var", "masked_whiten"]


def group_index(group_ids: GroupIds, *, device: torch.device | str | None = None) -> tuple[Tensor, int]:
    """Map arbitrary group ids to contiguous indices: returns ``(index, num_groups)`` with ``index`` in [0, G)."""
    if isinstance(group_ids, Tensor):
        if group_ids.dim() != 1:
            raise ValueError(f"group_ids must be 1-D, got shape {tuple(group_ids.shape)}")
        uniques, inverse = torch.unique(group_ids, return_inverse=True)
        return (inverse if device is None else inverse.to(device)), uniques.numel()
    mapping: dict[Hashable, int] = {}
    index = [mapping.setdefault(g, len(mapping)) for g in group_ids]
    return torch.tensor(index, dtype=torch.long, device=device), len(mapping)


def valid_mask(values: Tensor, mask: Tensor | None) -> Tensor:
    """`mask` as booleans on `values`' device (all true for None); a mask of another shape is refused."""
    if mask is None:
        return torch.ones_like(values, dtype=torch.bool)
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != values shape {tuple(values.shape)}")
    return mask.to(device=values.device, dtype=torch.bool)


def _floating(values: Tensor) -> Tensor:
    return values if values.is_floating_point() else values.to(torch.get_default_dtype())


def masked_mean(values: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over entries where ``mask`` is true (all entries, or along ``dim``); 0 when none are.

    A second pass adds the mean residual back, so equal values have exactly their value as mean (a one-pass float32
    mean of k copies of 0.97 is off by an ulp, which whitening then blows up to ±1)."""
    values = _floating(values)
    valid = valid_mask(values, mask)
    x = torch.where(valid, values, torch.zeros_like(values))
    n = valid.sum() if dim is None else valid.sum(dim)
    n = n.clamp_min(1)
    mean = (x.sum() if dim is None else x.sum(dim)) / n
    residual = torch.where(valid, values - (mean if dim is None else mean.unsqueeze(dim)), torch.zeros_like(values))
    return mean + (residual.sum() if dim is None else residual.sum(dim)) / n


def masked_var(values: Tensor, mask: Tensor | None = None, *, unbiased: bool = False) -> Tensor:
    """Variance over the masked entries: Σ m(x − μ)² / (n − ddof), ddof = 1 if ``unbiased`` else 0."""
    valid = valid_mask(values, mask)
    mean = masked_mean(values, valid)
    sq = torch.where(valid, (values - mean) ** 2, torch.zeros_like(values))
    return sq.sum() / (valid.sum() - int(unbiased)).clamp_min(1)


def masked_whiten(
    values: Tensor,
    mask: Tensor | None = None,
    *,
    shift_mean: bool = True,
    unbiased: bool = False,
    eps: float = 1e-8,
) -> Tensor:
    """Batch normalisation over all masked entries: (x − μ) / (σ + eps), μ and σ masked (population σ by default).

    Used for REINFORCE++'s global advantage normalisation and PRIME's whitening; ``shift_mean=False`` only
    rescales (adds μ back). Masked-out entries are 0.
    """
    values = _floating(values)
    valid = valid_mask(values, mask)
    mean = masked_mean(values, valid)
    denom = masked_var(values, valid, unbiased=unbiased).sqrt() + eps
    # Only an exact 0 is zeroed: NaN or inf statistics stay non-finite so callers' finite checks see them.
    out = torch.where(denom == 0, torch.zeros_like(values), (values - mean) / denom)
    if not shift_mean:
        out = out + mean
    return torch.where(valid, out, torch.zeros_like(out))


def _group_stats(
    values: Tensor, group_ids: GroupIds, mask: Tensor | None, unbiased: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-element group mean, std and count (as float) broadcast back to ``values``, plus the validity mask."""
    if values.dim() != 1:
        raise ValueError(f"values must be 1-D (one per group member), got shape {tuple(values.shape)}")
    values = _floating(values)
    valid = valid_mask(values, mask)
    index, num_groups = group_index(group_ids, device=values.device)
    if index.numel() != values.numel():
        raise ValueError(f"{index.numel()} group ids for {values.numel()} values")
    w = valid.to(values.dtype)
    counts = values.new_zeros(num_groups).index_add_(0, index, w)
    x = torch.where(valid, values, torch.zeros_like(values))  # masked NaN/inf must not reach the sums
    sums = values.new_zeros(num_groups).index_add_(0, index, x)
    mean = sums / counts.clamp_min(1)
    # Second pass: equal members get exactly their value as mean, so zero-variance groups centre to exactly 0.
    mean = (mean + values.new_zeros(num_groups).index_add_(0, index, x - mean[index] * w) / counts.clamp_min(1))[index]
    sq = values.new_zeros(num_groups).index_add_(0, index, torch.where(valid, (values - mean) ** 2, 0.0))
    std = (sq / (counts - int(unbiased)).clamp_min(1)).sqrt()[index]
    return mean, std, counts[index], valid


def group_mean(values: Tensor, group_ids: GroupIds, mask: Tensor | None = None) -> Tensor:
    """Mean of the masked members of each element's group, broadcast back to the elements (0 where masked)."""
    mean, _, _, valid = _group_stats(values, group_ids, mask, unbiased=False)
    return torch.where(valid, mean, torch.zeros_like(mean))


def group_normalize(
    values: Tensor,
    group_ids: GroupIds,
    mask: Tensor | None = None,
    *,
    scale_by_std: bool = True,
    unbiased: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Group normalisation (x_i − μ_g) / (σ_g + eps), or x_i − μ_g with ``scale_by_std=False``.

    Statistics use only masked members; singleton groups give 0; masked entries are 0. σ is the sample (unbiased)
    std by default, as in verl and TRL; the GRPO paper does not name the estimator (unverified), so
    ``unbiased=False`` gives the population std.
    """
    mean, std, _, valid = _group_stats(values, group_ids, mask, unbiased=unbiased)
    out = _floating(values) - mean
    if scale_by_std:
        denom = std + eps
        # Zero-variance groups with eps = 0 give 0 rather than 0/0; NaN stays NaN.
        out = torch.where(denom == 0, torch.zeros_like(out), out / denom)
    return torch.where(valid, out, torch.zeros_like(out))
