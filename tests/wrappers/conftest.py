"""Fixtures shared by the wrapper tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from creditgym.wrappers.llm_reward import RewardSandbox

from .sandbox_programs import FAST


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One torch thread per test: two cores shared by parallel work collapse when oversubscribed."""
    torch.set_num_threads(1)


@pytest.fixture
def unvalidated() -> Iterator[RewardSandbox]:
    """A sandbox with static validation off, so escaped code (GADGET) reaches the process-level layers."""
    with RewardSandbox(limits=FAST, validate=False) as box:
        yield box
