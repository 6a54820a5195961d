"""Chat-model back ends (the `ChatModel` protocol in `chat.py`) and model loading.

The back ends import lazily: envs that only need the `ChatModel` protocol do not pay for importing transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from .chat import SAMPLING_KEYS, ChatModel, ChatModelError, check_sampling

_LAZY = {
    "HFChatModel": "hf",
    "OpenAIChatModel": "openai",
    "SMOLLM2": "models",
    "cache_dir": "models",
    "load_policy_model": "models",
    "tiny_test_model": "models",
}

__all__ = ["SAMPLING_KEYS", "ChatModel", "ChatModelError", "check_sampling", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
