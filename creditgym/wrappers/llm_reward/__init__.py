"""LLM-written reward code: static validation, a sandbox to run it in, the `llm_reward` wrappers and the designer."""

from creditgym.wrappers.llm_reward.sandbox import RewardSandbox, SandboxLimits, SandboxResult
from creditgym.wrappers.llm_reward.validate import ValidationLimits, validate_program
from creditgym.wrappers.llm_reward.wrapper import LLMCodeReward, VectorLLMCodeReward

__all__ = ["LLMCodeReward", "RewardSandbox", "SandboxLimits", "SandboxResult", "ValidationLimits",
           "VectorLLMCodeReward", "validate_program"]
