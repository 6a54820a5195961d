"""The main job (`make demo`): PPO on 6x6 Sokoban with sparse reward and with potential-based shaping.

Both runs share the seed and the env-step budget and train side by side (one process and one thread each, so
two cores run them at full speed). Each is then evaluated on held-out levels. The table reports success
at the budget and the steps each needed to reach 80% training success; one PNG holds both learning curves.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import creditgym
from creditgym.agents.compare import steps_to
from creditgym.agents.evaluate import evaluate, write_result
from creditgym.agents.plots import plot_learning_curves, read_metrics
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.agents.runs import write_text_atomically
from creditgym.render import Rendered, render_file

VARIANTS = {"sparse": None, "PBRS box distance": "box_distance"}


#: the greedy evaluation's episodes, kept in each run folder (`creditgym render` draws more of them)
EVAL_RECORD = "eval-episodes.jsonl.gz"
#: held-out episodes drawn as GIFs into each run's watch/ folder
WATCHED = 4


def demo_config(total_steps: int, seed: int, runs_dir: str) -> PPOConfig:
    # The room seen from the player, and a mask of the moves that change the board: with these an MLP learns
    # Sokoban several times faster than from the absolute one-hot grid (docs/benchmarks.md, PPO learning).
    return PPOConfig(env_id="creditgym/Sokoban-6x6-1b-v0", env_kwargs={"obs_mode": "egocentric", "action_mask": True},
                     total_steps=total_steps, seed=seed, runs_dir=runs_dir, progress=False, checkpoint_every=0,
                     overwrite=True)  # the demo's fixed run folders: running it again replaces them


def _train(config: PPOConfig) -> str:
    PPO(config).learn()
    return str(Path(config.runs_dir) / str(config.run_name))


def run_demo(*, total_steps: int = 3_000_000, seed: int = 1, runs_dir: str = "runs/demo",
             eval_episodes: int = 200, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    base = demo_config(total_steps, seed, runs_dir)
    configs = {label: replace(base, shaping=shaping, run_name=f"{'sparse' if shaping is None else shaping}-s{seed}")
               for label, shaping in VARIANTS.items()}
    console.print(f"Training PPO on {base.env_id}: {total_steps:,} env steps per run, seed {seed}, "
                  f"sparse reward vs potential-based shaping, side by side.")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(configs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {label: pool.submit(_train, config) for label, config in configs.items()}
        watch_runs(futures, configs, total_steps, console)
        run_dirs = {label: future.result() for label, future in futures.items()}
    wall = time.perf_counter() - start

    table = Table()
    for column in ("reward", "train success (last)", "held-out success: sampled", "greedy", "steps to 50%",
                   "steps to 80%", "env steps/s"):
        table.add_column(column, justify="right")
    # The versions each run's config.json records (PPO's run record): the runs are spawned from this Python.
    summary: dict[str, Any] = {"env_id": base.env_id, "total_steps": total_steps, "seed": seed,
                               "creditgym": creditgym.__version__, "torch": torch.__version__, "runs": {}}
    curves = {}
    watch: dict[str, list[Rendered]] = {}
    warm_up = base.num_envs * (gym.spec(base.env_id).max_episode_steps or 0)
    for label, run_dir in run_dirs.items():
        rows = read_metrics(run_dir)
        curves[label] = rows
        held_out = evaluate(run_dir, episodes=eval_episodes, greedy=False)
        greedy = evaluate(run_dir, episodes=eval_episodes, record=Path(run_dir) / EVAL_RECORD)
        watch[label] = render_file(Path(run_dir) / EVAL_RECORD, Path(run_dir) / "watch", episodes=WATCHED)
        # The files `creditgym eval RUN` and `creditgym eval RUN --sample` write, so either can redo one.
        write_result(greedy, run_dir)
        write_result(held_out, run_dir, "sampled")
        last = [row["charts/success_rate"] for row in rows if "charts/success_rate" in row][-5:]
        # `precision: auto` resolves per machine: what each run trained with is in its own run record.
        run_record = json.loads((Path(run_dir) / "config.json").read_text())
        record = {
            "run_dir": run_dir,
            "device": run_record["device"],
            "precision": run_record["precision"],
            "train_success": sum(last) / max(1, len(last)),
            "held_out_success": held_out["success_rate"],
            "held_out_success_greedy": greedy["success_rate"],
            "steps_to_50": steps_to(rows, 0.5, skip_steps=warm_up),
            "steps_to_80": steps_to(rows, 0.8, skip_steps=warm_up),
            "sps": rows[-1]["charts/sps"],
            # PPO trains whole rollouts, so a budget that is no multiple of one trains fewer steps than total_steps
            "env_steps": int(rows[-1]["global_step"]),
        }
        summary["runs"][label] = record
        table.add_row(label, f"{record['train_success']:.0%}", f"{record['held_out_success']:.0%}",
                      f"{record['held_out_success_greedy']:.0%}", _steps(record["steps_to_50"]),
                      _steps(record["steps_to_80"]), f"{record['sps']:,.0f}")
    trained = " / ".join(f"{steps:,}" for steps in sorted({record["env_steps"] for record in summary["runs"].values()}))
    table.title = f"PPO on {base.env_id}, {trained} env steps, seed {seed} ({wall:.0f} s)"
    console.print(table)
    figure = plot_learning_curves(curves, Path(runs_dir) / "sparse_vs_shaped.png", skip_steps=warm_up,
                                  title=f"PPO on {base.env_id}: sparse vs PBRS (seed {seed})")
    write_text_atomically(Path(runs_dir) / "summary.json", json.dumps(summary, indent=2), what="summary")
    console.print(f"Learning curves: {figure}\nRuns and evaluations: {runs_dir}/")
    for label, rendered in watch.items():
        solved = sum(item.solved for item in rendered)
        console.print(f"Watch {label} play {len(rendered)} held-out levels greedily ({solved} solved): "
                      f"{rendered[0].transcript.parent}/", highlight=False, soft_wrap=True)
    return summary


def _steps(value: int | None) -> str:
    return "not reached" if value is None else f"{value:,}"


def watch_runs(futures: dict, configs: dict[str, PPOConfig], total_steps: int, console: Console | None = None) -> None:
    """Live progress on `console` for PPO runs in other processes (`futures` and `configs` by label), read from their
    metrics files until every future is done."""
    columns = (TextColumn("{task.description:>18}"), BarColumn(), TextColumn("{task.completed:>10,}"),
               TextColumn("success {task.fields[success]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        tasks = {label: progress.add_task(label, total=total_steps, success="-") for label in configs}
        while True:
            finished = all(future.done() for future in futures.values())
            for label, config in configs.items():
                path = Path(config.runs_dir) / str(config.run_name) / "metrics.jsonl"
                rows = read_metrics(path.parent) if path.exists() else []
                rates = [row["charts/success_rate"] for row in rows[-5:] if "charts/success_rate" in row]
                success = f"{sum(rates) / len(rates):.0%}" if rates else "-"
                progress.update(tasks[label], completed=rows[-1]["global_step"] if rows else 0, success=success)
            if finished:  # one pass after the last run ended, so every bar shows where its run stopped
                break
            time.sleep(1.0)
