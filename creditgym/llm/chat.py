"""The chat-model protocol every LLM back end implements: local transformers, vLLM and OpenAI-compatible servers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, Protocol, runtime_checkable

#: Sampling parameters every back end understands; a back end rejects any other key instead of ignoring it.
SAMPLING_KEYS = frozenset({"temperature", "top_p", "max_new_tokens", "seed"})


@runtime_checkable
class ChatModel(Protocol):
    """Generates one reply per conversation.

    `batch` is a list of conversations, each a list of `{"role": ..., "content": ...}` messages (OpenAI chat
    format); `sampling` holds back-end sampling parameters such as `temperature` or `max_new_tokens` (see
    `SAMPLING_KEYS`). `temperature=0` means greedy decoding.
    """

    def generate(self, batch: list[list[dict]], **sampling: Any) -> list[str]: ...


class ChatModelError(RuntimeError):
    """A back end could not produce a reply; the message says what failed and what to change."""


def check_sampling(sampling: Mapping[str, Any]) -> None:
    """Raise TypeError naming any sampling key outside `SAMPLING_KEYS` (a typo would otherwise be ignored), and
    ValueError for a value no back end can use: `temperature` >= 0, `max_new_tokens` >= 1, `top_p` in (0, 1] and
    an integer `seed` (`top_p` and `seed` may be None)."""
    unknown = sorted(set(sampling) - SAMPLING_KEYS)
    if unknown:
        raise TypeError(f"unknown sampling parameter(s) {unknown}; supported: {sorted(SAMPLING_KEYS)}")
    checks = {
        "temperature": (lambda v: _is_real(v) and 0 <= v < math.inf, "a number >= 0 (0 is greedy)"),
        "max_new_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "top_p": (lambda v: v is None or (_is_real(v) and 0 < v <= 1), "a number in (0, 1], or None"),
        "seed": (lambda v: v is None or _is_int(v), "an integer, or None"),
    }
    for key, value in sampling.items():
        valid, expected = checks[key]
        if not valid(value):
            raise ValueError(f"sampling parameter {key} must be {expected}, got {value!r}")


def check_batch(batch: Any) -> None:
    """Raise TypeError unless `batch` is a list of conversations, each a list of message dicts."""
    if not isinstance(batch, (list, tuple)):
        raise TypeError(f"batch must be a list of conversations, got {type(batch).__name__}")
    for index, messages in enumerate(batch):
        if isinstance(messages, dict):
            raise TypeError(f"batch[{index}] is a message, not a conversation: pass [[message, ...]] (a list of "
                            "conversations), e.g. [[{'role': 'user', 'content': 'hi'}]]")
        if not isinstance(messages, (list, tuple)) or not messages:
            raise TypeError(f"batch[{index}] must be a non-empty list of messages, got {messages!r:.80}")
        for message in messages:
            if not isinstance(message, dict) or "role" not in message:
                raise TypeError(f"batch[{index}] holds {message!r:.80}; each message is a dict with 'role' and "
                                "'content'")
        try:
            json.dumps(messages)
        except (TypeError, ValueError) as err:
            raise TypeError(f"batch[{index}] cannot be sent as JSON ({err})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)
