"""Dialogue throughput: Dialogue-Gather with the rule-based user, and two-player negotiation.

Prints one JSON object. Run: `python benchmarks/dialogue_throughput.py`.
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
from creditgym.benchmarking import cpu_model, resets_per_second, steps_per_second, target_report
from creditgym.envs.dialogue import negotiation_v0
from creditgym.envs.dialogue.negotiator import ScriptedNegotiator
from creditgym.envs.dialogue.questioner import RuleBasedQuestioner
from creditgym.envs.dialogue.scenarios import DOMAINS

TARGETS = {"gather_steps_per_s": 10_000}


def _messages(rng: np.random.Generator, n: int) -> list[str]:
    """A pre-drawn mix: slot questions of every domain, open, off-topic and invalid messages, proposals."""
    pool = [slot.question for domain in DOMAINS.values() for slot in domain.slots]
    pool += ["What else matters to you?", "You want Linux, right?", "What is your favourite colour?", "", "Hi."]
    pool += ['<propose>{"budget": "$800", "destination": "Tokyo"}</propose>']
    return [pool[i] for i in rng.integers(len(pool), size=n)]


def gather(env_id: str, seconds: float) -> float:
    """Env steps/s through gymnasium.make (time limit and order enforcing included), resetting on episode end."""
    env = gym.make(env_id)
    env.reset(seed=0)
    return steps_per_second(env, _messages(np.random.default_rng(0), 4096), seconds)


def questioner(env_id: str, strategy: str, seconds: float) -> tuple[float, float]:
    """Steps/s with the rule-based questioner choosing every message, and its success rate."""
    env = gym.make(env_id)
    policy = RuleBasedQuestioner(strategy=strategy)
    steps = episodes = successes = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        obs, info = env.reset(seed=episodes)
        policy.reset(obs, info)
        terminated = truncated = False
        while not (terminated or truncated):
            obs, _, terminated, truncated, info = env.step(policy.act(obs))
            steps += 1
        episodes += 1
        successes += info["success"]
    return steps / (time.perf_counter() - start), successes / episodes


def negotiation(seconds: float) -> tuple[float, float]:
    """Parallel-env steps/s with two scripted negotiators, and their deal rate."""
    env = negotiation_v0.parallel_env()
    steps = episodes = deals = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, infos = env.reset(seed=episodes)
        bots = {agent: ScriptedNegotiator() for agent in env.agents}
        while env.agents:
            actions = {a: bots[a].act(infos[a]) if infos[a]["your_turn"] else "" for a in env.agents}
            _, _, _, _, infos = env.step(actions)
            steps += 1
        episodes += 1
        deals += infos["player_0"]["success"]
    return steps / (time.perf_counter() - start), deals / episodes


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    args = parser.parse_args(argv)
    if not args.seconds > 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    enumerate_rate, enumerate_success = questioner("creditgym/Dialogue-Gather-v0", "enumerate", args.seconds)
    open_rate, open_success = questioner("creditgym/Dialogue-Gather-Hard-v0", "open", args.seconds)
    negotiation_rate, deal_rate = negotiation(args.seconds)
    result: dict = {
        "benchmark": "dialogue_throughput",
        "creditgym": creditgym.__version__,
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "settings": vars(args),
        "gather_steps_per_s": round(gather("creditgym/Dialogue-Gather-v0", args.seconds)),
        "gather_hard_steps_per_s": round(gather("creditgym/Dialogue-Gather-Hard-v0", args.seconds)),
        "gather_questioner_steps_per_s": round(enumerate_rate),
        "gather_questioner_success": round(enumerate_success, 3),
        "gather_hard_open_questioner_steps_per_s": round(open_rate),
        "gather_hard_open_questioner_success": round(open_success, 3),
        "gather_resets_per_s": round(resets_per_second("creditgym/Dialogue-Gather-v0", args.seconds)),
        "negotiation_parallel_steps_per_s": round(negotiation_rate),
        "negotiation_scripted_deal_rate": round(deal_rate, 3),
    }
    result["targets"] = target_report(result, TARGETS)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
