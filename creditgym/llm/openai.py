"""`ChatModel` over any OpenAI-compatible HTTP server (vLLM, SGLang, Ollama, OpenAI), using only the stdlib."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .chat import ChatModelError, check_sampling

#: HTTP statuses worth retrying: rate limits and server-side failures. Other 4xx errors are the caller's to fix.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAIChatModel:
    """Replies from `POST {base_url}/chat/completions`, one request per conversation, `max_concurrency` at once.

    Each request has a `timeout` (seconds) and up to `max_retries` retries with exponential backoff on
    connection errors, timeouts and the statuses in `RETRY_STATUSES` (honouring `Retry-After`). Failures raise
    `ChatModelError` naming the URL, the status and the server's message. `api_key` defaults to `$OPENAI_API_KEY`.

        chat = OpenAIChatModel("http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")
        chat.generate([[{"role": "user", "content": "Say hi"}]], temperature=0.0, max_new_tokens=16)
    """

    def __init__(self, base_url: str, *, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 0.5, max_concurrency: int = 8,
                 max_new_tokens: int = 256, temperature: float = 0.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r} "
                             "(e.g. http://localhost:8000/v1 for vLLM)")
        if timeout <= 0 or max_retries < 0 or backoff < 0 or max_concurrency < 1:
            raise ValueError("timeout must be positive, max_retries and backoff non-negative, max_concurrency >= 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_concurrency = max_concurrency
        self.defaults: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature}

    def generate(self, batch: list[list[dict]], **sampling: Any) -> list[str]:
        check_sampling(sampling)
        params = {**self.defaults, **sampling}
        body = {"model": self.model, "temperature": float(params["temperature"]),
                "max_tokens": int(params["max_new_tokens"])}
        if params.get("top_p") is not None:
            body["top_p"] = params["top_p"]
        requests = [{**body, "messages": messages} for messages in batch]
        if params.get("seed") is not None:
            # Conversation i gets seed + i: the batch stays reproducible, as in HFChatModel, but each reply has its
            # own random stream. With one shared seed, vLLM sampled identical replies to the reward designer's K
            # prompts, which differ only in their last line.
            for index, request in enumerate(requests):
                request["seed"] = int(params["seed"]) + index
        if len(requests) <= 1:
            return [self._complete(request) for request in requests]
        with ThreadPoolExecutor(min(self.max_concurrency, len(requests))) as pool:
            return list(pool.map(self._complete, requests))

    def _complete(self, body: dict[str, Any]) -> str:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        problem, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(retry_after if retry_after is not None else self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._parse(response.read())
            except urllib.error.HTTPError as err:
                message = _error_message(err)
                if err.code not in RETRY_STATUSES:
                    raise ChatModelError(f"{self.url} answered HTTP {err.code}: {message}") from None
                problem, retry_after = f"HTTP {err.code}: {message}", _retry_after(err)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                reason = getattr(err, "reason", err)
                problem = f"no answer within {self.timeout:g} s" if isinstance(reason, TimeoutError) else str(reason)
                retry_after = None
        raise ChatModelError(f"{self.url} failed after {self.max_retries + 1} attempt(s): {problem}; "
                             "check that the server is running and base_url ends in /v1, or raise timeout/max_retries")

    def _parse(self, raw: bytes) -> str:
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ChatModelError(f"{self.url} returned a body that is not a chat completion: {raw[:200]!r}") from None
        return content if isinstance(content, str) else ""


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        body = err.read()
        detail = json.loads(body).get("error", body.decode(errors="replace"))
        return str(detail.get("message", detail) if isinstance(detail, dict) else detail)[:300]
    except (ValueError, AttributeError, OSError):
        return err.reason if isinstance(err.reason, str) else "no message"


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    """The server's Retry-After in seconds (capped at a minute), when it sent a number."""
    try:
        return min(float(err.headers.get("Retry-After", "")), 60.0)
    except (TypeError, ValueError):
        return None
