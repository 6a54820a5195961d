"""LLM reward sandbox throughput: transitions/s for a simple program, evaluated in batches in the worker.

Prints one JSON object. Run: `python benchmarks/llm_reward_sandbox.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import gymnasium as gym
import torch

import creditgym
from creditgym.benchmarking import cpu_model, target_report
from creditgym.wrappers.llm_reward import RewardSandbox

TARGETS = {"transitions_per_s": 20_000}

PROGRAM = """def compute_dense_reward(state, action, next_state):
    progress = float(next_state["boxes_on_target"] - state["boxes_on_target"])
    return progress - 0.1, {"progress": progress, "step": -0.1}
"""


def sokoban_transitions(n: int) -> list[tuple[dict, int, dict]]:
    """Real (state, action, next_state) triples from random play on 6x6 one-box Sokoban."""
    env = gym.make("creditgym/Sokoban-6x6-1b-v0")
    env.reset(seed=0)
    env.action_space.seed(0)
    state = env.unwrapped.state()
    transitions = []
    while len(transitions) < n:
        action = int(env.action_space.sample())
        _, _, terminated, truncated, _ = env.step(action)
        next_state = env.unwrapped.state()
        transitions.append((state, action, next_state))
        if terminated or truncated:
            env.reset()
            next_state = env.unwrapped.state()
        state = next_state
    return transitions


def throughput(transitions: list, seconds: float) -> float:
    """Transitions/s through `RewardSandbox.evaluate`, serialisation and output checks included."""
    with RewardSandbox() as sandbox:
        error = sandbox.load(PROGRAM)
        if error is not None:
            raise RuntimeError(error)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            result = sandbox.evaluate(transitions)
            if not result.ok:
                raise RuntimeError(result.error)
            count += len(transitions)
        return count / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256, 4096],
                        help="transitions per evaluate() call; the largest is the headline figure")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or min(args.batch_sizes) < 1:
        parser.error("--seconds must be positive and every --batch-sizes value at least 1")
    pool = sokoban_transitions(max(args.batch_sizes))
    rates = {size: throughput(pool[:size], args.seconds) for size in args.batch_sizes}
    start = time.perf_counter()
    with RewardSandbox() as sandbox:
        sandbox.load(PROGRAM)
    result: dict = {
        "benchmark": "llm_reward_sandbox",
        "creditgym": creditgym.__version__,
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "settings": vars(args),
        "state": "Sokoban-6x6-1b-v0 env.unwrapped.state() (board rows, player, boxes, counts)",
        "transitions_per_s_by_batch": {str(size): round(rate) for size, rate in rates.items()},
        "transitions_per_s": round(rates[max(args.batch_sizes)]),
        "worker_start_and_load_s": round(time.perf_counter() - start, 3),
    }
    result["targets"] = target_report(result, TARGETS)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
