"""Deal or No Deal for two players, in PettingZoo's module convention.

    from creditgym.envs.dialogue import negotiation_v0
    par_env = negotiation_v0.parallel_env()   # ParallelEnv
    aec_env = negotiation_v0.env()            # AEC, through pettingzoo's parallel_to_aec
"""

from __future__ import annotations

from pettingzoo import AECEnv
from pettingzoo.utils.conversions import parallel_to_aec

from creditgym.envs.dialogue.negotiation import NegotiationEnv, NegotiationRewards


def parallel_env(
    *, max_turns: int = 20, rewards: NegotiationRewards | None = None, render_mode: str | None = None
) -> NegotiationEnv:
    return NegotiationEnv(max_turns=max_turns, rewards=rewards, render_mode=render_mode)


def env(*, max_turns: int = 20, rewards: NegotiationRewards | None = None, render_mode: str | None = None) -> AECEnv:
    return parallel_to_aec(parallel_env(max_turns=max_turns, rewards=rewards, render_mode=render_mode))


raw_env = NegotiationEnv

__all__ = ["env", "parallel_env", "raw_env", "NegotiationEnv", "NegotiationRewards"]
