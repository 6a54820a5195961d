"""The `Text` space of every creditgym text env: gymnasium's, except that it refuses shared memory.

Gymnasium's `AsyncVectorEnv` reads its shared-memory buffer once, when it starts, and for a `Text` space that read
builds strings rather than a view of the buffer (gymnasium issue #1164), so every later observation comes back as
the first, all '0's. Plain `gymnasium.make_vec(id, vectorization_mode="async")` uses shared memory by default;
with this space it stops with an error that says what to pass instead of handing out those strings.
"""

from __future__ import annotations

import multiprocessing
from types import ModuleType
from typing import Any

from gymnasium import spaces
from gymnasium.vector.utils import create_shared_memory

from creditgym.vector import UnsafeVectorizationError


class TextSpace(spaces.Text):
    """`gymnasium.spaces.Text`, which gymnasium's vector envs cannot pass through shared memory."""


@create_shared_memory.register(TextSpace)
def _refuse_shared_memory(space: TextSpace, n: int = 1, ctx: ModuleType = multiprocessing) -> Any:
    raise UnsafeVectorizationError(
        "gymnasium's AsyncVectorEnv with shared memory returns every text observation as its first one, all '0's "
        "(gymnasium issue #1164). Use creditgym.make_vec(env_id, n, vectorization_mode='async'), or pass "
        "vector_kwargs={'shared_memory': False} to gymnasium.make_vec, or use vectorization_mode='sync'.")
