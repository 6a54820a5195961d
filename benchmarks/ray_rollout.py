"""Ray rollout throughput: env-steps/s of Ray workers (1 and 2) against the same envs stepped in this process.

Batched Sokoban through `RayVecEnv` (what PPO steps) and a text env through `RayEnvPool` (what the LLM trainers
step), with random actions. Prints one JSON object. Run: `python benchmarks/ray_rollout.py` (add
`--ray-address auto` to use a cluster started with `ray start`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import ray
import torch

import creditgym
from creditgym.agents.vec import make_vec_env
from creditgym.benchmarking import cpu_model
from creditgym.distributed import LocalEnvPool, RayEnvPool, RayVecEnv
from creditgym.envs.minigrid_text import ACTION_NAMES

SOKOBAN = "creditgym/Sokoban-6x6-1b-v0"
TEXT_ENV = "creditgym/MiniGridText-DoorKey-5x5-v0"


def vector_steps(envs: Any, num_envs: int, seconds: float) -> float:
    """Env-steps/s of `envs.step` on a batch, random actions pre-drawn, same-step autoreset."""
    envs.reset(seed=0)
    actions = torch.randint(4, (256, num_envs), generator=torch.Generator().manual_seed(0))
    for t in range(10):
        envs.step(actions[t])
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for t in range(32):
            envs.step(actions[t])
        steps += 32
    return steps * num_envs / (time.perf_counter() - start)


def pool_steps(pool: Any, num_envs: int, seconds: float) -> float:
    """Env-steps/s of `step_many` over every env with random text actions, resetting the envs that ended."""
    names = list(ACTION_NAMES.values())
    rng = np.random.default_rng(0)
    pool.reset_many(range(num_envs), list(range(num_envs)))
    steps, episodes, start = 0, num_envs, time.perf_counter()
    while time.perf_counter() - start < seconds:
        results = pool.step_many(range(num_envs), [names[i] for i in rng.integers(len(names), size=num_envs)])
        ended = [i for i, (_, _, terminated, truncated, _) in enumerate(results) if terminated or truncated]
        if ended:
            pool.reset_many(ended, list(range(episodes, episodes + len(ended))))
            episodes += len(ended)
        steps += num_envs
    return steps / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[256, 1024], help="Sokoban batch sizes")
    parser.add_argument("--text-envs", type=int, default=64, help="text envs in the pool")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to measure")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: a private local Ray)")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or min(args.text_envs, *args.num_envs, *args.workers) < 1:
        parser.error("--seconds must be positive, and --text-envs and every --num-envs and --workers value at least 1")
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    if args.ray_address is None:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=args.ray_address, log_to_driver=False)

    sokoban: dict[str, dict[str, int]] = {}
    for num_envs in args.num_envs:
        figures = {"local": vector_steps(make_vec_env(SOKOBAN, num_envs, torch.device("cpu"), {}), num_envs,
                                         args.seconds)}
        for workers in args.workers:
            envs = RayVecEnv(SOKOBAN, num_envs, workers)
            figures[f"ray_{workers}_workers"] = vector_steps(envs, num_envs, args.seconds)
            envs.close()
        sokoban[str(num_envs)] = {name: round(value) for name, value in figures.items()}

    make_text_env = functools.partial(gym.make, TEXT_ENV)
    text = {"local": pool_steps(LocalEnvPool([make_text_env() for _ in range(args.text_envs)]), args.text_envs,
                                args.seconds)}
    for workers in args.workers:
        pool = RayEnvPool(make_text_env, args.text_envs, workers)
        text[f"ray_{workers}_workers"] = pool_steps(pool, args.text_envs, args.seconds)
        pool.close()

    result = {
        "benchmark": "ray_rollout",
        "creditgym": creditgym.__version__,
        "ray": ray.__version__,
        "torch": torch.__version__,
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "settings": vars(args),
        "cpus": os.cpu_count(),
        "ray_cpus": ray.cluster_resources().get("CPU"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "sokoban_6x6_env_steps_per_s": sokoban,
        f"text_{TEXT_ENV.split('/')[-1]}_{args.text_envs}_envs_steps_per_s": {k: round(v) for k, v in text.items()},
    }
    ray.shutdown()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
