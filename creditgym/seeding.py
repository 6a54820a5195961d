"""Seeding torch's global generators for code that takes no generator of its own.

Module initialisers and Hugging Face's `generate` draw from torch's global generators. `seeded_torch` fixes what
they draw without changing what the caller's code draws afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded_torch(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Inside the block, the global generators of the CPU and of `device` start from `seed` (None: as they are);
    after it, both are back where they were. Other GPUs' generators are never touched."""
    device = torch.device(device)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
        yield
