"""ToolUse: questions that need dependent tool calls, with reference plans and the ToolRL reward."""
