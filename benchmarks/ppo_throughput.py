"""End-to-end PPO throughput on 6x6 Sokoban: creditgym's PPO against Stable-Baselines3's PPO, same run.

Prints one JSON object. Run: `python benchmarks/ppo_throughput.py` (add `--device cuda` on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence

import gymnasium as gym
import torch

import creditgym
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.benchmarking import cpu_model

ENV_ID = "creditgym/Sokoban-6x6-1b-v0"
TARGET_SPS = 50_000
TARGET_RATIO = 15.0


def creditgym_config(steps: int, device: str, policy: str, threads: int, env_kwargs: dict, overrides: dict,
                     runs_dir: str) -> PPOConfig:
    return PPOConfig(**{**dict(env_id=ENV_ID, env_kwargs=env_kwargs, total_steps=steps, device=device, policy=policy,
                               threads=threads, progress=False, tensorboard=False, runs_dir=runs_dir, run_name="bench",
                               checkpoint_every=0), **overrides})


def creditgym_sps(steps: int, device: str, policy: str, threads: int, env_kwargs: dict, overrides: dict) -> float:
    with tempfile.TemporaryDirectory() as runs:
        config = creditgym_config(steps, device, policy, threads, env_kwargs, overrides, runs)
        trainer = PPO(config)
        trainer.learn(until_steps=config.batch_size)  # warm-up update, not timed
        # The training loop's own rate (synchronised on CUDA by the .item() calls of its logging), without the
        # one-off checkpoint and matplotlib curve that learn() writes once the run is over.
        return trainer.learn()["charts/sps"]


def sb3_sps(steps: int, num_envs: int, threads: int, env_kwargs: dict) -> float:
    try:
        from stable_baselines3 import PPO as SB3PPO
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.logger import configure
    except ImportError:
        raise SystemExit("the SB3 baseline needs stable-baselines3: pip install 'creditgym[bench]', or pass "
                         "--skip-sb3 to measure creditgym only") from None

    torch.set_num_threads(threads)
    envs = make_vec_env(lambda: gym.make(ENV_ID, **env_kwargs), n_envs=num_envs, seed=0)
    # SB3's own defaults (n_steps 2048, batch 64, 10 epochs), as its users run it.
    model = SB3PPO("MlpPolicy", envs, seed=0, device="cpu", verbose=0)
    with tempfile.TemporaryDirectory() as folder:  # SB3's default logger leaves an empty /tmp/SB3-<time> per run
        model.set_logger(configure(folder, []))
    model.learn(total_timesteps=num_envs * 2048)  # warm-up: one rollout and update
    start = time.perf_counter()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="timed env steps for creditgym's PPO")
    parser.add_argument("--sb3-steps", type=int, default=65_536, help="timed env steps for SB3's PPO")
    parser.add_argument("--sb3-envs", type=int, default=8, help="SB3 DummyVecEnv size")
    parser.add_argument("--device", default="cpu", help="creditgym PPO device: cpu or cuda")
    parser.add_argument("--policy", default="mlp", choices=["mlp", "cnn"], help="creditgym PPO network")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both")
    parser.add_argument("--env-kwargs", type=json.loads, default={},
                        help='env keyword arguments as JSON for both, e.g. \'{"obs_mode": "egocentric"}\'')
    parser.add_argument("--config", type=json.loads, default={},
                        help='creditgym PPOConfig fields to override as JSON, e.g. \'{"precision": "bfloat16"}\'')
    parser.add_argument("--skip-sb3", action="store_true", help="measure creditgym only (e.g. on a GPU box)")
    args = parser.parse_args(argv)
    if min(args.sb3_steps, args.sb3_envs) < 1:
        parser.error("--sb3-steps and --sb3-envs must be at least 1")
    try:  # the settings PPOConfig refuses, refused before anything is timed
        config = creditgym_config(args.steps, args.device, args.policy, args.threads, args.env_kwargs, args.config, ".")
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if config.num_updates < 2:  # the first update is the untimed warm-up
        parser.error(f"--steps must cover two updates of {config.batch_size} env steps, got {args.steps}")
    ours = creditgym_sps(args.steps, args.device, args.policy, args.threads, args.env_kwargs, args.config)
    result: dict = {
        "benchmark": "ppo_throughput",
        "env_id": ENV_ID,
        "creditgym": creditgym.__version__,
        "torch": torch.__version__,
        "machine": cpu_model(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "threads": args.threads,
        "settings": vars(args),
        "policy": args.policy,
        "env_kwargs": args.env_kwargs,
        "config_overrides": args.config,
        "creditgym_ppo_env_steps_per_s": round(ours),
        "target_env_steps_per_s": TARGET_SPS,
        "met_sps": ours >= TARGET_SPS,
    }
    if not args.skip_sb3:
        theirs = sb3_sps(args.sb3_steps, args.sb3_envs, args.threads, args.env_kwargs)
        result.update({"sb3_ppo_env_steps_per_s": round(theirs), "ratio": round(ours / theirs, 1),
                       "sb3_setup": f"DummyVecEnv x{args.sb3_envs}, SB3 default PPO hyperparameters",
                       "target_ratio": TARGET_RATIO, "met_ratio": ours / theirs >= TARGET_RATIO})
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
