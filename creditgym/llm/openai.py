"""`ChatModel` over any OpenAI-compatible HTTP server (vLLM, SGLang, Ollama, OpenAI), using only the stdlib."""

from __future__ import annotations

import email.utils
import functools
import http.client
import io
import json
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from numbers import Integral, Real
from typing import Any

from .chat import ChatModelError, check_batch, check_sampling

#: HTTP statuses worth retrying: rate limits and server-side failures. Other 4xx errors are the caller's to fix.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: The longest answer read (a chat completion is a few KiB); a longer one is refused rather than filling memory.
MAX_RESPONSE_BYTES = 64 * 2**20
#: The longest wait between two attempts, whatever the backoff or the server's Retry-After says.
MAX_RETRY_WAIT = 60.0
# Retry timing only: results never depend on it, so it need not follow any seed (and must not use the global RNG)
_JITTER = random.Random()
_MAX_ERROR_BYTES = 64 * 2**10
#: Names servers give the reply-length limit: vLLM, SGLang and Ollama read max_tokens; OpenAI deprecated it for
#: max_completion_tokens, and its reasoning models refuse max_tokens.
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


class OpenAIChatModel:
    """Replies from `POST {base_url}/chat/completions`, one request per conversation, `max_concurrency` at once.

    Each attempt has `timeout` seconds in all (connecting, sending and reading the whole answer); failed ones are
    retried up to `max_retries` times with exponential backoff (`backoff`, doubling, at most `MAX_RETRY_WAIT`) on
    connection errors, timeouts, broken answers and the statuses in `RETRY_STATUSES` (honouring `Retry-After`).
    Failures raise `ChatModelError` naming the URL, the status and the server's message; when one conversation of
    a batch fails, the others' pending requests are dropped. `api_key` defaults to `$OPENAI_API_KEY`.
    `token_limit_field` names the request field that carries `max_new_tokens`: "max_tokens" (vLLM, SGLang, Ollama)
    or "max_completion_tokens" (OpenAI's current name, required by its reasoning models).

        chat = OpenAIChatModel("http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")
        chat.generate([[{"role": "user", "content": "Say hi"}]], temperature=0.0, max_new_tokens=16)
    """

    def __init__(self, base_url: str, *, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 0.5, max_concurrency: int = 8,
                 max_new_tokens: int = 256, temperature: float = 0.0, token_limit_field: str = "max_tokens") -> None:
        base_url = check_base_url(base_url)
        if token_limit_field not in TOKEN_LIMIT_FIELDS:
            raise ValueError(f"token_limit_field must be one of {', '.join(TOKEN_LIMIT_FIELDS)}, "
                             f"got {token_limit_field!r}")
        if not isinstance(timeout, Real) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not isinstance(backoff, Real) or not 0 <= backoff < math.inf:
            raise ValueError(f"backoff must be a non-negative number of seconds, got {backoff!r}")
        for name, value, least in (("max_retries", max_retries, 0), ("max_concurrency", max_concurrency, 1)):
            if not isinstance(value, Integral) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must name the model the server serves (e.g. its `vllm serve` id), got {model!r}")
        self.url = base_url + "/chat/completions"
        self.model = model
        self.api_key = check_api_key(api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"))
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_concurrency = int(max_concurrency)
        self.token_limit_field = token_limit_field
        self.defaults: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        check_sampling(self.defaults)

    def generate(self, batch: list[list[dict]], **sampling: Any) -> list[str]:
        check_sampling(sampling)
        check_batch(batch)
        params = {**self.defaults, **sampling}
        body = {"model": self.model, "temperature": float(params["temperature"]),
                self.token_limit_field: int(params["max_new_tokens"])}
        if params.get("top_p") is not None:
            body["top_p"] = float(params["top_p"])
        requests = [{**body, "messages": messages} for messages in batch]
        if params.get("seed") is not None:
            # Conversation i gets seed + i: the batch stays reproducible, as in HFChatModel, but each reply has its
            # own random stream. With one shared seed, vLLM sampled identical replies to the reward designer's K
            # prompts, which differ only in their last line.
            for index, request in enumerate(requests):
                request["seed"] = int(params["seed"]) + index
        stop = threading.Event()
        if len(requests) <= 1:
            return [self._complete(request, stop) for request in requests]
        pool = ThreadPoolExecutor(min(self.max_concurrency, len(requests)), thread_name_prefix="openai-chat")
        try:
            futures = [pool.submit(self._complete, request, stop) for request in requests]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = _first_failure(futures)
            if failed is not None:
                raise failed
            replies = [future.result() for future in futures]
        except BaseException as err:
            # The batch has failed: requests not sent yet are dropped, those in flight give up instead of retrying.
            # After Ctrl-C, do not even wait for those in flight (up to `timeout`); their threads end on their own.
            stop.set()  # in-flight reads see it within 0.25 s, so their threads do not hold up the exit
            pool.shutdown(wait=isinstance(err, Exception), cancel_futures=True)
            raise
        pool.shutdown()
        return replies

    def _complete(self, body: dict[str, Any], stop: threading.Event | None = None) -> str:
        try:
            raw = post(self.url, body, api_key=self.api_key, timeout=self.timeout, max_retries=self.max_retries,
                       backoff=self.backoff, stop=stop,
                       hint="check that the server is running and base_url ends in /v1, or raise timeout/max_retries")
        except ChatModelError as error:
            other = next(field for field in TOKEN_LIMIT_FIELDS if field != self.token_limit_field)
            if "HTTP 400" in str(error) and _refuses_field(str(error), self.token_limit_field):
                raise ChatModelError(f"{error}; this server wants the reply length as {other}: pass "
                                     f"token_limit_field={other!r}") from None
            raise
        return self._parse(raw)

    def _parse(self, raw: bytes) -> str:
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = None
        try:
            message = reply["choices"][0]["message"]
            content = message["content"]
        except (KeyError, IndexError, TypeError):
            error = _error_in(reply)
            if error is not None:
                raise ChatModelError(f"{self.url} answered with an error: {error[:300]}") from None
            raise ChatModelError(f"{self.url} returned a body that is not a chat completion: {raw[:200]!r}") from None
        if content is None:  # no text at all (the reply was cut short, or held only a refusal or tool calls)
            refusal = message.get("refusal")
            return refusal if isinstance(refusal, str) else ""
        if isinstance(content, list):  # content parts, as some servers send them
            texts = [part.get("text") for part in content if isinstance(part, dict)]
            if all(isinstance(text, str) for text in texts) and len(texts) == len(content):
                return "".join(texts)
        if not isinstance(content, str):
            raise ChatModelError(f"{self.url} returned a chat completion whose content is not text: "
                                 f"{str(content)[:200]}")
        return content


def check_base_url(base_url: Any, name: str = "base_url") -> str:
    """`base_url` without its trailing slash, once it is an http(s) address with a host and a path such as /v1;
    otherwise a ValueError that says how to write it."""
    example = "e.g. http://localhost:8000/v1 for vLLM"
    if not isinstance(base_url, str):
        raise ValueError(f"{name} must be a string such as http://localhost:8000/v1, got {type(base_url).__name__}")
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"{name} must start with http:// or https://, got {base_url!r} ({example})")
    try:
        parts = urllib.parse.urlsplit(base_url)
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError as err:
        raise ValueError(f"{name} {base_url!r} is not a valid address ({err}); {example}") from None
    if not parts.hostname or any(char.isspace() for char in base_url):
        raise ValueError(f"{name} {base_url!r} names no host (or holds spaces); {example}")
    if parts.query or parts.fragment:
        raise ValueError(f"{name} {base_url!r} has a query or fragment; give only the API's root address ({example})")
    path = parts.path.rstrip("/")
    if not path:
        raise ValueError(f"{name} {base_url!r} has no path; OpenAI-compatible servers answer under /v1, so use "
                         f"{base_url.rstrip('/')}/v1")
    for endpoint in ("/chat/completions", "/completions"):
        if path.endswith(endpoint):
            raise ValueError(f"{name} {base_url!r} is an endpoint; give the API's root instead: "
                             f"{base_url.rstrip('/')[:-len(endpoint)]}")
    return base_url.rstrip("/")


def check_api_key(api_key: Any) -> str | None:
    if api_key is None or api_key == "":
        return None
    if not isinstance(api_key, str) or any(not char.isprintable() or char.isspace() for char in api_key.strip()):
        raise ValueError("api_key (or $OPENAI_API_KEY) must be one printable token without spaces or line breaks")
    return api_key.strip()


def retry_wait(attempt: int, backoff: float, retry_after: float | None) -> float:
    """Seconds before retry `attempt` (1, 2, ...): the server's Retry-After, else exponential backoff; both with up
    to 25% of jitter, so the requests of a batch that failed together do not all come back at the same instant, and
    capped at MAX_RETRY_WAIT."""
    base = retry_after if retry_after is not None else backoff * 2 ** (attempt - 1)
    return min(base * (1 + 0.25 * _JITTER.random()), MAX_RETRY_WAIT)


def post(url: str, body: dict[str, Any] | None, *, api_key: str | None, timeout: float, max_retries: int,
         backoff: float, hint: str, method: str = "POST", stop: threading.Event | None = None) -> bytes:
    """The body of a 2xx answer to `method url` with `body` as JSON, retried as `OpenAIChatModel` describes.

    Raises ChatModelError naming the URL and the status, with `hint` (what to change) after transient failures.
    """
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    problem, retry_after = "", None
    for attempt in range(max_retries + 1):
        if attempt:
            if stop is not None and stop.is_set():
                raise ChatModelError(f"{url}: gave up after {attempt} attempt(s), as another request of the batch "
                                     f"failed (last problem: {problem})")
            wait_s = retry_wait(attempt, backoff, retry_after)
            if stop is None:
                time.sleep(wait_s)
            elif stop.wait(wait_s):
                continue  # caught at the top of the next attempt (or after the last one, below)
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        request.deadline = time.monotonic() + timeout  # type: ignore[attr-defined]  (read by _HTTPHandler)
        request.stop = stop  # type: ignore[attr-defined]  (a read gives up once it is set)
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return _read(response, url)
        except urllib.error.HTTPError as err:
            try:
                status, message = err.code, _error_message(err)
            finally:
                err.close()
            if status not in RETRY_STATUSES:
                raise ChatModelError(f"{url} answered HTTP {status}: {message}{_status_hint(status, err)}") from None
            problem, retry_after = f"HTTP {status}: {message}", _retry_after(err)
            if attempt == max_retries:
                hint = "the server is overloaded or failing: check its logs, or lower max_concurrency or raise " \
                       "max_retries/backoff"
        except (OSError, http.client.HTTPException) as err:
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            if isinstance(reason, TimeoutError):
                problem = f"no answer within {timeout:g} s"
            elif isinstance(err, http.client.HTTPException) and not isinstance(err, ConnectionError):
                problem = f"the answer was broken off or is not HTTP ({type(err).__name__}: {str(err)[:100]!r})"
            else:
                problem = str(reason) or type(reason).__name__
            retry_after = None
    if stop is not None and stop.is_set():
        raise ChatModelError(f"{url}: gave up, as another request of the batch failed (last problem: {problem})")
    raise ChatModelError(f"{url} failed after {max_retries + 1} attempt(s): {problem}; {hint}")


def _read(response: http.client.HTTPResponse, url: str) -> bytes:
    if response.length is not None and response.length > MAX_RESPONSE_BYTES:
        raise ChatModelError(f"{url} announced an answer of {response.length} bytes, over the "
                             f"{MAX_RESPONSE_BYTES >> 20} MiB a chat completion can need; is base_url the API?")
    raw = response.read(MAX_RESPONSE_BYTES + 1)
    if len(raw) > MAX_RESPONSE_BYTES:
        raise ChatModelError(f"{url} answered with over {MAX_RESPONSE_BYTES >> 20} MiB, more than a chat completion "
                             "can need; is base_url the API?")
    if response.length:  # the connection closed before the announced length arrived (a read of n bytes allows that)
        raise http.client.IncompleteRead(raw, response.length)
    return raw


def _error_message(err: urllib.error.HTTPError) -> str:
    """The server's message from an error answer: its JSON `error.message` (or `detail`, `message`), else its text."""
    try:
        body = err.read(_MAX_ERROR_BYTES) if err.fp is not None else b""
    except (OSError, http.client.HTTPException, ValueError):
        body = b""
    try:
        detail = _error_in(json.loads(body))
    except ValueError:
        detail = None
    if detail is None:
        detail = body.decode(errors="replace").strip()
    if not detail:
        detail = err.reason if isinstance(err.reason, str) and err.reason else "no message"
    return " ".join(str(detail).split())[:300]


def _error_in(reply: Any) -> str | None:
    """The message of an OpenAI-style (`{"error": {"message": ...}}`) or FastAPI-style (`{"detail": ...}`) error."""
    if not isinstance(reply, dict):
        return None
    for key in ("error", "detail", "message"):
        detail = reply.get(key)
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
        if detail:
            return str(detail)
    return None


def _status_hint(status: int, err: urllib.error.HTTPError) -> str:
    if status in (301, 302, 303, 307, 308):
        return f"; it redirects to {err.headers.get('Location')!r}: use that address as base_url"
    if status in (401, 403):
        return "; check api_key (default: $OPENAI_API_KEY)"
    if status in (404, 405):
        return "; check that base_url ends in /v1 (the server's API root) and that the server serves this model"
    return ""


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    """The server's Retry-After in seconds (a number or an HTTP date), when it sent a usable one."""
    value = (err.headers.get("Retry-After") or "").strip() if err.headers is not None else ""
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_WAIT) if math.isfinite(seconds) else None


def _first_failure(futures: list[Future]) -> BaseException | None:
    for future in futures:
        if future.done() and not future.cancelled() and future.exception() is not None:
            return future.exception()
    return None


# -- a deadline for the whole attempt -------------------------------------------------------------------------------
# urllib's timeout bounds each socket operation, so a server that trickles its answer a byte at a time could hold a
# request for ever. These handlers give every read of an attempt only the time left until the request's deadline.
class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: Any, deadline: float, stop: threading.Event | None = None) -> None:
        super().__init__()
        self._sock, self._deadline, self._stop = sock, deadline, stop
        self._raw = sock.makefile("rb", buffering=0)  # holds the socket open (its io ref) while the answer is read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the answer did not arrive in time")
            if self._stop is not None and self._stop.is_set():
                raise ConnectionAbortedError("the batch was abandoned")
            self._sock.settimeout(min(remaining, 0.25))
            try:
                return self._sock.recv_into(buffer)
            except TimeoutError:
                continue

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What `HTTPResponse` reads from: the socket, with a file whose reads stop at the deadline."""

    def __init__(self, sock: Any, deadline: float, stop: threading.Event | None) -> None:
        self._sock, self._deadline, self._stop = sock, deadline, stop

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline, self._stop))


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock: Any, *args: Any, deadline: float, stop: threading.Event | None = None,
                 **kwargs: Any) -> None:
        super().__init__(_DeadlineSocket(sock, deadline, stop), *args, **kwargs)  # type: ignore[arg-type]


def _with_deadline(http_class: Any, deadline: float | None, stop: threading.Event | None = None) -> Any:
    def connect(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        connection = http_class(host, **kwargs)
        if deadline is not None:
            connection.response_class = functools.partial(_DeadlineResponse, deadline=deadline, stop=stop)
        return connection

    return connect


class _HTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        connect = _with_deadline(http_class, getattr(req, "deadline", None), getattr(req, "stop", None))
        return super().do_open(connect, req, **kwargs)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        connect = _with_deadline(http_class, getattr(req, "deadline", None), getattr(req, "stop", None))
        return super().do_open(connect, req, **kwargs)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirected POST would arrive as a GET without its body; report the redirect instead (see _status_hint)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler, _NoRedirects)


def _refuses_field(message: str, field: str) -> bool:
    """Whether a server's error says that it does not take `field` at all (OpenAI's reasoning models refuse
    max_tokens), as opposed to a value too large for it: vLLM's "'max_tokens' or 'max_completion_tokens' is too
    large" names both fields, and the other field would not help there."""
    return field in message and "too large" not in message and re.search(
        r"unsupported|not supported|unrecognized|unknown|not permitted|extra", message, re.IGNORECASE) is not None
