"""What the scripts in benchmarks/ share: env steps and resets per second through gymnasium, target reports, and
the LLM benchmarks' flags and batched rollout."""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym


def steps_per_second(env: gym.Env, actions: Sequence[Any], seconds: float) -> float:
    """Replay `actions` in a loop for at least `seconds`, resetting on episode end; the env must be reset already."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        steps += len(actions)
    return steps / (time.perf_counter() - start)


def resets_per_second(env_id: str, seconds: float, *, batch: int = 256) -> float:
    """`env.reset()` calls per second through `gymnasium.make(env_id)`."""
    env = gym.make(env_id)
    env.reset(seed=0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(batch):
            env.reset()
        count += batch
    return count / (time.perf_counter() - start)


def target_report(figures: dict[str, Any], targets: dict[str, float]) -> dict[str, dict[str, Any]]:
    """`{name: {"target", "measured", "met"}}` for each figure that has a target (higher is better); a figure left
    unmeasured (None or missing) reports None for both, not a missed target."""
    report = {}
    for name, target in targets.items():
        measured = figures.get(name)
        report[name] = {"target": target, "measured": measured,
                        "met": None if measured is None else measured >= target}
    return report


def add_llm_arguments(parser: argparse.ArgumentParser, *, episodes: int, max_turns: int) -> None:
    """The flags the LLM benchmarks share: the model, the text env, the rollout's size, device, threads and seed."""
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m or a local Hugging Face model folder")
    parser.add_argument("--env", default="creditgym/Sokoban-6x6-1b-v0", help="text env id (grid envs run as text)")
    parser.add_argument("--episodes", type=int, default=episodes, help="episodes in the batched rollout (groups of 8)")
    parser.add_argument("--max-turns", type=int, default=max_turns, help="turns per episode")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens generated per turn")
    parser.add_argument("--history", type=int, default=2, help="past turns kept in the prompt")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="first task seed")


def llm_rollout(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Any, Any, list[Any], float]:
    """Checks `add_llm_arguments`' flags (a bad one is a `parser.error`), loads the policy and collects one batched
    rollout in groups of up to 8 episodes: (policy, device, episodes, seconds the rollout took)."""
    import torch

    from creditgym.agents.config_cli import check_device
    from creditgym.agents.llm.policy import LLMPolicy
    from creditgym.agents.llm.rollout import RolloutCollector
    from creditgym.agents.llm.trainer import make_text_env
    from creditgym.agents.ppo import resolve_device
    from creditgym.envs import check_env_id
    from creditgym.llm.models import load_policy_model

    if min(args.episodes, args.max_turns, args.max_new_tokens, args.threads) < 1:
        parser.error("--episodes, --max-turns, --max-new-tokens and --threads must be at least 1")
    if args.history < 0 or args.seed < 0:
        parser.error("--history and --seed must be 0 or more")
    torch.set_num_threads(args.threads)
    try:
        check_env_id(args.env)
        check_device(args.device)
        device = resolve_device(args.device)
        model, tokenizer = load_policy_model(args.model, device=device)
    except ValueError as error:
        parser.error(str(error))
    policy = LLMPolicy(model, tokenizer, temperature=1.0, max_new_tokens=args.max_new_tokens, bf16=True)
    group = min(8, args.episodes)
    groups = max(1, args.episodes // group)
    collector = RolloutCollector([make_text_env(args.env) for _ in range(groups * group)], policy, group_size=group,
                                 max_turns=args.max_turns, history_turns=args.history, max_prompt_tokens=8192)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    start = time.perf_counter()
    episodes = collector.collect([args.seed + g for g in range(groups)], generator=generator)
    return policy, device, episodes, time.perf_counter() - start


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows: benchmark figures, and the
    exact numbers of a seeded run, hold for the CPU that produced them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
