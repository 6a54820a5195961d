"""Fixtures shared by the wrapper tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from creditgym.wrappers.llm_reward import RewardSandbox

from .sandbox_programs import FAST


@pytest.fixture
def unvalidated() -> Iterator[RewardSandbox]:
    """A sandbox with static validation off, so escaped code (GADGET) reaches the process-level layers."""
    with RewardSandbox(limits=FAST, validate=False) as box:
        yield box
