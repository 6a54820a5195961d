"""The chat-model protocol every LLM back end implements (see DESIGN.md, "LLM back ends")."""

from __future__ import annotations

from collections.abc import Mapping
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
    """Raise TypeError naming any sampling key outside `SAMPLING_KEYS` (a typo would otherwise be ignored)."""
    unknown = sorted(set(sampling) - SAMPLING_KEYS)
    if unknown:
        raise TypeError(f"unknown sampling parameter(s) {unknown}; supported: {sorted(SAMPLING_KEYS)}")
