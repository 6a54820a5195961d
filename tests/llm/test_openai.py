"""OpenAIChatModel against a real HTTP server on 127.0.0.1 (a stdlib server speaking /v1/chat/completions)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from creditgym.llm import ChatModel, ChatModelError, OpenAIChatModel


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.failures_left = 0
        self.failure_status = 503
        self.delay = 0.0


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        time.sleep(self.server.delay)
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        if body.get("model") == "forbidden":
            return self._send(401, {"error": {"message": "invalid api key"}})
        if self.server.failures_left > 0:
            self.server.failures_left -= 1
            return self._send(self.server.failure_status, {"error": {"message": "overloaded"}})
        last = body["messages"][-1]["content"]
        return self._send(200, {"choices": [{"message": {"role": "assistant", "content": f"echo: {last}"}}]})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up first (the timeout tests)
            pass


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


def test_round_trip_in_order_with_sampling_mapped(server: _Server) -> None:
    chat = OpenAIChatModel(_url(server), model="m", api_key="k", max_concurrency=4)
    assert isinstance(chat, ChatModel)
    batch = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    assert chat.generate(batch, temperature=0.5, max_new_tokens=7, seed=3) == [f"echo: q{i}" for i in range(6)]
    request = server.requests[0]
    assert request["max_tokens"] == 7 and request["temperature"] == 0.5
    assert request["auth"] == "Bearer k" and request["model"] == "m"
    # one seed for the batch; conversation i samples with seed + i, so equal prompts still get distinct replies
    assert {r["messages"][0]["content"]: r["seed"] for r in server.requests} == {f"q{i}": 3 + i for i in range(6)}


def test_retries_transient_failures(server: _Server) -> None:
    server.failures_left = 2
    chat = OpenAIChatModel(_url(server), model="m", max_retries=2, backoff=0.01)
    assert chat.generate([[{"role": "user", "content": "hi"}]]) == ["echo: hi"]
    assert len(server.requests) == 3


def test_gives_up_with_a_clear_error(server: _Server) -> None:
    server.failures_left = 10
    chat = OpenAIChatModel(_url(server), model="m", max_retries=1, backoff=0.01)
    with pytest.raises(ChatModelError, match=r"failed after 2 attempt\(s\): HTTP 503: overloaded"):
        chat.generate([[{"role": "user", "content": "hi"}]])


def test_client_errors_are_not_retried(server: _Server) -> None:
    chat = OpenAIChatModel(_url(server), model="forbidden", max_retries=3, backoff=0.01)
    with pytest.raises(ChatModelError, match="HTTP 401: invalid api key"):
        chat.generate([[{"role": "user", "content": "hi"}]])
    assert len(server.requests) == 1
    wrong_path = OpenAIChatModel(f"http://127.0.0.1:{server.server_address[1]}/api", model="m")
    with pytest.raises(ChatModelError, match="HTTP 404: no route /api/chat/completions; check that base_url ends in"):
        wrong_path.generate([[{"role": "user", "content": "hi"}]])


def test_timeouts(server: _Server) -> None:
    server.delay = 0.5
    chat = OpenAIChatModel(_url(server), model="m", timeout=0.1, max_retries=1, backoff=0.01)
    with pytest.raises(ChatModelError, match="no answer within 0.1 s"):
        chat.generate([[{"role": "user", "content": "hi"}]])


def test_unreachable_server_and_bad_arguments() -> None:
    chat = OpenAIChatModel("http://127.0.0.1:9/v1", model="m", max_retries=0, timeout=1)
    with pytest.raises(ChatModelError, match="check that the server is running"):
        chat.generate([[{"role": "user", "content": "hi"}]])
    with pytest.raises(ValueError, match="http://"):
        OpenAIChatModel("localhost:8000/v1", model="m")
    with pytest.raises(TypeError, match="unknown sampling"):
        chat.generate([], top_k=3)
