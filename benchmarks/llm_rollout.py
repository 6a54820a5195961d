"""Batched multi-turn LLM rollouts vs a per-episode `generate` loop, in generated tokens per second.

Both sides use the same model, env, prompts (instructions + last `history` turns), sampling temperature and
token budget. The batched side is `RolloutCollector`: one decode per turn over every live episode with a KV cache.
The loop plays one episode at a time and calls Hugging Face `model.generate` once per turn. With `--vllm` the same
batched rollout also runs with the vLLM generation back end (`make vllm`; the trainer's
`--generation-backend vllm`), timed after the server has started. Prints one JSON object.

    python benchmarks/llm_rollout.py --model smollm2-135m --episodes 32 --loop-episodes 4 --vllm
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

import creditgym
from creditgym.agents.llm.policy import LLMPolicy
from creditgym.agents.llm.rollout import RolloutCollector
from creditgym.agents.llm.trainer import make_text_env
from creditgym.benchmarking import add_llm_arguments, cpu_model, llm_rollout


def _loop(policy: LLMPolicy, env_id: str, seeds: Sequence[int], *, max_turns: int, history: int) -> tuple[int, float]:
    """Per-episode baseline: (generated tokens, seconds)."""
    model, tokenizer = policy.model, policy.tokenizer
    tokens, start = 0, time.perf_counter()
    for seed in seeds:
        env = make_text_env(env_id)
        obs, info = env.reset(seed=seed)
        past: list[tuple[str, str]] = []
        for _ in range(max_turns):
            messages = [{"role": "system", "content": info.get("instructions", "")}]
            for old_obs, old_action in past[len(past) - history:] if history else []:
                messages += [{"role": "user", "content": old_obs}, {"role": "assistant", "content": old_action}]
            messages.append({"role": "user", "content": obs})
            prompt = torch.tensor([policy.chat_prompt(messages)], device=policy.device)
            with torch.no_grad(), policy.autocast():
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                                     top_p=1.0, temperature=policy.temperature, max_new_tokens=policy.max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id)
            reply = out[0, prompt.shape[1]:]
            tokens += int(reply.numel())
            action = tokenizer.decode(reply, skip_special_tokens=True)
            past.append((obs, action))
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    return tokens, time.perf_counter() - start


def _vllm(policy: LLMPolicy, args: argparse.Namespace, groups: int, group: int) -> dict:
    """The batched rollout with vLLM generating (server start-up timed apart): tokens/s and start-up seconds."""
    from creditgym.llm.vllm import VLLMGenerator

    backend = VLLMGenerator(policy, dtype=args.vllm_dtype, threads=args.threads)
    try:
        start = time.perf_counter()
        backend.generate([policy.chat_prompt([{"role": "user", "content": "hi"}])], greedy=True)
        startup = time.perf_counter() - start
        collector = RolloutCollector([make_text_env(args.env) for _ in range(groups * group)], backend,
                                     group_size=group, max_turns=args.max_turns, history_turns=args.history,
                                     max_prompt_tokens=8192)
        generator = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        episodes = collector.collect([args.seed + g for g in range(groups)], generator=generator)
        seconds = time.perf_counter() - start
    finally:
        backend.close()
    tokens = sum(ep.num_generated_tokens for ep in episodes)
    return {"vllm_dtype": args.vllm_dtype, "vllm_startup_s": round(startup, 1), "vllm_tokens": tokens,
            "vllm_seconds": round(seconds, 2), "vllm_tokens_per_s": round(tokens / seconds, 1)}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_llm_arguments(parser, episodes=32, max_turns=3)
    parser.add_argument("--loop-episodes", type=int, default=4, help="episodes for the per-episode loop (it is slow)")
    parser.add_argument("--vllm", action="store_true", help="also time the batched rollout on the vLLM back end")
    parser.add_argument("--vllm-dtype", default="float32", choices=["float32", "bfloat16"], help="vLLM weights dtype")
    args = parser.parse_args(argv)
    if args.loop_episodes < 1:
        parser.error("--loop-episodes must be at least 1")
    policy, device, episodes, batched_seconds = llm_rollout(parser, args)
    group = min(8, args.episodes)
    groups = max(1, args.episodes // group)
    batched_tokens = sum(ep.num_generated_tokens for ep in episodes)
    torch.manual_seed(args.seed)  # HF generate() in the loop baseline samples from the global generator
    loop_tokens, loop_seconds = _loop(policy, args.env, [args.seed + i for i in range(args.loop_episodes)],
                                      max_turns=args.max_turns, history=args.history)
    batched_rate, loop_rate = batched_tokens / batched_seconds, loop_tokens / loop_seconds
    vllm_result = _vllm(policy, args, groups, group) if args.vllm else {}
    if vllm_result:
        vllm_result["vllm_speedup"] = round(vllm_result["vllm_tokens_per_s"] / loop_rate, 2)
    result = {
        "benchmark": "llm_rollout", "creditgym": creditgym.__version__,
        "machine": cpu_model(), "settings": vars(args),
        "model": args.model, "env": args.env, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "threads": args.threads,
        "batched_episodes": len(episodes), "batched_tokens": batched_tokens,
        "batched_seconds": round(batched_seconds, 2),
        "batched_tokens_per_s": round(batched_rate, 1), "loop_episodes": args.loop_episodes,
        "loop_tokens": loop_tokens, "loop_seconds": round(loop_seconds, 2), "loop_tokens_per_s": round(loop_rate, 1),
        "speedup": round(batched_rate / loop_rate, 2), **vllm_result,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
