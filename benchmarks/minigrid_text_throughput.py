"""MiniGrid/BabyAI text throughput: each registered text id against minigrid's own array env.

Prints one JSON object. Run: `python benchmarks/minigrid_text_throughput.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch

import creditgym
from creditgym.benchmarking import cpu_model, steps_per_second
from creditgym.envs import DESCRIPTIONS
from creditgym.envs.minigrid_scripted import ScriptedMiniGridPolicy
from creditgym.envs.minigrid_text import ACTION_NAMES


def _text_ids() -> list[str]:
    return sorted(i for i in DESCRIPTIONS if i.startswith(("creditgym/MiniGridText-", "creditgym/BabyAIText-")))


def text_steps(env_id: str, seconds: float) -> float:
    """Steps/s through gymnasium.make with random text actions, resetting on episode end."""
    env = gym.make(env_id)
    env.reset(seed=0)
    names = list(ACTION_NAMES.values())
    actions = [names[i] for i in np.random.default_rng(0).integers(len(names), size=4096)]
    return steps_per_second(env, actions, seconds)


def array_steps(env_id: str, seconds: float) -> float:
    """The same loop on minigrid's own env (array observations), for the cost of the text view."""
    minigrid_id = gym.spec(env_id).kwargs["env_id"]
    env = gym.make(minigrid_id)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(len(ACTION_NAMES), size=4096).tolist()
    return steps_per_second(env, actions, seconds)


def scripted(env_id: str, episodes: int) -> dict:
    """Success rate and steps/s of the scripted policy (BabyAI bot or planner, thinking time included)."""
    env = gym.make(env_id)
    policy = ScriptedMiniGridPolicy(env.unwrapped)
    steps = successes = 0
    start = time.perf_counter()
    for episode in range(episodes):
        env.reset(seed=episode)
        policy.reset()
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, info = env.step(policy.act())
            steps += 1
        successes += info["success"]
    return {"success": round(successes / episodes, 3), "steps_per_s": round(steps / (time.perf_counter() - start))}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument("--episodes", type=int, default=200, help="episodes for the scripted-policy success rate")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or args.episodes < 1:
        parser.error("--seconds must be positive and --episodes at least 1")
    per_env = {}
    # BabyAI's level generator prints "Sampling rejected: ..." to stdout; keep stdout to the one JSON object.
    with contextlib.redirect_stdout(io.StringIO()):
        for env_id in _text_ids():
            per_env[env_id] = {
                "text_steps_per_s": round(text_steps(env_id, args.seconds)),
                "minigrid_array_steps_per_s": round(array_steps(env_id, args.seconds)),
                "scripted": scripted(env_id, args.episodes),
            }
    result = {
        "benchmark": "minigrid_text_throughput",
        "creditgym": creditgym.__version__,
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "settings": vars(args),
        "envs": per_env,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
