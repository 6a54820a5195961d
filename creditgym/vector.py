"""Vector envs that are safe for text observations.

Gymnasium's `AsyncVectorEnv` passes observations through shared memory by default, and reads that memory once
at start: for `Text` spaces every later observation comes back as the first, all '0's, without any error
(gymnasium issue #1164; creditgym's own text envs use `creditgym.envs.text_space.TextSpace`, which refuses).
`make_vec` therefore picks `SyncVectorEnv`, or `AsyncVectorEnv(shared_memory=False)`, for any env whose
observation space contains a `Text` space, and refuses the unsafe combination with an error that says what to use
instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
from gymnasium import spaces
from gymnasium.envs.registration import VectorizeMode


class UnsafeVectorizationError(ValueError):
    """Asked for AsyncVectorEnv with shared memory on an env with Text observations."""


def has_text(space: spaces.Space) -> bool:
    """Whether `space` is, or contains, a `Text` space."""
    if isinstance(space, spaces.Text):
        return True
    if isinstance(space, spaces.Dict):
        return any(has_text(sub) for sub in space.spaces.values())
    if isinstance(space, spaces.Tuple | spaces.OneOf):
        return any(has_text(sub) for sub in space.spaces)
    if isinstance(space, spaces.Sequence):
        return has_text(space.feature_space)
    return False


def make_vec(
    env_id: str,
    num_envs: int = 1,
    *,
    vectorization_mode: str | None = None,
    shared_memory: bool | None = None,
    vector_kwargs: dict[str, Any] | None = None,
    wrappers: Sequence[Callable[[gym.Env], gym.Wrapper]] | None = None,
    **env_kwargs: Any,
) -> gym.vector.VectorEnv:
    """Like `gymnasium.make_vec`, but never corrupts text observations.

    For an env with `Text` in its observation space: `vectorization_mode=None` gives "sync";
    "async" gives `AsyncVectorEnv(shared_memory=False)`; asking for shared memory raises
    `UnsafeVectorizationError`. Other envs get gymnasium's defaults (their `vector_entry_point` if they
    have one, else "sync"), and `shared_memory` is passed to `AsyncVectorEnv` when given. Where the batched
    `vector_entry_point` cannot honour the arguments or wrappers (e.g. Sokoban's `obs_mode="rgb"`,
    `render_mode`), the default falls back to "sync" with a warning.

    >>> import creditgym
    >>> envs = creditgym.make_vec("creditgym/Dialogue-Gather-v0", 2)
    >>> type(envs).__name__
    'SyncVectorEnv'
    >>> envs.close()
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    vector_kwargs = dict(vector_kwargs or {})
    if shared_memory is not None:
        if vector_kwargs.get("shared_memory", shared_memory) != shared_memory:
            raise ValueError("shared_memory and vector_kwargs['shared_memory'] disagree; give it once")
        vector_kwargs["shared_memory"] = shared_memory
    probe = gym.make(env_id, disable_env_checker=True, **env_kwargs)
    for wrapper in wrappers or ():
        probe = wrapper(probe)
    text = has_text(probe.observation_space)
    probe.close()

    mode = None if vectorization_mode is None else VectorizeMode(vectorization_mode).value
    if mode is None and "shared_memory" in vector_kwargs:
        mode = "async"
    if text:
        if mode is None:
            mode = "sync"
        if mode == "async":
            if vector_kwargs.get("shared_memory", False):
                raise UnsafeVectorizationError(
                    f"{env_id} has Text observations, and gymnasium's AsyncVectorEnv with shared_memory=True "
                    "returns them all as '0's (gymnasium issue #1164). Use "
                    "creditgym.make_vec(..., vectorization_mode='async', shared_memory=False) or "
                    "vectorization_mode='sync'."
                )
            vector_kwargs["shared_memory"] = False
        elif mode == "vector_entry_point":
            raise UnsafeVectorizationError(
                f"{env_id} with these arguments has Text observations, which its vector_entry_point does not "
                "produce. Use vectorization_mode='sync' or 'async'."
            )
    if mode not in (None, "async") and "shared_memory" in vector_kwargs:
        raise ValueError("shared_memory only applies to vectorization_mode='async'")
    if mode is None and gym.spec(env_id).vector_entry_point is not None:
        mode = _batched_or_sync(env_id, num_envs, wrappers, env_kwargs)
    return gym.make_vec(
        env_id, num_envs, vectorization_mode=mode, vector_kwargs=vector_kwargs, wrappers=wrappers, **env_kwargs
    )


def _batched_or_sync(env_id: str, num_envs: int, wrappers: Sequence | None, env_kwargs: dict[str, Any]) -> str:
    """The env's batched implementation where it can honour the request, else one env per copy, with a warning."""
    if wrappers:
        why = "it cannot take per-env wrappers"
    else:
        try:
            gym.make_vec(env_id, 1, vectorization_mode="vector_entry_point", **env_kwargs).close()
            return "vector_entry_point"
        except (TypeError, ValueError) as error:
            why = str(error)
    warnings.warn(f"{env_id}: the batched vector env does not fit this request ({why}); using SyncVectorEnv, "
                  "which is much slower. Pass vectorization_mode='sync' to silence this.", stacklevel=3)
    return "sync"
