"""Writing and reading trajectory records: CPU time and bytes per recorded step, plain and gzipped; prints JSON.

Records `--episodes` episodes of random play (seeded) with `record_episodes`, then writes them with
`TrajectoryWriter` to a plain and a .gz file and reads each back with `read_trajectories`, each `--repeats` times
(the fastest counts). By default Sokoban 6x6 two-box with the egocentric view and action mask, as PPO records it
(`--record-envs`): a one-hot board a step, the action mask and the env's state. The figures are for the record
format this creditgym writes (`format` in the output); run the script with an older creditgym on the PYTHONPATH to
compare formats.

Run: ``.venv/bin/python benchmarks/trajectory_io.py --episodes 300``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

import creditgym
from creditgym.benchmarking import cpu_model
from creditgym.trajectories import FORMAT, TrajectoryWriter, read_trajectories, record_episodes


def _fastest(repeats: int, run: Any) -> float:
    """The least CPU time of `repeats` calls of `run`, in seconds (the machine is shared: the least is the cost)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def measure(episodes: Sequence[Any], folder: Path, repeats: int) -> dict[str, float]:
    steps = sum(len(episode.steps) for episode in episodes)
    out: dict[str, float] = {}
    for name in ("plain", "gzip"):
        path = folder / ("t.jsonl" if name == "plain" else "t.jsonl.gz")

        def write(path: Path = path) -> None:
            with TrajectoryWriter(path, overwrite=True) as writer:
                for episode in episodes:
                    writer.write(episode)

        out[f"{name}_write_us_per_step"] = round(_fastest(repeats, write) / steps * 1e6, 1)
        out[f"{name}_bytes_per_step"] = round(path.stat().st_size / steps, 1)
        out[f"{name}_read_us_per_step"] = round(
            _fastest(repeats, lambda path=path: sum(1 for _ in read_trajectories(path))) / steps * 1e6, 1)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="creditgym/Sokoban-6x6-2b-v0", help="env id to record")
    parser.add_argument("--env-kwargs", type=json.loads, default={"obs_mode": "egocentric", "action_mask": True},
                        help='JSON keyword arguments for gymnasium.make (default {"obs_mode": "egocentric", '
                             '"action_mask": true})')
    parser.add_argument("--episodes", type=int, default=300, help="episodes of random play to record")
    parser.add_argument("--repeats", type=int, default=3, help="writes and reads of each file; the fastest counts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the recorded episodes")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.repeats < 1:
        parser.error("--episodes and --repeats must be at least 1")
    try:
        env = gym.make(args.env, **args.env_kwargs)
    except Exception as error:  # an unknown id or keyword: say so in one line
        parser.error(f"cannot make --env {args.env} with --env-kwargs {args.env_kwargs}: {error}")
    episodes = record_episodes(env, lambda obs, info: env.action_space.sample(), args.episodes, seed=args.seed)
    env.close()
    with tempfile.TemporaryDirectory() as folder:
        figures = measure(episodes, Path(folder), args.repeats)
    result = {"benchmark": "trajectory_io", "format": FORMAT, "creditgym": creditgym.__version__, "env": args.env,
              "env_kwargs": args.env_kwargs, "episodes": len(episodes),
              "steps": sum(len(episode.steps) for episode in episodes), "cpu": cpu_model(), **figures}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
