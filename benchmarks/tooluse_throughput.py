"""ToolUse throughput: env steps/s with the scripted expert (real tool calls) and with invalid text, and resets.

Prints one JSON object. Run: `python benchmarks/tooluse_throughput.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import gymnasium as gym
import torch

import creditgym
from creditgym.benchmarking import cpu_model, resets_per_second, steps_per_second, target_report
from creditgym.envs.tooluse.expert import ToolUseExpert

TARGETS = {"expert_steps_per_s": 10_000}
_GARBAGE = ("", "hello", '<tool_call>{"name": "calculator", "arguments": </tool_call>', "<answer></answer>")


def expert(env_id: str, seconds: float) -> tuple[float, float, float]:
    """Steps/s (resets included; seeded once, as vector envs do) with the expert calling every tool of the
    reference plan, per wall-clock and per CPU second (the machine may be shared), and its success rate."""
    env = gym.make(env_id)
    env.reset(seed=0)
    policy = ToolUseExpert()
    steps = episodes = successes = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        env.reset()
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, info = env.step(policy(env))
            steps += 1
        episodes += 1
        successes += info["success"]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return steps / wall, steps / cpu, successes / episodes


def invalid(env_id: str, seconds: float) -> float:
    """Steps/s on text that is never a valid action (the time limit ends each episode)."""
    env = gym.make(env_id)
    env.reset(seed=0)
    return steps_per_second(env, _GARBAGE * 64, seconds)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure")
    parser.add_argument("--env-id", default="creditgym/ToolUse-v1", help="the ToolUse variant to measure")
    args = parser.parse_args(argv)
    if not args.seconds > 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    if args.env_id not in gym.registry:
        parser.error(f"unknown env id {args.env_id!r}; `creditgym list` shows the ToolUse ids")
    rate, cpu_rate, success = expert(args.env_id, args.seconds)
    result: dict = {
        "benchmark": "tooluse_throughput",
        "creditgym": creditgym.__version__,
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "settings": vars(args),
        "env_id": args.env_id,
        "expert_steps_per_s": round(rate),
        "expert_steps_per_cpu_s": round(cpu_rate),
        "expert_success": round(success, 3),
        "invalid_text_steps_per_s": round(invalid(args.env_id, args.seconds)),
        "resets_per_s": round(resets_per_second(args.env_id, args.seconds)),
    }
    result["targets"] = target_report(result, TARGETS)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
