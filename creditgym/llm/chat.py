"""The chat-model protocol every LLM back end implements (see DESIGN.md, "LLM back ends")."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ChatModel(Protocol):
    """Generates one reply per conversation.

    `batch` is a list of conversations, each a list of `{"role": ..., "content": ...}` messages (OpenAI chat
    format); `sampling` holds back-end sampling parameters such as `temperature` or `max_new_tokens`.
    """

    def generate(self, batch: list[list[dict]], **sampling: Any) -> list[str]: ...
