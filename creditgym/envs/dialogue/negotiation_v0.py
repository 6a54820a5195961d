"""Deal or No Deal for two players, in PettingZoo's module convention.

    from creditgym.envs.dialogue import negotiation_v0
    par_env = negotiation_v0.parallel_env()   # ParallelEnv
    aec_env = negotiation_v0.env()            # AEC, turn-based: only the player to move is selected
"""

from __future__ import annotations

from collections.abc import Mapping

from creditgym.envs.dialogue.negotiation import NegotiationAECEnv, NegotiationEnv, NegotiationRewards


def parallel_env(
    *, max_turns: int | None = None, rewards: NegotiationRewards | Mapping[str, float] | None = None,
    render_mode: str | None = None, max_cycles: int | None = None,
) -> NegotiationEnv:
    """`max_cycles` is PettingZoo's name for `max_turns` (one parallel step is one turn); give either."""
    return NegotiationEnv(max_turns=_turns(max_turns, max_cycles), rewards=rewards, render_mode=render_mode)


def env(
    *, max_turns: int | None = None, rewards: NegotiationRewards | Mapping[str, float] | None = None,
    render_mode: str | None = None, max_cycles: int | None = None,
) -> NegotiationAECEnv:
    """Turn-based: each step is the selected player's move. `max_cycles` is `max_turns` here too (moves, not
    rounds of both players), so both views of one game end after the same moves."""
    return NegotiationAECEnv(max_turns=_turns(max_turns, max_cycles), rewards=rewards, render_mode=render_mode)


def _turns(max_turns: int | None, max_cycles: int | None) -> int:
    """The step limit (20 when neither is given)."""
    if max_turns is not None and max_cycles is not None and max_turns != max_cycles:
        raise ValueError(f"max_cycles={max_cycles!r} and max_turns={max_turns!r} disagree; give only one")
    for limit in (max_turns, max_cycles):
        if limit is not None:
            return limit
    return 20


raw_env = NegotiationAECEnv  # PettingZoo's convention: the unwrapped AEC class

__all__ = ["env", "parallel_env", "raw_env", "NegotiationAECEnv", "NegotiationEnv", "NegotiationRewards"]
