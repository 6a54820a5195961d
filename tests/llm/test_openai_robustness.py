"""OpenAIChatModel against misbehaving servers: a real HTTP server on 127.0.0.1 that answers each request with a
scenario (an error status, a broken body, garbage, a trickle, a connection closed halfway)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from creditgym.llm import ChatModelError, OpenAIChatModel
from creditgym.llm import openai as openai_module

HI = [[{"role": "user", "content": "hi"}]]
Scenario = Callable[["_Handler", dict], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scenario: Scenario = lambda handler, body: handler.reply(200, _completion("ok"))
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
        try:
            self.server.scenario(self, body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up first
            pass

    def reply(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.raw(status, data, headers)

    def raw(self, status: int, data: bytes, headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _completion(content: object, choices: int = 1) -> dict:
    return {"choices": [{"index": i, "message": {"role": "assistant", "content": content}} for i in range(choices)]}


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _chat(srv: _Server, **kwargs: object) -> OpenAIChatModel:
    options = {"model": "m", "timeout": 2.0, "max_retries": 2, "backoff": 0.01, **kwargs}
    return OpenAIChatModel(srv.url, **options)  # type: ignore[arg-type]


# -- error statuses -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "payload", "message"),
    [
        (400, {"error": {"message": "max_tokens is too large"}}, r"HTTP 400: max_tokens is too large$"),
        (400, b"model xyz does not exist", "HTTP 400: model xyz does not exist"),  # plain text, not JSON
        (422, {"detail": [{"msg": "field required"}]}, "HTTP 422: .*field required"),  # FastAPI's shape
        (404, {"error": {"message": "The model `m` does not exist."}}, "HTTP 404: The model .* ends in /v1"),
        (401, b"", "HTTP 401: Unauthorized; check api_key"),  # no body: the reason phrase
        (307, b"", "HTTP 307: .*redirects to 'http://elsewhere/v1/chat/completions'"),
    ],
)
def test_client_errors_fail_at_once_naming_url_status_and_message(server: _Server, status: int, payload: object,
                                                                  message: str) -> None:
    headers = {"Location": "http://elsewhere/v1/chat/completions"} if status == 307 else None
    server.scenario = lambda handler, body: handler.reply(status, payload, headers)
    with pytest.raises(ChatModelError, match=rf"^{server.url}/chat/completions answered {message}"):
        _chat(server).generate(HI)
    assert len(server.requests) == 1  # never retried


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_the_reply_length_goes_in_the_field_the_server_reads(server: _Server, field: str) -> None:
    _chat(server, token_limit_field=field).generate(HI, max_new_tokens=9)
    other = "max_completion_tokens" if field == "max_tokens" else "max_tokens"
    assert server.requests[0][field] == 9 and other not in server.requests[0]


def test_a_server_refusing_max_tokens_says_which_setting_to_change(server: _Server) -> None:
    # OpenAI's reasoning models answer this way to max_tokens.
    message = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens'."
    server.scenario = lambda handler, body: handler.reply(400, {"error": {"message": message}})
    with pytest.raises(ChatModelError, match=r"HTTP 400: Unsupported .*; .* pass token_limit_field="
                                             r"'max_completion_tokens'$"):
        _chat(server).generate(HI)
    assert len(server.requests) == 1


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_reply_length_too_large_for_the_context_gives_no_field_hint(server: _Server, field: str) -> None:
    # vLLM names both fields when the prompt plus the reply exceed the context; the other field would not help.
    message = ("'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is "
               "4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778).")
    server.scenario = lambda handler, body: handler.reply(400, {"error": {"message": message}})
    with pytest.raises(ChatModelError, match="is too large") as raised:
        _chat(server, token_limit_field=field).generate(HI)
    assert "token_limit_field" not in str(raised.value)


@pytest.mark.parametrize("retry_after", ["-3", "nan", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "0"])
def test_retryable_statuses_are_retried_whatever_retry_after_says(server: _Server, retry_after: str) -> None:
    server.scenario = lambda handler, body: handler.reply(429, {"error": "slow down"}, {"Retry-After": retry_after})
    with pytest.raises(ChatModelError, match=r"failed after 3 attempt\(s\): HTTP 429: slow down; .*max_concurrency"):
        _chat(server).generate(HI)
    assert len(server.requests) == 3


def test_retry_after_is_honoured_and_capped(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def scenario(handler: _Handler, body: dict) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return handler.reply(503, b"", {"Retry-After": "0.4"})
        if len(calls) == 2:
            return handler.reply(503, b"", {"Retry-After": "100000"})
        return handler.reply(200, _completion("finally"))

    server.scenario = scenario
    monkeypatch.setattr(openai_module, "MAX_RETRY_WAIT", 0.5)
    assert _chat(server, backoff=0.0).generate(HI) == ["finally"]
    assert calls[1] - calls[0] >= 0.4 and 0.5 <= calls[2] - calls[1] < 5


# -- broken answers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not a chat completion: b'{not json'"),
        (b"", "not a chat completion: b''"),
        (b"\xff\xfe\x00", "not a chat completion"),
        ({"id": "x"}, "not a chat completion"),
        ({"choices": []}, "not a chat completion"),
        ({"choices": [{"message": None}]}, "not a chat completion"),
        ({"choices": "abc"}, "not a chat completion"),
        (b'data: {"choices": []}\n\ndata: [DONE]\n\n', "not a chat completion: b'data:"),  # a stream, unasked
        (_completion(5), "content is not text: 5"),
        (_completion({"text": "hi"}), "content is not text"),
        ({"error": {"message": "engine crashed"}}, "answered with an error: engine crashed"),
    ],
)
def test_bodies_that_are_not_chat_completions_raise_a_clear_error(server: _Server, payload: object,
                                                                  message: str) -> None:
    server.scenario = lambda handler, body: handler.reply(200, payload)
    with pytest.raises(ChatModelError, match=rf"^{server.url}/chat/completions .*{message}"):
        _chat(server).generate(HI)


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        ({"role": "assistant", "content": None}, ""),
        ({"role": "assistant", "content": None, "refusal": "I cannot help"}, "I cannot help"),
        ({"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, "ab"),
    ],
)
def test_replies_without_plain_text_content(server: _Server, message: dict, reply: str) -> None:
    server.scenario = lambda handler, body: handler.reply(200, {"choices": [{"message": message}]})
    assert _chat(server).generate(HI) == [reply]


def test_extra_choices_are_ignored(server: _Server) -> None:
    server.scenario = lambda handler, body: handler.reply(200, _completion(body["messages"][0]["content"], 3))
    assert _chat(server).generate([[{"role": "user", "content": c}] for c in "xyz"]) == ["x", "y", "z"]


def _garbage(handler: _Handler, body: dict) -> None:
    handler.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")


def _close_at_once(handler: _Handler, body: dict) -> None:
    handler.close_connection = True


def _close_mid_body(handler: _Handler, body: dict) -> None:
    data = json.dumps(_completion("a long reply " * 20)).encode()
    handler.raw(200, data[:40], length=len(data))


def _bad_chunks(handler: _Handler, body: dict) -> None:
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    handler.wfile.write(b"zz\r\nnot a chunk\r\n")


@pytest.mark.parametrize(
    ("scenario", "problem"),
    [
        (_garbage, "not HTTP .*BadStatusLine"),
        (_close_at_once, "Remote end closed connection without response"),
        (_close_mid_body, "broken off .*IncompleteRead"),
        (_bad_chunks, "broken off .*IncompleteRead"),
    ],
)
def test_broken_connections_are_retried_then_reported(server: _Server, scenario: Scenario, problem: str) -> None:
    server.scenario = scenario
    with pytest.raises(ChatModelError, match=rf"failed after 3 attempt\(s\): .*{problem}.*check that the server"):
        _chat(server).generate(HI)
    assert len(server.requests) == 3


def test_a_broken_answer_then_a_good_one(server: _Server) -> None:
    server.scenario = lambda handler, body: (_close_mid_body if len(server.requests) == 1 else
                                             lambda h, b: h.reply(200, _completion("whole")))(handler, body)
    assert _chat(server).generate(HI) == ["whole"]


def test_huge_answers_are_refused_without_reading_them(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_module, "MAX_RESPONSE_BYTES", 1000)
    server.scenario = lambda handler, body: handler.raw(200, b" " * 100, length=10**9)  # announced, never sent
    with pytest.raises(ChatModelError, match="announced an answer of 1000000000 bytes"):
        _chat(server).generate(HI)

    def endless(handler: _Handler, body: dict) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(100):
            handler.wfile.write(b"100\r\n" + b" " * 256 + b"\r\n")

    server.scenario = endless
    with pytest.raises(ChatModelError, match="answered with over 0 MiB"):
        _chat(server).generate(HI)
    assert len(server.requests) == 2  # neither was retried


# -- time -----------------------------------------------------------------------------------------------------------
def test_a_trickling_server_cannot_hold_a_request_past_its_timeout(server: _Server) -> None:
    def trickle(handler: _Handler, body: dict) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello":
            handler.wfile.write(bytes([byte]))
            time.sleep(0.1)  # each byte well within the timeout, the whole answer well past it

    server.scenario = trickle
    start = time.monotonic()
    with pytest.raises(ChatModelError, match=r"failed after 2 attempt\(s\): no answer within 0.5 s"):
        _chat(server, timeout=0.5, max_retries=1).generate(HI)
    assert time.monotonic() - start < 2.5  # two attempts of 0.5 s; the whole trickle takes 4.5 s each


def test_a_slow_server_times_out(server: _Server) -> None:
    server.scenario = lambda handler, body: time.sleep(2)
    start = time.monotonic()
    with pytest.raises(ChatModelError, match=r"failed after 1 attempt\(s\): no answer within 0.3 s"):
        _chat(server, timeout=0.3, max_retries=0).generate(HI)
    assert time.monotonic() - start < 1.5


# -- concurrency ----------------------------------------------------------------------------------------------------
def _live_threads() -> int:
    return sum(thread.name.startswith("openai-chat") for thread in threading.enumerate())


def test_many_parallel_requests_keep_order_and_leave_no_threads(server: _Server) -> None:
    def echo(handler: _Handler, body: dict) -> None:
        time.sleep(0.02)
        handler.reply(200, _completion(body["messages"][-1]["content"]))

    server.scenario = echo
    chat = _chat(server, max_concurrency=6)
    batch = [[{"role": "user", "content": f"q{i}"}] for i in range(40)]
    for _ in range(2):
        assert chat.generate(batch) == [f"q{i}" for i in range(40)]
    assert len(server.requests) == 80 and _live_threads() == 0


def test_one_failed_conversation_stops_the_batch_quickly(server: _Server) -> None:
    def scenario(handler: _Handler, body: dict) -> None:
        if body["messages"][-1]["content"] == "bad":
            return handler.reply(400, {"error": {"message": "prompt is too long"}})
        time.sleep(0.1)
        handler.reply(503, {"error": {"message": "busy"}})  # the others would be retried for a long time

    server.scenario = scenario
    chat = _chat(server, max_concurrency=4, max_retries=5, backoff=2.0)
    batch = [[{"role": "user", "content": "bad" if i == 2 else f"q{i}"}] for i in range(40)]
    start = time.monotonic()
    with pytest.raises(ChatModelError, match="HTTP 400: prompt is too long"):
        chat.generate(batch)
    assert time.monotonic() - start < 2  # not 40 / 4 x (5 retries, 62 s of backoff)
    assert len(server.requests) < 10 and _live_threads() == 0  # the rest were never sent


def test_requests_in_flight_give_up_when_their_batch_fails(server: _Server) -> None:
    # A failed batch (or Ctrl-C) waited for every answer still on its way, up to `timeout` (600 s in the designer)
    def scenario(handler: _Handler, body: dict) -> None:
        if body["messages"][-1]["content"] == "bad":
            time.sleep(0.2)  # the others are in flight by now
            return handler.reply(400, {"error": {"message": "prompt is too long"}})
        time.sleep(10)
        handler.reply(200, _completion("late"))

    server.scenario = scenario
    chat = _chat(server, max_concurrency=4, timeout=20.0)
    start = time.monotonic()
    with pytest.raises(ChatModelError, match="HTTP 400: prompt is too long"):
        chat.generate([[{"role": "user", "content": text}] for text in ("q0", "bad", "q2", "q3")])
    assert time.monotonic() - start < 3 and _live_threads() == 0


def test_retries_wait_with_jitter_within_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # Requests that failed together came back within 20 ms of each other on every wave
    waits = [openai_module.retry_wait(2, 1.0, None) for _ in range(50)]
    assert all(2.0 <= wait <= 2.5 for wait in waits) and len(set(waits)) > 40
    assert all(3.0 <= openai_module.retry_wait(1, 1.0, 3.0) <= 3.75 for _ in range(20))  # Retry-After, too
    monkeypatch.setattr(openai_module, "MAX_RETRY_WAIT", 0.5)
    assert openai_module.retry_wait(9, 1.0, None) == 0.5


# -- bad input, refused before any request --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("ftp://host/v1", "must start with http:// or https://"),
        ("localhost:8000/v1", "must start with http://"),
        ("http:///v1", "names no host"),
        ("http://:8000/v1", "names no host"),
        ("http://local host:8000/v1", "holds spaces"),
        ("http://localhost:99999/v1", "not a valid address"),
        ("http://[::1/v1", "not a valid address"),
        ("http://localhost:8000", "has no path; .* use http://localhost:8000/v1"),
        ("http://localhost:8000/", "use http://localhost:8000/v1"),
        ("http://localhost:8000/v1/chat/completions", "is an endpoint; .* http://localhost:8000/v1$"),
        ("http://localhost:8000/v1?key=1", "query"),
        (8000, "must be a string"),
    ],
)
def test_bad_base_urls_are_refused_up_front(base_url: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpenAIChatModel(base_url, model="m")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0"),
        ({"max_retries": 1.5}, "max_retries must be an integer"),
        ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
        ({"backoff": -1}, "backoff must be a non-negative"),
        ({"model": ""}, "model must name the model"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"api_key": "sk-abc\ndef"}, "api_key .* one printable token"),
        ({"token_limit_field": "max_length"}, "token_limit_field must be one of max_tokens, max_completion_tokens"),
    ],
)
def test_bad_settings_are_refused_up_front(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpenAIChatModel("http://127.0.0.1:9/v1", **{"model": "m", **options})


@pytest.mark.parametrize(
    ("batch", "sampling", "error", "message"),
    [
        ([{"role": "user", "content": "hi"}], {}, TypeError, r"a message, not a conversation: pass \[\[message"),
        ("hi", {}, TypeError, "list of conversations"),
        ([[]], {}, TypeError, "non-empty list of messages"),
        ([["hi"]], {}, TypeError, "each message is a dict"),
        ([[{"role": "user", "content": object()}]], {}, TypeError, "cannot be sent as JSON"),
        (HI, {"temperature": -1}, ValueError, "temperature must be a number >= 0"),
        (HI, {"temperature": None}, ValueError, "temperature must be"),
        (HI, {"max_new_tokens": 2.5}, ValueError, "max_new_tokens must be an integer"),
        (HI, {"top_p": 0}, ValueError, r"top_p must be a number in \(0, 1\]"),
        (HI, {"seed": "x"}, ValueError, "seed must be an integer"),
        (HI, {"top_k": 3}, TypeError, "unknown sampling"),
    ],
)
def test_bad_batches_and_sampling_are_refused_before_any_request(server: _Server, batch: object, sampling: dict,
                                                                 error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _chat(server).generate(batch, **sampling)  # type: ignore[arg-type]
    assert server.requests == []


def test_nothing_listens(server: _Server) -> None:
    url = server.url
    server.shutdown()
    server.server_close()
    start = time.monotonic()
    with pytest.raises(ChatModelError, match=r"failed after 3 attempt\(s\): .*refused; check that the server"):
        OpenAIChatModel(url, model="m", max_retries=2, backoff=0.01).generate(HI * 5)
    assert time.monotonic() - start < 2 and _live_threads() == 0


def test_the_completions_generator_shares_the_checks_and_the_deadline(server: _Server) -> None:
    from creditgym.llm.vllm import CompletionsGenerator

    with pytest.raises(ValueError, match="generation_url .* has no path"):
        CompletionsGenerator(None, "http://127.0.0.1:8000")  # type: ignore[arg-type]
    client = CompletionsGenerator(None, server.url, model="m", timeout=0.5, max_retries=1)  # type: ignore[arg-type]
    for scenario, problem in [(_garbage, "BadStatusLine"), (_close_mid_body, "IncompleteRead")]:
        server.scenario = scenario
        with pytest.raises(ChatModelError, match=rf"failed after 2 attempt\(s\): .*{problem}.*generation_url"):
            client._request("POST", f"{server.url}/completions", {"prompt": [1]})
    server.scenario = lambda handler, body: handler.reply(200, b"<html>")
    with pytest.raises(ChatModelError, match="not JSON: b'<html>'"):
        client._request("POST", f"{server.url}/completions", {"prompt": [1]})
