"""Hypothesis strategies and loop-based reference helpers shared by the credit tests."""

import math
import statistics

import torch
from hypothesis import settings
from hypothesis import strategies as st

# Applied per test rather than as a global profile, so other test packages keep their own settings.
quick = settings(max_examples=40, deadline=None, derandomize=True)

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)

# Group ids drawn from a sparse, unsorted set so contiguity or order cannot be assumed.
group_id = st.sampled_from([7, -3, 1000, 42, 5])


@st.composite
def grouped_rewards(
    draw: st.DrawFn, min_size: int = 1, max_size: int = 16
) -> tuple[list[int], list[float], list[bool]]:
    n = draw(st.integers(min_size, max_size))
    ids = draw(st.lists(group_id, min_size=n, max_size=n))
    rewards = draw(st.lists(finite, min_size=n, max_size=n))
    mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return ids, rewards, mask


@st.composite
def masked_matrix(
    draw: st.DrawFn, max_rows: int = 5, max_cols: int = 8, lo: float = -10, hi: float = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    b = draw(st.integers(1, max_rows))
    n = draw(st.integers(1, max_cols))
    vals = draw(st.lists(st.floats(lo, hi, allow_nan=False), min_size=b * n, max_size=b * n))
    mask = draw(st.lists(st.booleans(), min_size=b * n, max_size=b * n))
    return torch.tensor(vals, dtype=torch.float64).view(b, n), torch.tensor(mask).view(b, n)


def ref_group_norm(values: list[float], ids: list, valid: list[bool], *, std: bool, eps: float) -> list[float]:
    """(x − mean_g)[/(sample std_g + eps)] over valid members; singleton or masked ⇒ 0."""
    out = []
    for x, g, v in zip(values, ids, valid, strict=True):
        members = [y for y, h, w in zip(values, ids, valid, strict=True) if h == g and w]
        if not v or len(members) < 2:
            out.append(0.0)
            continue
        a = x - statistics.fmean(members)
        out.append(a / (statistics.stdev(members) + eps) if std else a)
    return out


def close(a: float, b: float, tol: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
