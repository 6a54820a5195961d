"""The `creditgym` command line: list, play, train, eval, bench, make-banks, demo, rescore, render."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import shlex
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import creditgym
from creditgym.agents.compare import warm_up_steps
from creditgym.agents.config_cli import add_config_arguments, saved_run_config
from creditgym.agents.llm.config import ALGOS as LLM_ALGOS
from creditgym.agents.llm.config import LLMTrainConfig, saved_before_fields
from creditgym.agents.ppo import PPOConfig, resolve_device
from creditgym.agents.runs import outcome_text, read_checkpoint, write_text_atomically
from creditgym.envs import DESCRIPTIONS, check_env_id, obs_modes, registered_ids
from creditgym.envs.sokoban.make_banks import add_arguments as add_make_banks_arguments
from creditgym.llm.chat import ChatModelError
from creditgym.llm.openai import TOKEN_LIMIT_FIELDS
from creditgym.render import SELECTIONS
from creditgym.trajectories import ESTIMATORS, is_gzipped, offline_potential_names

BENCHMARK_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
_PIPED_WIDTH = 160
QUIT_WORDS = {"quit", "exit", "q", ":q"}


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    table = Table(title=f"creditgym {creditgym.__version__} environments")
    table.add_column("id", style="bold")
    table.add_column("description")
    for env_id in registered_ids():
        table.add_row(env_id, DESCRIPTIONS.get(env_id, ""))
    console.print(table)
    return 0


def cmd_play(args: argparse.Namespace, console: Console) -> int:
    """A person plays any text env, or a grid env through its text view, one typed action per line."""
    try:
        check_env_id(args.env_id)
    except ValueError as err:
        console.print(str(err), style="red", markup=False)
        return 2
    if args.seed < 0:
        console.print(f"--seed must be 0 or more (gymnasium's rule), got {args.seed}", style="red")
        return 2
    kwargs = {"obs_mode": "text"} if "text" in obs_modes(args.env_id) else {}
    env = gym.make(args.env_id, **kwargs)
    if not isinstance(env.action_space, gym.spaces.Text):
        console.print(f"[red]{args.env_id} has no text view[/red], so it cannot be played from a terminal")
        return 2
    seed = args.seed
    obs, info = env.reset(seed=seed)
    console.print(info.get("instructions", ""), markup=False, highlight=False)
    console.print("Type an action per line; 'reset' starts a new episode, 'quit' leaves.\n", style="dim")
    total, episodes = 0.0, 0
    while True:
        console.print(obs, markup=False, highlight=False)
        if info.get("available_actions"):
            console.print(f"actions: {', '.join(map(str, info['available_actions']))}", style="dim", markup=False)
        try:
            line = input("> ")
        except EOFError:
            break
        if line.strip().lower() in QUIT_WORDS:
            break
        if line.strip().lower() == "reset":
            seed, total = seed + 1, 0.0
            obs, info = env.reset(seed=seed)
            continue
        obs, reward, terminated, truncated, info = env.step(line)
        total += float(reward)
        parts = ", ".join(f"{name} {value:+.2f}" for name, value in info["reward_components"].items())
        console.print(f"reward {reward:+.2f} ({parts}); return so far {total:+.2f}", style="cyan", markup=False)
        if terminated or truncated:
            episodes += 1
            outcome = "success" if info.get("success") else ("time limit" if truncated else "episode over")
            console.print(obs, markup=False, highlight=False)
            console.print(f"[bold]{outcome}[/bold]: return {total:+.2f}. Next episode (quit to leave).\n")
            seed, total = seed + 1, 0.0
            obs, info = env.reset(seed=seed)
    console.print(f"played {episodes} finished episode(s)")
    return 0


def _benchmarks() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BENCHMARK_DIR.glob("*.py")) if not path.stem.startswith("_")}


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    available = _benchmarks()
    if not available:
        console.print(f"[red]no benchmarks found in {BENCHMARK_DIR}[/red]: `creditgym bench` runs the scripts of a "
                      "source checkout; clone the repository and install it with `make test` or `pip install -e .`")
        return 2
    if args.list:
        for name in available:
            console.print(name)
        return 0
    names = args.names or ["sokoban_throughput", "sokoban_generator"]
    unknown = [name for name in names if name not in available]
    if unknown:
        console.print(f"[red]unknown benchmark(s) {escape(str(unknown))}[/red]; available: {', '.join(available)}")
        return 2
    if len(names) == 1:
        _load_benchmark(name=names[0], path=available[names[0]]).main(args.bench_args)
        return 0
    # Several benchmarks make one JSON document on stdout, {name: result}, so `json.load` and `jq` read it whole;
    # each benchmark's own printout goes to stderr meanwhile, so a person watching still sees each result as it ends.
    results = {}
    for name in names:
        module = _load_benchmark(name=name, path=available[name])
        with contextlib.redirect_stdout(sys.stderr):
            results[name] = module.main(args.bench_args)
    print(json.dumps(results, indent=2))
    return 0


def _load_benchmark(*, name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"creditgym_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Where and how a run trains, not what it learns: a resume may change these, besides extending its budget.
RESUMABLE_WHERE = ("progress", "ray_address", "ray_wait_for_cpus", "threads", "device")


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from creditgym.agents.ppo import PPO, PPOConfig

    if args.resume:
        saved = _run_record(Path(args.resume))["config"].get("algo", "ppo")
        if saved not in ("ppo", *LLM_ALGOS):
            raise ValueError(f"{Path(args.resume) / 'config.json'} names algo {saved!r}, not one of ppo, "
                             f"{', '.join(LLM_ALGOS)}; it was edited or damaged, so it cannot be resumed")
        if args.algo not in (None, saved):
            raise ValueError(f"{args.resume} is a {saved} run; resume it without --algo, or with --algo {saved}")
        args.algo = saved
    args.algo = args.algo or "ppo"
    if args.algo in LLM_ALGOS:
        return _train_llm(args, console)
    llm_only = sorted(_flags_given(args, _LLM_ONLY_FIELDS))
    if llm_only:
        hint = " (PPO records the episodes of its first N envs with --record-envs N)" if (
            "--record-trajectories" in llm_only) else ""
        fix = ("drop them: the run resumes as PPO (a PPO run's budget is --total-steps)" if args.resume else
               f"drop them or pass e.g. --algo grpo --model smollm2-135m{hint}")
        console.print(f"[red]error:[/red] {', '.join(llm_only)} only {_apply(llm_only)} to LLM algos "
                      f"({', '.join(LLM_ALGOS)}); "
                      f"{fix}", highlight=False, soft_wrap=True)
        return 2
    return _train_and_report(PPOConfig, PPO, args, console,
                             extendable=(*RESUMABLE_WHERE, "total_steps"),
                             rate=("charts/sps", "steps/s"))


_PPO_FIELDS = {field.name for field in dataclasses.fields(PPOConfig)}
_LLM_FIELDS = {field.name for field in dataclasses.fields(LLMTrainConfig)}
_LLM_ONLY_FIELDS = _LLM_FIELDS - _PPO_FIELDS - {"algo"}


class _ShowDefaults(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help unless the help names its default or it has none worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _apply(flags: Sequence[str]) -> str:
    return "applies" if len(flags) == 1 else "apply"


def _run_record(run_dir: Path) -> dict[str, Any]:
    """A run folder's config.json, with errors that name the file and say what --resume takes."""
    if run_dir.is_file():
        raise ValueError(f"--resume takes a run folder, such as {run_dir.parent}, not the file {run_dir.name}")
    path = run_dir / "config.json"
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as err:
        if not (run_dir / "checkpoint.pt").is_file():
            if isinstance(err, FileNotFoundError):
                raise ValueError(f"{run_dir} has no config.json; --resume takes a folder written by creditgym "
                                 "train") from None
            raise ValueError(f"{path} is not valid JSON ({err}); it cannot be resumed") from None
        # The checkpoint holds the config too: a run whose config.json was lost or damaged still resumes.
        state = read_checkpoint(run_dir, torch.device("cpu"))[1]
        warnings.warn(f"{path} is missing or damaged ({err}); the run's config is read from its checkpoint, and "
                      "config.json is written anew as the run resumes", stacklevel=2)
        record = {"config": state["config"], "device": state["device"]}
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{path} holds no 'config' mapping; it was not written by creditgym train")
    return record


def _resumed_config(cls: type, args: argparse.Namespace, *, extendable: tuple[str, ...]) -> Any:
    """The run's own config.json, where only the flags in `extendable` (e.g. a longer budget) may change."""
    run_dir = Path(args.resume)
    record = _run_record(run_dir)
    fixed = _flags_given(args, {field.name for field in dataclasses.fields(cls)} - set(extendable) - {"algo"})
    if fixed or args.config:
        given = ", ".join(fixed + (["--config"] if args.config else []))
        allowed = ", ".join("--" + name.replace("_", "-") for name in extendable)
        raise ValueError(f"{given} cannot change when resuming: the run continues with its own config. Only "
                         f"{allowed} may be given; start a new run to change anything else")
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(record["config"]) - fields)
    if unknown:
        raise ValueError(f"{run_dir / 'config.json'} has config keys {unknown} that {cls.__name__} does not take "
                         "(the file was edited, or written by another creditgym version); remove them to resume")
    overrides = {name: value for name, value in vars(args).items() if name in extendable}
    if "device" not in overrides:
        overrides["device"] = _resume_device(run_dir, record)
    saved = saved_before_fields(record["config"]) if cls is LLMTrainConfig else record["config"]
    with saved_run_config(run_dir / "config.json"):
        return cls(**{**saved, "run_name": run_dir.name, "runs_dir": str(run_dir.parent), **overrides})


def _resume_device(run_dir: Path, record: dict[str, Any]) -> str:
    """The device a resume without --device runs on: the run's own, where its checkpoint restores exactly."""
    setting = record["config"].get("device", "auto")
    used = record.get("device", setting)  # what the setting resolved to where the run trained
    if used == "auto":
        return setting
    try:
        valid = isinstance(used, str) and torch.device(used) is not None
    except RuntimeError:
        valid = False
    if not valid:
        raise ValueError(f"{run_dir / 'config.json'} records the device {used!r}, which is not a torch device; "
                         "pass --device cpu (or cuda) to resume the run there")
    if used.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{run_dir} was trained on {used}, and torch sees no CUDA device here; to continue it on the "
                         "CPU pass --device cpu (the weights, optimiser and env state carry over, but the GPU's random "
                         "generators are re-seeded, so the resume is not bit-exact), or resume it on a machine with "
                         "CUDA")
    if setting == "auto" and resolve_device("auto").type != torch.device(used).type:
        return torch.device(used).type  # auto would now pick another device: moving is asked for with --device
    return setting


def _flags_given(args: argparse.Namespace, names: set[str]) -> list[str]:
    return ["--" + name.replace("_", "-") for name in vars(args) if name in names]


def _train_llm(args: argparse.Namespace, console: Console) -> int:
    """`creditgym train --algo grpo|drgrpo|rloo|reinforce_pp|ppo_llm --model ...`: LLMTrainer on a text env."""
    from creditgym.agents.llm.trainer import LLMTrainer

    ppo_only = sorted(_flags_given(args, _PPO_FIELDS - _LLM_FIELDS))
    if ppo_only:
        console.print(f"[red]error:[/red] {', '.join(ppo_only)} only {_apply(ppo_only)} to --algo ppo; LLM trainers "
                      "take the "
                      "flags of LLMTrainConfig (e.g. --iterations, --num-groups, --group-size)"
                      + (" and an LLM run's budget is --iterations" if args.resume else ""),
                      highlight=False, soft_wrap=True)
        return 2
    return _train_and_report(LLMTrainConfig, LLMTrainer, args, console,
                             extendable=(*RESUMABLE_WHERE, "iterations"),
                             rate=("charts/tokens_per_s", "generated tokens/s"))


def _train_and_report(config_cls: type, trainer_cls: type, args: argparse.Namespace, console: Console, *,
                      extendable: tuple[str, ...], rate: tuple[str, str]) -> int:
    """Build the config (from the flags, or the resumed run's own), train, and print where the run went."""
    from creditgym.agents.config_cli import config_from_args

    trainer = None
    try:
        if args.resume:
            trainer = trainer_cls(_resumed_config(config_cls, args, extendable=extendable), resume=args.resume)
        else:
            trainer = trainer_cls(config_from_args(config_cls, args, args.config))
        metrics = trainer.learn()
    except KeyboardInterrupt as stop:  # the trainer saved its last completed update, unless the signal came twice
        if trainer is None:
            console.print("interrupted before training started; nothing was written")
        elif (trainer.run_dir / "checkpoint.pt").exists():
            console.print(f"interrupted: {trainer.run_dir} holds the run up to its last checkpoint; continue it with: "
                          f"creditgym train --resume {shlex.quote(str(trainer.run_dir))}", highlight=False,
                          soft_wrap=True)
        else:
            console.print(f"interrupted before {trainer.run_dir} had a checkpoint; start the run again (with "
                          "--overwrite to reuse its folder)", highlight=False, soft_wrap=True)
        return 128 + getattr(stop, "signum", signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM, as a shell expects
    finally:
        if trainer is not None:
            trainer.close()
    if args.resume and not metrics:
        console.print(f"{trainer.run_dir} had already reached its budget, so nothing was trained; raise --total-steps "
                      "(PPO) or --iterations (LLM algos) above it to continue the run", highlight=False, soft_wrap=True)
        return 0
    key, unit = rate
    finished = math.isfinite(metrics.get("charts/success_rate", 0.0))  # NaN: no episode finished in the update
    success_text = (outcome_text(metrics) if finished else None) or "no episode finished yet"
    # the fields it reads (asdict would deep-copy env_kwargs, which may hold a whole level bank)
    fields = ("algo", "num_envs", "env_kwargs", "env_id")
    warm_up = warm_up_steps({name: getattr(trainer.config, name) for name in fields if hasattr(trainer.config, name)})
    if finished and "charts/success_rate" in metrics and metrics.get("global_step", 0) <= warm_up:
        # Only episodes that ended early have finished, and early ends are mostly solves.
        success_text += (f" of the episodes that ended early (no env has reached its time limit yet: that takes "
                         f"{warm_up:,} env steps; creditgym eval says how the policy does)")
    console.print(f"run written to {trainer.run_dir}: {success_text}, {metrics.get(key, 0):,.0f} {unit}")
    run = shlex.quote(str(trainer.run_dir))
    console.print(f"evaluate it and watch it play: creditgym eval {run} --record {run}/eval-episodes.jsonl.gz, then "
                  f"creditgym render {run}/eval-episodes.jsonl.gz", highlight=False, soft_wrap=True)
    return 0


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from creditgym.agents.evaluate import evaluate, write_result
    from creditgym.agents.llm.evaluate import evaluate_llm, is_llm_checkpoint
    from creditgym.trajectories import check_output_path

    common = {"env_id": args.env, "episodes": args.episodes, "levels": args.levels, "split": args.split,
              "greedy": not args.sample, "seed": args.seed, "device": args.device}
    if args.record is not None:  # before loading a model
        check_output_path(args.record, "--record")
    try:
        llm_run = is_llm_checkpoint(args.run_dir)
    except FileNotFoundError:  # the PPO path says what a run folder must hold
        llm_run = False
    if llm_run:
        result = evaluate_llm(args.run_dir, **common, batch_size=args.batch_size, progress=not args.no_progress,
                              record=args.record)
    else:
        result = evaluate(args.run_dir, **{**common, "seed": 0 if args.seed is None else args.seed}, record=args.record)
    table = Table(title=f"evaluation of {args.run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.items():
        table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    variant = [args.env.split("/")[-1] if args.env else "", Path(args.levels).stem if args.levels else "",
               args.split if args.split != "test" and not args.levels else "", "sampled" if args.sample else ""]
    console.print(f"written to {write_result(result, args.run_dir, '-'.join(part for part in variant if part))}")
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from creditgym.agents.compare import COMPARE_OUTPUTS, compare_runs, load_runs, plot_comparison

    runs = load_runs(args.run_dirs)
    result = compare_runs(runs, thresholds=args.thresholds, baseline=args.baseline, min_episodes=args.window)
    table = Table(title=f"{result['runs']} runs; success over the last {args.window} training episodes")
    table.add_column("group")
    table.add_column("seeds", justify="right")
    for t in args.thresholds:
        table.add_column(f"steps to {t:.0%}: mean ± SE (per seed)", justify="right")
        if args.baseline is not None:
            table.add_column("baseline / group", justify="right")
    table.add_column(f"success at {result['shared_env_steps']:,.0f} steps", justify="right")
    # Held-out success where the runs were evaluated (`creditgym eval RUN`, and with --sample).
    seeds = [seed for group in result["groups"].values() for seed in group["seeds"].values()]
    held_out = [key for key in ("held_out_greedy", "held_out_sampled") if any(seed[key] is not None for seed in seeds)]
    for key in held_out:
        table.add_column(f"held-out, {key.split('_')[-1]}", justify="right")
    table.add_column("env steps/s", justify="right")
    for column in table.columns:  # wrap, never cut, numbers on a narrow or piped terminal (rich then uses 80 columns)
        column.overflow = "fold"
    for label, group in result["groups"].items():
        cells = [label, str(len(group["seeds"]))]
        for t in args.thresholds:
            key = f"steps_to_{t * 100:g}"
            per_seed = " / ".join(_count(seed[key]) for seed in group["seeds"].values())
            spread = "" if group.get(f"{key}_se") is None else f" ± {group[key + '_se']:,.0f}"
            # one seed's own count repeats the group's: shown once
            cells.append(f"{_count(group[key])}{spread}" + (f" ({per_seed})" if len(group["seeds"]) > 1 else ""))
            if args.baseline is not None:
                ratio = group[f"speedup_{key}"]
                cells.append("-" if ratio is None else f"{ratio:.2f}x")
        success = group["success_at_shared_steps"]
        rates = [seed["env_steps_per_s"] for seed in group["seeds"].values() if seed["env_steps_per_s"]]
        success_se = group.get("success_at_shared_steps_se")
        spread = "" if success_se is None else f" ± {success_se:.1%}"
        cells.append("-" if success is None else f"{success:.1%}{spread}")
        cells += ["-" if group[key] is None else f"{group[key]:.1%}" for key in held_out]
        cells.append(f"{sum(rates) / len(rates):,.0f}" if rates else "-")
        table.add_row(*cells)
    console.print(table)
    if args.baseline is not None:
        console.print(f"baseline: {result['baseline']} (its mean steps over each group's; - where a seed never got "
                      "there)", highlight=False, soft_wrap=True)
    for note in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {note}", highlight=False, soft_wrap=True)
    runs_parent = os.path.commonpath([Path(path).resolve().parent for path in args.run_dirs])
    out_dir = Path(args.out_dir) if args.out_dir else Path(runs_parent)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} is a file; give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_name, plot_name = COMPARE_OUTPUTS
    write_text_atomically(out_dir / summary_name, json.dumps(result, indent=2) + "\n", what="comparison")
    figure = plot_comparison(runs, out_dir / plot_name, title=args.title)
    console.print(f"written to {out_dir / summary_name} and {figure}", highlight=False, soft_wrap=True)
    return 0


def _count(steps: float | None) -> str:
    return "not reached" if steps is None else f"{steps:,.0f}"


def cmd_make_banks(args: argparse.Namespace, console: Console) -> int:
    from creditgym.envs.sokoban.make_banks import run

    run(args)
    return 0


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from creditgym.demo import demo_config, run_demo

    if args.episodes < 1:  # checked before the two training runs, not after them
        console.print(f"--episodes must be at least 1, got {args.episodes}", style="red")
        return 2
    rollout = demo_config(10**12, args.seed, args.runs_dir)  # a budget any rollout fits, to read its size
    if args.steps < rollout.num_envs * rollout.num_steps:
        console.print(f"--steps must cover one rollout of the demo's {rollout.num_envs} envs x {rollout.num_steps} "
                      f"steps: at least {rollout.num_envs * rollout.num_steps:,}, got {args.steps:,}", style="red")
        return 2
    run_demo(total_steps=args.steps, seed=args.seed, runs_dir=args.runs_dir, eval_episodes=args.episodes,
             console=console)
    return 0


def cmd_showcase(args: argparse.Namespace, console: Console) -> int:
    """Generate levels, solve them with the built-in solver, play the solutions out, then measure throughput."""
    import numpy as np

    from creditgym.envs.sokoban.bank import LevelBank
    from creditgym.envs.sokoban.env import SokobanEnv
    from creditgym.envs.sokoban.generator import generate_level
    from creditgym.envs.sokoban.solver import solve
    from creditgym.envs.sokoban.text import ACTION_NAMES

    if args.seed < 0 or args.levels < 1:
        console.print("--seed must be 0 or more and --levels at least 1", style="red")
        return 2
    rng = np.random.default_rng(args.seed)
    for number in range(args.levels):
        plan: list = []
        while len(plan) < 8:  # skip the trivial rooms the raw generator sometimes makes (the banks filter them)
            level = generate_level(rng, height=6, width=6, num_boxes=2)
            plan = solve(level) or []
        console.rule(f"level {number + 1}: 6x6, 2 boxes, optimal solution {len(plan)} moves")
        env = SokobanEnv(levels=LevelBank.from_levels([level]), obs_mode="text")
        obs, _ = env.reset(seed=0)
        total = 0.0
        frames = [obs]
        for action in plan:
            obs, reward, terminated, _, _ = env.step(ACTION_NAMES[action])
            total += reward
            frames.append(obs)
        names = " ".join(ACTION_NAMES[a] for a in plan)
        shown = frames[:: max(1, len(frames) // 6)][:-1] + [frames[-1]]
        per_row = max(1, console.width // (len(frames[0].split("\n")[0]) + 3))
        for start in range(0, len(shown), per_row):
            console.print(_side_by_side(shown[start:start + per_row]), markup=False, highlight=False)
            console.print()
        console.print(f"moves: {names}\nsolved: {terminated}, return {total:+.1f}", markup=False)
    if args.skip_bench:
        return 0
    console.rule("throughput (benchmarks/sokoban_throughput.py)")
    return cmd_bench(argparse.Namespace(list=False, names=["sokoban_throughput"],
                                        bench_args=["--seconds", "1", "--num-envs", "1024"]), console)


def _side_by_side(boards: list[str]) -> str:
    rows = [board.split("\n") for board in boards]
    return "\n".join("   ".join(parts) for parts in zip(*rows, strict=False))


def _rescored_path(source: Path) -> Path:
    """TRAJ.rescored.jsonl next to TRAJ.jsonl, and TRAJ.rescored.jsonl.gz next to TRAJ.jsonl.gz."""
    gzipped = is_gzipped(source)
    plain = source.with_name(source.name[:-len(".gz")]) if gzipped else source
    return plain.with_suffix(".rescored.jsonl" + (".gz" if gzipped else ""))


def cmd_rescore(args: argparse.Namespace, console: Console) -> int:
    """Recompute a recording's rewards (a new shaping channel) and/or advantages offline, into a new JSONL (plain or
    gzip-compressed, each file as its name ends)."""
    from creditgym.trajectories import TrajectoryFormatError, check_output_path, rescore_file

    if args.potential is None and args.estimator is None:
        console.print("nothing to re-score: give --potential NAME, --estimator NAME, or both", style="red")
        return 2
    if not (0 <= args.gamma <= 1 and 0 <= args.lam <= 1):
        console.print(f"--gamma and --lam must be in [0, 1], got {args.gamma} and {args.lam}", style="red")
        return 2
    if not (math.isfinite(args.scale) and args.scale > 0):
        console.print(f"--scale must be a positive number, got {args.scale}", style="red")
        return 2
    if not args.channel.strip():
        console.print("--channel must name the new reward channel, e.g. --channel shaping", style="red")
        return 2
    source = Path(args.trajectories)
    out = Path(args.out) if args.out else _rescored_path(source)
    if out.resolve() == source.resolve():
        console.print(f"--out {out} is the input file; choose another path", style="red")
        return 2
    try:
        check_output_path(out, "--out")
    except ValueError as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    try:
        with _bytes_progress(not args.no_progress, "rescore") as progress:
            before, after, count = rescore_file(source, out, potential=args.potential, estimator=args.estimator,
                                                gamma=args.gamma, lam=args.lam, scale=args.scale,
                                                channel=args.channel, replace=args.replace, progress=progress)
    except (FileNotFoundError, TrajectoryFormatError, ValueError) as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    table = Table(title=f"{source} re-scored ({count} episodes)")
    for column in ("mean per episode", "before", "after"):
        table.add_column(column, justify="left" if column.startswith("mean") else "right")
    for name in after:
        table.add_row(name, f"{before[name]:.4g}" if name in before else "-", f"{after[name]:.4g}")
    console.print(table)
    console.print(f"written to {out}")
    return 0

@contextlib.contextmanager
def _bytes_progress(enabled: bool, label: str) -> Any:
    """A rich progress bar on stderr over the bytes of a file read, as `progress(done, total)`; None when disabled."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def cmd_render(args: argparse.Namespace, console: Console) -> int:
    """Draw recorded episodes: a GIF of the boards (Sokoban, MiniGrid) and a transcript of every episode."""
    from creditgym.render import render_file
    from creditgym.trajectories import TrajectoryFormatError

    try:
        rendered = render_file(args.trajectories, args.out, episodes=args.episodes, which=args.which, fps=args.fps,
                               scale=args.scale)
    except (FileNotFoundError, TrajectoryFormatError, ValueError) as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    if not rendered:
        kind = {"solved": "solved ", "failed": "unsolved "}.get(args.which, "")
        console.print(f"{args.trajectories} holds no {kind}episode; nothing was written", highlight=False,
                      soft_wrap=True)
        return 1
    table = Table(title=f"{len(rendered)} episodes of {args.trajectories}")
    for column in ("episode", "steps", "solved", "written"):
        table.add_column(column, justify="right" if column in ("episode", "steps") else "left")
    for item in rendered:
        written = [item.animation.name] if item.animation is not None else []
        table.add_row(str(item.index), str(item.steps), "yes" if item.solved else "no",
                      ", ".join([*written, item.transcript.name]))
    console.print(table)
    console.print(f"written to {rendered[0].transcript.parent}", highlight=False, soft_wrap=True)
    if all(item.animation is None for item in rendered):
        console.print("these records hold no boards to draw (only Sokoban and MiniGrid states are drawn): "
                      "transcripts only", highlight=False, soft_wrap=True)
    return 0


def cmd_design_reward(args: argparse.Namespace, console: Console) -> int:
    """LLM-designed dense rewards (issue 9): generate, critique, validate, dry-run and train reward programs; with
    --human-feedback or --feedback-file, the user's feedback steers the later iterations (Text2Reward)."""
    from creditgym.wrappers.llm_reward.designer import DesignerConfig, RewardDesigner
    from creditgym.wrappers.llm_reward.feedback import (
        HumanFeedbackError,
        IterationSummary,
        checked_feedback,
        read_feedback_file,
    )

    config = DesignerConfig(
        env_id=args.env, iterations=args.iterations, samples=args.samples, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, critic=args.critic, critic_rejects=args.critic_rejects,
        critic_revisions=args.critic_revisions,
        train_steps=args.train_steps, num_envs=args.num_envs, num_steps=args.num_steps, seeds=tuple(args.seeds),
        fitness_window=args.fitness_window, max_abs_reward=args.max_abs_reward,
        replace_task_reward=args.replace_task_reward, compare_sparse=args.compare_sparse,
        final_seeds=tuple(args.final_seeds), seed=args.seed, runs_dir=args.runs_dir, run_name=args.run_name,
        overwrite=args.overwrite, ppo_kwargs={"device": args.device}, progress=args.progress,
    )
    # Checked before the model is loaded: a malformed file or a pipe must not cost a model load, let alone a run.
    human_feedback: Any = None
    if args.feedback_file is not None:
        human_feedback = read_feedback_file(args.feedback_file, args.iterations)
    elif args.human_feedback:
        if sys.stdin is None or not sys.stdin.isatty():
            raise ValueError("--human-feedback asks for feedback on the terminal, but stdin is not a terminal (a pipe, "
                             "a file or /dev/null); write the feedback beforehand into a JSON list of strings, one per "
                             "iteration, and pass --feedback-file PATH instead")
        asking = True

        def ask(iteration: int, summary: IterationSummary) -> str | None:
            nonlocal asking
            if not asking:  # the user ended the input
                return None
            console.print(summary)
            while True:
                try:
                    line = console.input(f"Feedback for iteration {iteration + 2} (Enter: none; Ctrl-D: none for the "
                                         "rest of the run)> ", markup=False)
                except EOFError:
                    asking = False
                    console.print("\nno more feedback this run", style="dim")
                    return None
                try:
                    return checked_feedback(line, f"after iteration {iteration + 1}")
                except ValueError as error:  # too long: ask again rather than lose the run
                    console.print(f"{error}; type it again", style="yellow", markup=False, highlight=False)

        human_feedback = ask
    if args.model.startswith(("http://", "https://")):
        from creditgym.llm import OpenAIChatModel

        if not args.server_model:
            raise ValueError("--model is a server URL, so pass --server-model NAME (the model the server serves)")
        # A CPU vLLM server answers K concurrent 512-token requests in over a minute; the 60 s default would retry
        # (and resubmit) them until the run fails.
        chat = OpenAIChatModel(args.model, model=args.server_model, max_new_tokens=args.max_new_tokens,
                               timeout=600, token_limit_field=args.token_limit_field)
        name = args.server_model
    else:
        from creditgym.llm import HFChatModel

        chat = HFChatModel.from_pretrained(args.model, max_new_tokens=args.max_new_tokens)
        name = args.model
    designer = RewardDesigner(chat, config, model_name=name, human_feedback=human_feedback)
    try:
        result = designer.run()
    except HumanFeedbackError as error:  # the candidates so far are on disk; say so without a traceback
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 1
    table = Table(title=f"reward design on {args.env} with {name}")
    table.add_column("stage")
    table.add_column("passed", justify="right")
    for stage, count in result.stage_counts.items():
        table.add_row(stage, f"{count}/{result.stage_counts['generated']}")
    console.print(table)
    if result.best is None:
        console.print("no program passed every stage; see the errors in the candidate files")
    else:
        console.print(f"best: {result.best.id}, success rate {result.best.fitness:.3f} on the selection seeds "
                      "(optimistic: the maximum over every candidate)")
        console.print(result.best.source or "", markup=False, highlight=False)
    for label, record in (("sparse task reward alone, selection seeds", result.sparse),
                          ("best program re-trained on --final-seeds", (result.final or {}).get("best")),
                          ("sparse task reward alone, --final-seeds", (result.final or {}).get("sparse"))):
        if record is not None:
            outcome = f"{record['fitness']:.3f}" if record["fitness"] is not None else f"failed: {record['error']}"
            console.print(f"{label}, same PPO budget: {outcome}", markup=False, highlight=False)
    for warning in result.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)
    console.print(f"every program and report.json are in {result.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creditgym", description="Environments and dense rewards for agentic RL.")
    parser.add_argument("--version", action="version", version=f"creditgym {creditgym.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("list", help="list the registered environment ids").set_defaults(run=cmd_list)

    play = commands.add_parser("play", help="play a text env (or a grid env's text view) in the terminal")
    play.add_argument("env_id", help="a registered id, e.g. creditgym/Sokoban-6x6-1b-v0")
    play.add_argument("--seed", type=int, default=0, help="seed of the first episode (later ones add 1)")
    play.set_defaults(run=cmd_play)

    bench = commands.add_parser("bench", help="run benchmarks from benchmarks/ (each prints JSON)")
    bench.add_argument("names", nargs="*", help="benchmark names (default: the Sokoban throughput and generator); "
                       "one prints its JSON document, several print one document keyed by name")
    bench.add_argument("--list", action="store_true", help="list the available benchmarks and exit")
    bench.add_argument("--args", dest="bench_args", nargs=argparse.REMAINDER, default=[],
                       help="arguments passed on to each benchmark, e.g. --args --seconds 5")
    bench.set_defaults(run=cmd_bench)

    train = commands.add_parser("train", help="train PPO, or an LLM policy (--algo grpo ...), on an env")
    train.add_argument("--config", help="YAML file of PPOConfig or LLMTrainConfig fields (flags override it)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a run exactly from its checkpoint, on the device it trained on; with --device "
                            "on another one (then not bit-exact: that device's random generators are re-seeded)")
    train.add_argument("--algo", choices=["ppo", *LLM_ALGOS], default=None,
                       help="ppo (the default; a resumed run keeps its own) for small policies (PPOConfig flags); "
                            "the others train an LLM given by --model "
                            "(LLMTrainConfig flags; shared flags such as --learning-rate keep LLMTrainConfig's "
                            "defaults there, which their help gives after 'LLM algos:')")
    add_config_arguments(train, PPOConfig, aliases={"env_id": "--env"}, also=("LLM algos", LLMTrainConfig))
    add_config_arguments(train, LLMTrainConfig, skip=tuple(_PPO_FIELDS | {"algo"}))
    train.set_defaults(run=cmd_train)

    evaluation = commands.add_parser(
        "eval", formatter_class=_ShowDefaults,
        help="evaluate a trained run, PPO or LLM (Sokoban: held-out levels, solver gap)")
    evaluation.add_argument("run_dir", help="a run folder written by `creditgym train`, or one of its checkpoint "
                                            "files (such as a PPO run's checkpoint-<env steps>.pt or an LLM run's "
                                            "checkpoint-<iteration>.pt, from --keep-checkpoints)")
    evaluation.add_argument("--env", help="env id to evaluate on (default: the run's)")
    evaluation.add_argument("--episodes", type=int, default=200,
                            help="episodes (Sokoban: the split's levels in order, each once up to its size)")
    evaluation.add_argument("--levels", help="Boxoban-format file or folder to evaluate on (Sokoban only)")
    evaluation.add_argument("--split", default="test", choices=["train", "test"], help="shipped bank split")
    evaluation.add_argument("--sample", action="store_true",
                            help="sample actions (LLM runs: tokens at the run's temperature), not the likeliest")
    evaluation.add_argument("--seed", type=int, default=None, help="seed for sampling and non-Sokoban resets (default: "
                            "0; for an LLM run on an env without a held-out split, the first seed after those the "
                            "run trained on)")
    evaluation.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    evaluation.add_argument("--batch-size", type=int, default=32, help="LLM runs: episodes played at once")
    evaluation.add_argument("--no-progress", action="store_true", help="LLM runs: no progress bar")
    evaluation.add_argument("--record", metavar="TRAJ.jsonl",
                            help="also write the played episodes to this file as trajectory records, PPO and LLM "
                                 "runs alike, gzip-compressed where the name ends in .gz (replaced if it exists; "
                                 "creditgym rescore reads it)")
    evaluation.set_defaults(run=cmd_eval)

    compare = commands.add_parser("compare", help="compare finished runs side by side: env steps to success "
                                                  "thresholds per seed, the ratio to a baseline, seed-band plot")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                         help="run folders written by `creditgym train`; runs are grouped by the config fields "
                              "that differ between them, other than the seed and bookkeeping")
    compare.add_argument("--baseline", help="the group to compare the others with (its label, or a part of exactly "
                                            "one label), e.g. 'learned_reward=none'")
    compare.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8],
                         help="training success rates to report the env steps to (default: 0.5 0.8)")
    compare.add_argument("--window", type=int, default=500,
                         help="finished training episodes that each success rate is measured over (default: 500)")
    compare.add_argument("--out-dir", help="where to write comparison.json and comparison.png (default: the runs' "
                                           "common parent folder)")
    compare.add_argument("--title", default="", help="title of the plot")
    compare.set_defaults(run=cmd_compare)

    banks = commands.add_parser("make-banks", help="regenerate the shipped Sokoban level banks reproducibly")
    add_make_banks_arguments(banks)
    banks.set_defaults(run=cmd_make_banks)

    demo = commands.add_parser(
        "demo", formatter_class=_ShowDefaults,
        help="the main job: PPO on 6x6 Sokoban, sparse vs shaped, then evaluation")
    demo.add_argument("--steps", type=int, default=3_000_000, help="env steps per run")
    demo.add_argument("--seed", type=int, default=1, help="seed shared by both runs")
    demo.add_argument("--runs-dir", default="runs/demo", help="where the runs, summary and plot are written; running "
                      "the demo again with the same seed replaces its own earlier runs there")
    demo.add_argument("--episodes", type=int, default=200, help="held-out levels to evaluate each run on")
    demo.set_defaults(run=cmd_demo)

    showcase = commands.add_parser(
        "showcase", formatter_class=_ShowDefaults, help="generate, solve and play Sokoban levels, then measure speed")
    showcase.add_argument("--seed", type=int, default=0, help="seed of the level generator")
    showcase.add_argument("--levels", type=int, default=3, help="how many levels to generate and solve")
    showcase.add_argument("--skip-bench", action="store_true", help="do not run the throughput benchmark")
    showcase.set_defaults(run=cmd_showcase)

    rescore = commands.add_parser("rescore", help="recompute rewards and advantages of a trajectory file offline")
    rescore.add_argument("trajectories", metavar="TRAJ.jsonl", help="episodes written by record_episodes or "
                         "creditgym.trajectories.TrajectoryWriter, such as a run's trajectories.jsonl.gz (a name "
                         "ending in .gz is read as gzip-compressed)")
    rescore.add_argument("--potential", metavar="NAME", help="add a shaping channel from this potential, evaluated "
                         f"on the recorded states: {', '.join(offline_potential_names())}, or module:function "
                         "taking (observation, state)")
    rescore.add_argument("--gamma", type=float, default=1.0, help="discount of the shaping term and of returns; "
                         "use the agent's (default: 1.0)")
    rescore.add_argument("--estimator", choices=ESTIMATORS,
                         help="recompute per-step advantages with creditgym.credit (grpo/dr_grpo/rloo group "
                         "episodes by env id, seed and start state, as an LLM trainer's groups; gae uses V = 0)")
    rescore.add_argument("--scale", type=float, default=1.0, help="multiplies the potential, as --shaping-scale "
                         "and PotentialShaping(scale=...) do live (default: 1.0)")
    rescore.add_argument("--lam", type=float, default=1.0, help="GAE lambda, for --estimator gae (default: 1.0)")
    rescore.add_argument("--channel", default="shaping", help="name of the new reward channel (default: shaping)")
    rescore.add_argument("--replace", action="store_true", help="overwrite the channel if the recording has it")
    rescore.add_argument("--out", metavar="PATH", help="output JSONL, gzip-compressed where the name ends in .gz "
                         "(default: TRAJ.rescored.jsonl next to the input, TRAJ.rescored.jsonl.gz for a .gz input)")
    rescore.add_argument("--no-progress", action="store_true", help="no progress bar (it follows the bytes read, on "
                         "stderr)")
    rescore.set_defaults(run=cmd_rescore)
    render = commands.add_parser("render", help="draw recorded episodes: GIFs of Sokoban and MiniGrid boards, a "
                                                "text transcript of every episode")
    render.add_argument("trajectories", metavar="TRAJ.jsonl", help="a trajectory file: creditgym eval RUN --record "
                        "FILE, a PPO run's trajectories.jsonl.gz (--record-envs) or an LLM run's "
                        "(--record-trajectories)")
    render.add_argument("--out", metavar="DIR", help="folder for episode-NNNNN.gif and .txt (NNNNN: the episode's "
                        "place in the file; default: TRAJ-render/ next to the file)")
    render.add_argument("--episodes", type=int, default=8, help="how many episodes to draw, the first ones that "
                        "--which selects (default: 8)")
    render.add_argument("--which", choices=SELECTIONS, default="all",
                        help="all episodes, only solved ones or only unsolved ones (default: all)")
    render.add_argument("--fps", type=float, default=4.0, help="GIF frames per second; the last frame stays up "
                        "1.5 s (default: 4)")
    render.add_argument("--scale", type=int, default=2, help="pixels per sprite pixel: 2 draws a Sokoban cell 32 "
                        "pixels wide (default: 2)")
    render.set_defaults(run=cmd_render)
    design = commands.add_parser(
        "design-reward", formatter_class=_ShowDefaults,
        help="LLM-designed dense rewards: generate, critique, validate, dry-run and train reward programs, keep the "
             "best")
    design.add_argument("--env", default="creditgym/Sokoban-6x6-2b-v0", help="env id with a batched env (Sokoban)")
    design.add_argument("--model", default="smollm2-135m", help="smollm2-135m, a local Hugging Face model folder, or "
                        "an OpenAI-compatible server URL ending in /v1")
    design.add_argument("--server-model", help="model name to request from the server, when --model is a URL")
    design.add_argument("--token-limit-field", choices=TOKEN_LIMIT_FIELDS, default="max_tokens",
                        help="request field that carries the reply length, when --model is a URL: OpenAI's "
                             "reasoning models take only max_completion_tokens")
    design.add_argument("--iterations", type=int, default=3, help="design iterations")
    design.add_argument("--samples", type=int, default=4, help="candidate programs per iteration (K)")
    design.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the programs")
    design.add_argument("--max-new-tokens", type=int, default=512, help="longest model reply")
    design.add_argument("--critic", action=argparse.BooleanOptionalAction, default=True,
                        help="ask the model to review every program before it is checked (--no-critic skips it)")
    design.add_argument("--critic-revisions", type=int, default=1, metavar="N",
                        help="times the model revises a program the critic fails, given the review, before it is "
                             "checked (0: never; the review still reaches the next iteration) (default: 1)")
    design.add_argument("--critic-rejects", action="store_true", help="disqualify programs the critic fails "
                        "(default: only record its verdict)")
    design.add_argument("--train-steps", type=int, default=20_000, help="env steps of each fitness PPO run")
    design.add_argument("--num-envs", type=int, default=32, help="parallel envs of each fitness run")
    design.add_argument("--num-steps", type=int, default=32, help="steps per env per PPO rollout of each fitness run")
    design.add_argument("--seeds", type=int, nargs="+", default=[1], help="PPO seeds per candidate (mean success)")
    design.add_argument("--fitness-window", type=float, default=0.5, help="fraction of training, at the end, whose "
                        "finished episodes count towards a candidate's success rate")
    design.add_argument("--max-abs-reward", type=float, default=1e6, help="disqualify programs whose reward or "
                        "component exceeds this magnitude")
    design.add_argument("--final-seeds", type=int, nargs="+", default=[], help="fresh PPO seeds on which the best "
                        "program and the sparse reward are re-trained after selection (unbiased; saved in report.json)")
    design.add_argument("--replace-task-reward", action="store_true", help="train on the candidate reward alone "
                        "instead of adding it to the task reward")
    design.add_argument("--compare-sparse", action="store_true", help="also train on the task reward alone, with "
                        "the same budget and seeds; its success rate is printed and saved in report.json")
    feedback = design.add_mutually_exclusive_group()
    feedback.add_argument("--human-feedback", action="store_true", help="after each iteration but the last, show the "
                          "best program so far (fitness, reflection, its PPO run folders) and ask on the terminal for "
                          "a line of feedback that every later prompt carries (Text2Reward); Enter gives none, Ctrl-D "
                          "none for the rest of the run; saved in report.json")
    feedback.add_argument("--feedback-file", metavar="PATH", help="feedback written beforehand instead of asking: a "
                          "JSON list whose first entry is given after the first iteration, and so on (a string; null "
                          "or \"\" for none), e.g. [\"penalise pushing boxes into corners\", null]; or a design "
                          "run's report.json, to replay the feedback it recorded")
    design.add_argument("--seed", type=int, default=0, help="seed of program sampling and dry-run transitions")
    design.add_argument("--device", default="cpu", help="device of the fitness PPO runs: cpu, cuda or auto")
    design.add_argument("--runs-dir", default="runs/design-reward", help="where design runs are written")
    design.add_argument("--run-name", help="run folder name (default: env-time, made unique)")
    design.add_argument("--overwrite", action="store_true", help="replace the design run the folder already holds")
    design.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar over the candidates on stderr (--no-progress for logs)")
    design.set_defaults(run=cmd_design_reward)
    return parser


def _replace_unencodable_output() -> None:
    """Print '?' for characters the terminal's encoding lacks (the text boards' √ under LC_ALL=C or
    PYTHONIOENCODING=ascii) instead of failing mid-episode with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding not in ("utf8", "utf16", "utf32") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    _replace_unencodable_output()
    args = build_parser().parse_args(argv)
    # Piped or redirected, rich lays tables out in 80 columns and folds numbers across lines; a log reads better wide.
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(width=_PIPED_WIDTH if piped else None)
    plain_warnings = warnings.formatwarning
    warnings.formatwarning = _warning_line
    try:
        return args.run(args, console)
    # Bad configs, paths (a file where a folder belongs, or the other way round) and env arguments: say what to
    # change, without a traceback.
    except (ValueError, OSError, gym.error.Error, ChatModelError) as err:
        # escaped: a message may hold brackets, such as a list of bad values, that rich would take for markup
        console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    finally:
        warnings.formatwarning = plain_warnings


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """A warning as a command's user reads it: the message, not the source line that raised it (creditgym's own
    warnings say what to change); other libraries' warnings keep their category and origin."""
    if filename.startswith(str(Path(__file__).parent)) and issubclass(category, UserWarning):
        return f"warning: {message}\n"
    return f"warning: {category.__name__}: {message} ({Path(filename).name}:{lineno})\n"


if __name__ == "__main__":
    sys.exit(main())
