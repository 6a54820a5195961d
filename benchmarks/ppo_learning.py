"""PPO learning efficiency on Sokoban: env steps and wall time to 50/80/90% success, per seed, plus held-out success.

Prints one JSON object. Run: `python benchmarks/ppo_learning.py --env creditgym/Sokoban-6x6-1b-v0 --seeds 1 2 3`.
Compare reward designs with `--shaping box_distance` (potential-based shaping) against the default sparse reward.
`--plot success.png` also draws the seeds' training success (mean and min-max band).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import gymnasium as gym

import creditgym
from creditgym.agents.compare import steps_to
from creditgym.agents.evaluate import evaluate
from creditgym.agents.plots import plot_seed_bands, read_metrics
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.benchmarking import cpu_model


def seed_config(env_id: str, seed: int, steps: int, shaping: str | None, env_kwargs: dict, runs_dir: str,
                overrides: dict, progress: bool = False) -> PPOConfig:
    # overwrite: the benchmark owns its runs folder, and a rerun with the same seed reproduces the same run.
    settings = dict(env_id=env_id, total_steps=steps, seed=seed, shaping=shaping, env_kwargs=env_kwargs,
                    runs_dir=runs_dir, progress=progress, tensorboard=False, checkpoint_every=0, overwrite=True)
    config = PPOConfig(**{**settings, **overrides})
    reward = config.learned_reward or config.shaping or "sparse"
    return replace(config, run_name=f"{env_id.split('/')[-1]}-{reward}-s{seed}")


def run_seed(config: PPOConfig, episodes: int, thresholds: Sequence[float] = (0.5, 0.8, 0.9),
             curves: list | None = None) -> dict:
    """Train and evaluate one seed; its metrics rows go into `curves` when given."""
    start = time.perf_counter()
    trainer = PPO(config)
    trainer.learn()
    wall = time.perf_counter() - start
    rows = read_metrics(trainer.run_dir)
    if curves is not None:
        curves.append(rows)
    sps = rows[-1]["charts/sps"]
    result = {"seed": config.seed, "wall_s": round(wall), "env_steps_per_s": round(sps),
              "held_out_success": evaluate(trainer.run_dir, episodes=episodes)["success_rate"],
              "held_out_success_sampled": evaluate(trainer.run_dir, episodes=episodes, greedy=False)["success_rate"]}
    warm_up = config.num_envs * (gym.spec(config.env_id).max_episode_steps or 0)
    for threshold in thresholds:
        reached = steps_to(rows, threshold, skip_steps=warm_up)
        result[f"steps_to_{int(threshold * 100)}"] = reached
        result[f"wall_s_to_{int(threshold * 100)}"] = None if reached is None else round(reached / sps)
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="creditgym/Sokoban-6x6-1b-v0", help="Sokoban id to train on")
    parser.add_argument("--steps", type=int, default=5_000_000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds to run one after another")
    parser.add_argument("--shaping", default=None, help="potential for shaping (e.g. box_distance); default sparse")
    parser.add_argument("--env-kwargs", type=json.loads, default={}, help='env keyword arguments as JSON')
    parser.add_argument("--config", type=json.loads, default={},
                        help='PPOConfig fields to override as JSON, e.g. \'{"hidden": 256, "shared_torso": true}\'')
    parser.add_argument("--episodes", type=int, default=200, help="held-out levels evaluated per seed")
    parser.add_argument("--runs-dir", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8, 0.9],
                        help="training success rates to report the env steps and wall time to reach")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show PPO's progress bar on stderr (--no-progress for logs)")
    parser.add_argument("--plot", help="also write a PNG of the seeds' training success here")
    args = parser.parse_args(argv)
    if not all(0 < threshold <= 1 for threshold in args.thresholds):
        parser.error(f"--thresholds are success rates in (0, 1], got {args.thresholds}")
    if args.episodes < 1:
        parser.error(f"--episodes must be at least 1, got {args.episodes}")
    if args.plot and not Path(args.plot).parent.is_dir():
        parser.error(f"--plot: no folder {Path(args.plot).parent}; create it or write the PNG elsewhere")
    try:  # every seed's settings, refused now rather than after the first seed has trained
        configs = [seed_config(args.env, seed, args.steps, args.shaping, args.env_kwargs, args.runs_dir or ".",
                               args.config, args.progress) for seed in args.seeds]
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    curves: list[list[dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        seeds = [run_seed(replace(config, runs_dir=args.runs_dir or scratch), args.episodes, args.thresholds, curves)
                 for config in configs]
    effective = {"env_id": args.env, "total_steps": args.steps, "shaping": args.shaping,
                 "env_kwargs": args.env_kwargs, "progress": args.progress, "tensorboard": False,
                 "checkpoint_every": 0, **args.config}
    result = {"benchmark": "ppo_learning", "creditgym": creditgym.__version__,
              "machine": cpu_model(), "settings": vars(args), "env_id": args.env,
              "shaping": args.config.get("shaping", args.shaping),
              "learned_reward": args.config.get("learned_reward"), "env_kwargs": args.env_kwargs,
              "steps_per_seed": args.steps,
              "config": {k: v for k, v in vars(PPOConfig(**effective)).items()
                         if k not in ("env_id", "runs_dir", "run_name", "seed")},
              "seeds": seeds}
    if args.plot:
        reward = configs[0].learned_reward or configs[0].shaping or "sparse"
        warm_up = configs[0].num_envs * (gym.spec(args.env).max_episode_steps or 0)
        plot_seed_bands({reward: curves}, args.plot, skip_steps=warm_up,
                        title=f"PPO on {args.env.split('/')[-1]}: {reward} ({len(args.seeds)} seeds)")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
