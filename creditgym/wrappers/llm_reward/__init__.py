"""LLM-written reward code: static validation, a sandbox to run it in, and the `llm_reward` wrapper (issue 9)."""

from creditgym.wrappers.llm_reward.sandbox import RewardSandbox, SandboxLimits, SandboxResult
from creditgym.wrappers.llm_reward.validate import ValidationLimits, validate_program
from creditgym.wrappers.llm_reward.wrapper import LLMCodeReward

__all__ = ["LLMCodeReward", "RewardSandbox", "SandboxLimits", "SandboxResult", "ValidationLimits",
           "validate_program"]
