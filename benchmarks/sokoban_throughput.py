"""Sokoban throughput: the batched torch env, the single env through gymnasium, its text view, and resets.

Prints one JSON object. Run: `python benchmarks/sokoban_throughput.py` (or `creditgym bench sokoban_throughput`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch

import creditgym
from creditgym.agents.config_cli import check_device
from creditgym.benchmarking import cpu_model, resets_per_second, steps_per_second, target_report
from creditgym.envs.sokoban.vector import SokobanVectorEnv

TARGETS = {
    "batched_1024_env_steps_per_s": 4_000_000,
    "single_array_steps_per_s": 30_000,
    "single_text_steps_per_s": 15_000,
    "resets_per_s": 20_000,
}


def batched(num_envs: int, variant: str, seconds: float, device: str) -> float:
    """Env-steps/s with autoreset and observations, random actions pre-drawn on the device."""
    env = SokobanVectorEnv(num_envs, levels=variant, device=device)
    env.reset(seed=0)
    actions = torch.randint(4, (256, num_envs), generator=torch.Generator().manual_seed(0)).to(device)
    for t in range(20):
        env.step(actions[t])
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for t in range(256):
            env.step(actions[t])
        steps += 256
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * num_envs / (time.perf_counter() - start)


def single(env_id: str, seconds: float, obs_mode: str) -> float:
    """Steps/s through gymnasium.make (time limit and order enforcing included), resetting on episode end."""
    env = gym.make(env_id, obs_mode=obs_mode)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    if obs_mode == "text":
        words = ["<answer>Up</answer>", "down", "Left", "\\boxed{right}"]
        actions = [words[i] for i in rng.integers(4, size=4096)]
    else:
        actions = rng.integers(4, size=4096).tolist()
    return steps_per_second(env, actions, seconds)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument("--device", default="cpu", help="device of the batched env, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = the single-thread target)")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[256, 1024, 4096], help="batch sizes")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or min(args.threads, *args.num_envs) < 1:
        parser.error("--seconds must be positive, and --threads and every --num-envs value at least 1")
    try:
        check_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    torch.set_num_threads(args.threads)
    result: dict = {
        "benchmark": "sokoban_throughput",
        "creditgym": creditgym.__version__,
        "torch": torch.__version__,
        "machine": cpu_model(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "threads": args.threads,
        "settings": vars(args),
        "batched_6x6_env_steps_per_s": {
            str(n): round(batched(n, "6x6-1b", args.seconds, args.device)) for n in args.num_envs
        },
        "batched_10x10_1024_env_steps_per_s": round(batched(1024, "10x10-3b", args.seconds, args.device)),
        "single_array_steps_per_s": round(single("creditgym/Sokoban-6x6-1b-v0", args.seconds, "array")),
        "single_text_steps_per_s": round(single("creditgym/Sokoban-6x6-1b-v0", args.seconds, "text")),
        "resets_per_s": round(resets_per_second("creditgym/Sokoban-6x6-1b-v0", args.seconds)),
    }
    figures = dict(result, batched_1024_env_steps_per_s=result["batched_6x6_env_steps_per_s"].get("1024"))
    result["targets"] = target_report(figures, TARGETS)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
