"""How sparse is Sokoban's reward? Random play's solve rate per variant and time limit; prints one JSON object.

A credit-assignment method can only beat the sparse reward where random play rarely solves a room: when it often
does, every rollout already holds many successes and PPO's critic learns which moves led to them. This reports,
for each shipped variant, the share of episodes that uniformly random play solves within each time limit (with
the action mask: uniform over the moves that change the board; without: uniform over all four), and the
solver's optimal solution length over the first levels of the bank.

Run: ``.venv/bin/python benchmarks/sokoban_random_play.py`` (about a minute on one core).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence

import gymnasium as gym
import torch

import creditgym
from creditgym.benchmarking import cpu_model
from creditgym.envs.sokoban.bank import load_bank
from creditgym.envs.sokoban.solver import solve


def random_solve_rate(env_id: str, time_limit: int, *, masked: bool, num_envs: int, steps: int, seed: int) -> dict:
    """Share of finished episodes that random play solved, over `steps` batched steps of `num_envs` boards."""
    envs = gym.make_vec(env_id, num_envs=num_envs, action_mask=masked, rewards="outcome",
                        max_episode_steps=time_limit)
    _, info = envs.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    solved = finished = 0
    for _ in range(steps):
        allowed = (torch.as_tensor(info["action_mask"]).float() if masked
                   else torch.ones(num_envs, int(envs.single_action_space.n)))
        # a board with no effective move keeps a tiny weight on every action, so sampling never fails
        actions = torch.multinomial(allowed + 1e-9, 1, generator=generator).squeeze(1)
        _, _, terminated, truncated, info = envs.step(actions)
        finished += int((terminated | truncated).sum())
        solved += int(terminated.sum())
    envs.close()
    return {"episodes": finished, "solve_rate": round(solved / max(finished, 1), 4)}


def optimal_lengths(variant: str, levels: int) -> dict:
    lengths = [len(plan) for plan in (solve(level) for level in list(load_bank(variant))[:levels])
               if plan is not None]
    return {"levels": len(lengths), "mean": round(statistics.fmean(lengths), 2), "median": statistics.median(lengths),
            "max": max(lengths)}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["6x6-1b", "6x6-2b", "8x8-2b", "10x10-3b"],
                        help="shipped Sokoban variants (creditgym/Sokoban-VARIANT-v0)")
    parser.add_argument("--time-limits", type=int, nargs="+", default=[30, 60, 0],
                        help="episode time limits to try; 0 means the variant's registered limit")
    parser.add_argument("--num-envs", type=int, default=1024, help="boards played at once")
    parser.add_argument("--steps", type=int, default=1000, help="batched random steps per measurement")
    parser.add_argument("--solve-levels", type=int, default=200, help="bank levels solved for the optimal lengths")
    parser.add_argument("--seed", type=int, default=0, help="seeds the level draw and the random actions")
    args = parser.parse_args(argv)
    if min(args.time_limits) < 0 or min(args.num_envs, args.steps, args.solve_levels) < 1:
        parser.error("--time-limits must be 0 or more; --num-envs, --steps and --solve-levels at least 1")
    unknown = sorted(set(args.variants) - {spec.split("Sokoban-")[1][:-3] for spec in gym.registry
                                           if spec.startswith("creditgym/Sokoban-")})
    if unknown:
        parser.error(f"unknown variants {unknown}; use e.g. 6x6-1b, 6x6-2b, 8x8-2b, 10x10-3b")
    torch.set_num_threads(1)
    result: dict = {"benchmark": "sokoban_random_play", "creditgym": creditgym.__version__,
                    "machine": cpu_model(), "threads": torch.get_num_threads(),
                    "settings": vars(args), "num_envs": args.num_envs, "steps": args.steps, "seed": args.seed,
                    "variants": {}}
    for variant in args.variants:
        env_id = f"creditgym/Sokoban-{variant}-v0"
        registered = gym.spec(env_id).max_episode_steps
        rows = []
        for limit in args.time_limits:
            limit = limit or registered
            rows.append({"time_limit": limit, **{
                name: random_solve_rate(env_id, limit, masked=masked, num_envs=args.num_envs, steps=args.steps,
                                        seed=args.seed)["solve_rate"]
                for name, masked in (("solve_rate_masked", True), ("solve_rate_uniform", False))}})
        result["variants"][variant] = {"registered_time_limit": registered, "random_play": rows,
                                       "optimal_solution_length": optimal_lengths(variant, args.solve_levels)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
