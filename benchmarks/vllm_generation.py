"""vLLM against HF batched generation (`LLMPolicy.generate`) for rollouts, in generated tokens per second.

Both sides sample the same prompts (chat prompts of Sokoban tasks) at temperature 1 from the full distribution, up
to `--max-new-tokens` tokens each, stopping at EOS, with `--threads` CPU threads: `torch.set_num_threads` for HF,
OMP_NUM_THREADS (unbound) for the vLLM server. vLLM runs as the trainer runs it, creditgym's server started from
.venv-vllm (`make vllm`) and reached over HTTP, so the figure includes that overhead. The runs alternate between the
two sides, so load from other jobs falls on both. Also reports the server's start-up, one weight push and whether
greedy replies agree after it. Prints one JSON object.

    python benchmarks/vllm_generation.py --model smollm2-135m --prompts 16 --max-new-tokens 32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import gymnasium as gym
import torch

import creditgym
from creditgym.agents.llm.policy import LLMPolicy
from creditgym.agents.llm.trainer import make_text_env
from creditgym.benchmarking import cpu_model
from creditgym.llm.models import load_policy_model
from creditgym.llm.vllm import VLLMGenerator


def _prompts(policy: LLMPolicy, env_id: str, count: int) -> list[list[int]]:
    prompts = []
    for seed in range(count):
        obs, info = make_text_env(env_id).reset(seed=seed)
        messages = [{"role": "system", "content": info.get("instructions", "")}, {"role": "user", "content": obs}]
        prompts.append(policy.chat_prompt(messages))
    return prompts


def _timed(generate: Callable[..., list], prompts: list[list[int]], seed: int) -> tuple[int, float]:
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    replies = generate(prompts, generator=generator)
    return sum(len(reply.token_ids) for reply in replies), time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m or a local Hugging Face model folder")
    parser.add_argument("--env", default="creditgym/Sokoban-6x6-1b-v0", help="text env whose tasks make the prompts")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per batch")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt at most")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each side")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="vLLM weights dtype: float32 (as HF here) or bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per side, after one warm-up batch")
    parser.add_argument("--vllm-python", help="python of the vLLM environment (default: .venv-vllm/bin/python)")
    args = parser.parse_args(argv)
    if min(args.prompts, args.max_new_tokens, args.threads, args.repeats) < 1:
        parser.error("--prompts, --max-new-tokens, --threads and --repeats must be at least 1")
    if args.env not in gym.registry:
        parser.error(f"unknown env id {args.env!r}; `creditgym list` shows the text envs")
    torch.set_num_threads(args.threads)
    try:
        model, tokenizer = load_policy_model(args.model)
    except ValueError as error:
        parser.error(str(error))
    policy = LLMPolicy(model, tokenizer, temperature=1.0, max_new_tokens=args.max_new_tokens)
    prompts = _prompts(policy, args.env, args.prompts)
    vllm = VLLMGenerator(policy, python=args.vllm_python, dtype=args.dtype, threads=args.threads,
                         max_model_len=max(len(p) for p in prompts) + args.max_new_tokens + 64)
    start = time.perf_counter()
    vllm.generate(prompts[:1], greedy=True)  # starts the server
    startup = time.perf_counter() - start
    sides = {"hf": policy.generate, "vllm": vllm.generate}
    for generate in sides.values():
        _timed(generate, prompts, seed=0)  # warm-up
    runs: dict[str, list[tuple[int, float]]] = {"hf": [], "vllm": []}
    for repeat in range(args.repeats):
        for name, generate in sides.items():
            runs[name].append(_timed(generate, prompts, seed=repeat + 1))
    push = vllm.push_weights()
    greedy_hf = policy.generate(prompts, greedy=True)
    greedy_vllm = vllm.generate(prompts, greedy=True)
    agree = sum(a.token_ids == b.token_ids for a, b in zip(greedy_hf, greedy_vllm, strict=True))
    vllm.close()
    rates = {name: [tokens / seconds for tokens, seconds in side] for name, side in runs.items()}
    result = {
        "benchmark": "vllm_generation", "creditgym": creditgym.__version__,
        "machine": cpu_model(), "settings": vars(args),
        "model": args.model, "prompts": len(prompts),
        "prompt_tokens_mean": round(statistics.mean(len(p) for p in prompts), 1),
        "max_new_tokens": args.max_new_tokens, "threads": args.threads, "vllm_dtype": args.dtype,
        "repeats": args.repeats,
        "hf_tokens_per_batch": round(statistics.mean(t for t, _ in runs["hf"]), 1),
        "vllm_tokens_per_batch": round(statistics.mean(t for t, _ in runs["vllm"]), 1),
        "hf_tokens_per_s": round(statistics.median(rates["hf"]), 1),
        "vllm_tokens_per_s": round(statistics.median(rates["vllm"]), 1),
        "hf_tokens_per_s_runs": [round(r, 1) for r in rates["hf"]],
        "vllm_tokens_per_s_runs": [round(r, 1) for r in rates["vllm"]],
        "speedup": round(statistics.median(rates["vllm"]) / statistics.median(rates["hf"]), 2),
        "vllm_startup_s": round(startup, 1), "weight_push_s": round(push, 2),
        "greedy_agreement": f"{agree}/{len(prompts)}",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
