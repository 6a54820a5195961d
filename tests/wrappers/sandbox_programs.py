"""Programs and limits shared by the reward-sandbox tests."""

from __future__ import annotations

from creditgym.wrappers.llm_reward import SandboxLimits

HEAD = "def compute_dense_reward(state, action, next_state):\n"
FAST = SandboxLimits(cpu_seconds=1, wall_seconds=3.0, memory_bytes=256 << 20)
# For tests of the CPU limit: on a loaded machine 1 s of CPU can take more than FAST's 3 s of wall time.
CPU_BOUND = SandboxLimits(cpu_seconds=1, wall_seconds=30.0, memory_bytes=256 << 20)
# Escaped code: reaches the os module through object.__subclasses__(), as code past static validation would.
GADGET = HEAD + """    os = None
    for c in ().__class__.__base__.__subclasses__():
        if c.__name__ == '_wrap_close':
            os = c.__init__.__globals__
    if os is None:
        raise RuntimeError('gadget not found')
"""
