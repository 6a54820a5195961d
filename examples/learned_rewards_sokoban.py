"""PPO on 6x6 two-box Sokoban: sparse reward, SPA, implicit PRMs (PRIME, OPRL) and PBRS, at equal env steps.

Every variant trains with the same seeds, env-step budget and PPO settings (egocentric view and action mask, as
in `make demo`); only the reward differs:
- sparse: the env's own reward (gym-sokoban's: -0.1 per step, +1 per box on target, +10 when solved);
- SPA: + α·ĉ_t, a progress estimator trained online to make Σ_t ĉ_t predict success;
- PRIME / OPRL: + β log π_φ(a|s)/π_ref(a|s), an implicit PRM trained online with cross-entropy / trajectory DPO;
- PBRS: + γΦ(s') − Φ(s) with Φ = minus the box-to-target distance;
- PBRS-solver: the same with Φ = minus 0.1 × the solver's fewest moves to solve (exact; -10 once dead-locked);
- PBRS-solver-myopic: the exact potential at γ = 1 (dead-locks one move below the level's farthest live board) and an
  agent discount of 0, so each step's shaped reward alone is its advantage (heuristic-guided RL's shortest horizon).
  This variant alone changes a PPO setting, the agent's discount, which the exact potential makes safe to shorten.

Runs go two at a time in separate processes (one thread each). The script writes `results.json` (per variant and
seed: steps to 50% and 80% training success, final training success, held-out success, the env steps trained and the
precision trained at; every run's config, the --config overrides, the torch version and the CPU) and `success.png`
(mean over seeds with a min-max band) into `--out`.

    python examples/learned_rewards_sokoban.py --steps 4000000 --seeds 1 2 3 --out results/learned_rewards
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from rich.console import Console

import creditgym
from creditgym.agents.compare import steps_to
from creditgym.agents.evaluate import evaluate
from creditgym.agents.plots import plot_seed_bands, read_metrics
from creditgym.agents.ppo import LEARNED_REWARD_OPTIONS, METHOD_OPTIONS, PPO, SHAPING_OPTIONS, PPOConfig
from creditgym.benchmarking import cpu_model
from creditgym.demo import watch_runs
from creditgym.envs.sokoban.rules import REWARD_PRESETS

VARIANTS: dict[str, dict[str, Any]] = {
    "sparse": {},
    "SPA": {"learned_reward": "spa"},
    "PRIME": {"learned_reward": "prime"},
    "OPRL": {"learned_reward": "oprl"},
    "PBRS": {"shaping": "box_distance"},
    # The exact moves-to-solve potential, scaled onto the -0.1-per-move reward (Φ(dead-lock) = -10).
    "PBRS-solver": {"shaping": "solver_distance", "shaping_scale": 0.1},
    "PBRS-solver-myopic": {"shaping": "solver_distance_tight", "shaping_scale": 0.1, "shaping_gamma": 1.0,
                           "gamma": 0.0},
}


def _applicable(settings: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """The --config settings that apply to a variant: learned-reward and shaping options only where it has one (a
    config refuses them elsewhere, since they would do nothing there)."""
    merged = {**settings, **variant}
    method = merged.get("learned_reward")
    skip = (set(LEARNED_REWARD_OPTIONS) if method is None else set()) | (
        set(SHAPING_OPTIONS) if merged.get("shaping") is None else set()) | {
        name for name, methods in METHOD_OPTIONS.items() if method not in methods}
    return {name: value for name, value in settings.items() if name not in skip and name not in variant}


def _defining_keys(variants: Sequence[str]) -> list[str]:
    """The PPOConfig fields that make the chosen variants what they are: the reward method of every variant (sparse is
    the absence of one) and any setting a chosen variant fixes. --config may not set them, or a row labelled
    "sparse" could train with SPA."""
    return sorted({"learned_reward", "shaping"}.union(*(VARIANTS[label] for label in variants)))


def _train(config: PPOConfig) -> str:
    trainer = PPO(config)
    trainer.learn()
    return str(trainer.run_dir)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="creditgym/Sokoban-6x6-2b-v0", help="Sokoban id to train on")
    parser.add_argument("--steps", type=int, default=4_000_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds, one run per variant each")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="reward variants to compare")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one process and thread each)")
    parser.add_argument("--episodes", type=int, default=200, help="held-out levels evaluated per run")
    parser.add_argument("--rewards", default="gym-sokoban", choices=sorted(REWARD_PRESETS),
                        help="the env reward every variant starts from: gym-sokoban (-0.1 a step, +-1 per box on or "
                             "off a target, +10 solved) or outcome (no per-box rewards: only the solve pays)")
    parser.add_argument("--config", type=json.loads, default={},
                        help='PPOConfig fields to set for every variant, as JSON, e.g. \'{"update_epochs": 4}\'; '
                        "learned-reward and shaping options apply to the variants whose method reads them; the "
                        "fields that define a chosen variant (learned_reward, shaping, ...) come from --variants")
    parser.add_argument("--out", default="results/learned_rewards", help="folder for runs, results.json and the plot")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show each run's progress on stderr (--no-progress for logs)")
    args = parser.parse_args(argv)
    if min(args.workers, args.episodes) < 1:
        parser.error("--workers and --episodes must be at least 1")
    if len(set(args.seeds)) < len(args.seeds):  # the same run again: cost, and a seed count that overstates
        parser.error(f"--seeds repeats a seed: {args.seeds}")
    if not isinstance(args.config, dict):
        parser.error(f"--config must be a JSON object of PPOConfig fields, got {args.config!r}")
    fixed = [key for key in _defining_keys(args.variants) if key in args.config]
    if fixed:
        parser.error(f"--config may not set {', '.join(fixed)}: the variants define them; choose the rewards to "
                     "compare with --variants")

    out = Path(args.out)
    env_kwargs = {"obs_mode": "egocentric", "action_mask": True, "rewards": args.rewards}
    # Every run's settings, refused now rather than in a worker once other runs have trained.
    try:
        # overwrite: the example owns out/runs, and a rerun with the same seeds reproduces the same runs.
        # The overrides every variant takes (not the learned-reward or shaping ones) are part of the base, so it is
        # checked with them (a smaller num_envs allows a smaller --steps) and results.json's "config" shows them.
        base = PPOConfig(env_id=args.env, env_kwargs=env_kwargs, total_steps=args.steps, runs_dir=str(out / "runs"),
                         progress=False, checkpoint_every=0, tensorboard=False, overwrite=True,
                         **_applicable(args.config, VARIANTS["sparse"]))
        configs = {(label, seed): replace(base, seed=seed, run_name=f"{label}-s{seed}",
                                          **_applicable(args.config, VARIANTS[label]), **VARIANTS[label])
                   for label in args.variants for seed in args.seeds}
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {key: pool.submit(_train, config) for key, config in configs.items()}
        if args.progress:  # on stderr: stdout keeps only the summary JSON
            watch_runs(futures, {f"{label} s{seed}": config for (label, seed), config in configs.items()},
                       args.steps, Console(stderr=True))
        run_dirs = {key: future.result() for key, future in futures.items()}

    # Until every env has run one full time limit, only short (mostly solved) episodes have ended: skip that stretch.
    limit = gym.spec(args.env).max_episode_steps or 0
    warm_up = {key: config.num_envs * limit for key, config in configs.items()}
    results: dict[str, Any] = {"env_id": args.env, "steps": args.steps, "seeds": args.seeds,
                               "creditgym": creditgym.__version__, "torch": torch.__version__, "cpu": cpu_model(),
                               "config": asdict(base), "config_overrides": args.config,
                               "run_configs": {f"{label}-s{seed}": asdict(config)
                                               for (label, seed), config in configs.items()},
                               "variants": {label: VARIANTS[label] for label in args.variants}, "runs": {}}
    curves: dict[str, list[list[dict[str, float]]]] = {label: [] for label in args.variants}
    for (label, seed), run_dir in run_dirs.items():
        rows = read_metrics(run_dir)
        curves[label].append(rows)
        last = [row["charts/success_rate"] for row in rows if "charts/success_rate" in row][-5:]
        # What the run trained with: precision "auto" resolves per machine (bfloat16 on CPUs with bf16 support).
        record = json.loads((Path(run_dir) / "config.json").read_text())
        results["runs"].setdefault(label, {})[str(seed)] = {
            "steps_to_50": steps_to(rows, 0.5, skip_steps=warm_up[label, seed]),
            "steps_to_80": steps_to(rows, 0.8, skip_steps=warm_up[label, seed]),
            "train_success": sum(last) / max(1, len(last)),
            "held_out_success_sampled": evaluate(run_dir, episodes=args.episodes, greedy=False)["success_rate"],
            "held_out_success_greedy": evaluate(run_dir, episodes=args.episodes)["success_rate"],
            "env_steps_per_s": rows[-1]["charts/sps"],
            "env_steps": int(rows[-1]["global_step"]),  # whole rollouts: up to one rollout short of --steps
            "warm_up_steps": warm_up[label, seed],  # left out of steps_to and the plot
            "precision": record["precision"], "torch": record["torch"], "device": record["device"],
        }
    results["summary"] = {label: _summary(runs) for label, runs in results["runs"].items()}
    results["wall_s"] = round(time.perf_counter() - start)
    plot_seed_bands(curves, out / "success.png", skip_steps=max(warm_up.values()),
                    title=f"PPO on {args.env.split('/')[-1]}: reward designs ({len(args.seeds)} seeds)")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["summary"], indent=2))
    return results


def _summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds; steps-to thresholds count only seeds that got there (`reached` says how many)."""
    out: dict[str, Any] = {}
    for key in ("train_success", "held_out_success_sampled", "held_out_success_greedy", "env_steps_per_s"):
        out[key] = round(statistics.mean(run[key] for run in runs.values()), 3)
    for key in ("steps_to_50", "steps_to_80"):
        reached = [run[key] for run in runs.values() if run[key] is not None]
        out[key] = round(statistics.mean(reached)) if reached else None
        out[f"{key}_reached"] = f"{len(reached)}/{len(runs)}"
    return out


if __name__ == "__main__":
    main()
