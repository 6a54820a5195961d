"""Evaluate a trained PPO run: success rate, steps, and for Sokoban the gap to the solver's optimum."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import creditgym
from creditgym.agents.config_cli import MAX_SEED, check_device, saved_run_config
from creditgym.agents.ppo import ActorCritic, PPOConfig, resolve_device, sample_actions
from creditgym.agents.runs import load_weights, read_checkpoint, write_text_atomically
from creditgym.envs import check_env_id
from creditgym.envs.sokoban.bank import has_held_out_split, warn_when_levels_repeat
from creditgym.envs.sokoban.vector import SokobanVectorEnv
from creditgym.trajectories import (
    TrajectoryWriter,
    VectorRecorder,
    reached_observations,
    record_episodes,
    replacing_writer,
    sokoban_states,
)


def load_policy(run_dir: str | Path, device: torch.device) -> tuple[PPOConfig, ActorCritic]:
    """The config and trained network of a run directory (its checkpoint.pt), or of one checkpoint file."""
    path, state = read_checkpoint(run_dir, device, kind="PPO", keys=("model",))
    # Checkpoints from before these fields existed hold separate tanh networks.
    # The run's device is not this evaluation's: a run trained on a GPU evaluates on a machine without one.
    saved = {"activation": "tanh", "shared_torso": False, **state["config"], "device": "auto"}
    with saved_run_config(path):
        config = PPOConfig(**{k: v for k, v in saved.items() if k in PPOConfig.__dataclass_fields__})
    env = gym.make(config.env_id, **config.env_kwargs)
    shape, actions = env.observation_space.shape, int(env.action_space.n)
    env.close()
    kind = config.policy if config.policy != "auto" else ("cnn" if len(shape) == 3 else "mlp")
    agent = ActorCritic(shape, actions, kind=kind, hidden=config.hidden, channels=config.cnn_channels,
                        activation=config.activation, shared=config.shared_torso).to(device)
    load_weights(agent, state["model"], path, hint=f" ({config.env_id} {config.env_kwargs} now gives observations "
                 f"of shape {list(shape)} and {actions} actions)")
    agent.eval()
    return config, agent


def evaluate(run_dir: str | Path, *, env_id: str | None = None, episodes: int = 200, levels: str | None = None,
             split: str = "test", greedy: bool = True, seed: int = 0, device: str = "cpu",
             record: str | Path | None = None) -> dict[str, Any]:
    """Play `episodes` episodes with the run's policy; Sokoban plays distinct held-out levels in order, with the
    run's time limit (`max_episode_steps` in its env_kwargs, else the env's; the result says which).

    The result's `success_rate_ci95` is the Wilson 95% interval of the success rate over the episodes, which takes
    them as independent draws: true of distinct levels or seeds, not of levels replayed greedily (a warning says
    when levels repeat).

    `record` names a file that gets the episodes as trajectory records, in episode order, gzip-compressed where the
    name ends in .gz (replaced if it exists; `creditgym rescore` reads it). Sokoban records hold each board's state
    and the level's bank row (`metadata["level_index"]`), with `seed` as their seed; other envs' records hold their
    reset seed, seed + episode.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and 2**63 - 1, got {seed}")
    check_device(device)
    if env_id is not None:
        check_env_id(env_id)
    dev = resolve_device(device)
    config, agent = load_policy(run_dir, dev)
    env_id = env_id or config.env_id
    generator = torch.Generator(device=dev)
    generator.manual_seed(seed)
    # Opened first, so an unwritable path fails before any episode is played.
    with replacing_writer(record) if record is not None else contextlib.nullcontext() as writer:
        result = _evaluate(config, agent, env_id, episodes, levels, split, greedy, generator, seed, dev, writer)
    result.update({"run_dir": str(run_dir), "env_id": env_id, "greedy": greedy, "seed": seed,
                   "device": str(dev), "creditgym": creditgym.__version__})
    if record is not None:
        result["recorded"] = str(record)
    return result


def _evaluate(config: PPOConfig, agent: ActorCritic, env_id: str, episodes: int, levels: str | None, split: str,
              greedy: bool, generator: torch.Generator, seed: int, dev: torch.device,
              writer: TrajectoryWriter | None) -> dict[str, Any]:
    if gym.spec(env_id).vector_entry_point is not None and env_id.startswith("creditgym/Sokoban"):
        train_grid = gym.spec(config.env_id).kwargs["levels"]
        train_grid = SokobanVectorEnv(1, levels=config.env_kwargs.get("levels", train_grid)).bank.shape
        # The run's view and reward sizes, so that returns are on its scale, and its time limit, on which success
        # depends.
        view = {k: v for k, v in config.env_kwargs.items()
                if k in ("action_mask", "obs_mode", "rewards", "max_episode_steps")}
        # A run that trained on its own levels (such as Boxoban's) is evaluated on their held-out split.
        own_levels = config.env_kwargs.get("levels") if env_id == config.env_id else None
        if levels is None and own_levels is not None and split == "test" and not has_held_out_split(own_levels):
            warnings.warn(f"the run trained on {own_levels}, which has no held-out split (no test/ or valid/ "
                          "folder), so this evaluation plays its training levels; pass --levels to evaluate on "
                          "others", stacklevel=2)
        trained_on = config.env_kwargs.get("split", "train")
        if levels is None and env_id == config.env_id and trained_on == split == "test" and has_held_out_split(
                own_levels or gym.spec(env_id).kwargs["levels"]):
            warnings.warn("the run trained on split 'test', so this evaluation plays its training levels; pass "
                          "--split train to evaluate on the others", stacklevel=2)
        return _evaluate_sokoban(agent, env_id, episodes, levels or own_levels, split, greedy, generator, dev,
                                 train_grid, view, from_file=levels is not None, seed=seed, writer=writer)
    if levels is not None:
        raise ValueError("--levels applies to Sokoban ids only")
    _check_same_spaces(config, env_id)
    return _evaluate_generic(agent, env_id, episodes, greedy, generator, seed, dev, config.env_kwargs, writer)


def _check_same_spaces(config: PPOConfig, env_id: str) -> None:
    trained = gym.make(config.env_id, **config.env_kwargs)
    try:
        target = gym.make(env_id, **config.env_kwargs)
    except TypeError as err:  # the run's env arguments are not the other env's: then neither are its spaces
        trained.close()
        raise ValueError(f"the policy was trained on {config.env_id} with env_kwargs {config.env_kwargs} and cannot "
                         f"play {env_id}, which does not take them ({str(err).split(' was raised')[0]}); evaluate "
                         f"on an env like the one it trained on") from None
    mine = (trained.observation_space, trained.action_space)
    theirs = (target.observation_space, target.action_space)
    trained.close()
    target.close()
    if mine != theirs:
        raise ValueError(f"the policy was trained on {config.env_id} (observations {mine[0]}, actions {mine[1]}) "
                         f"and cannot play {env_id} (observations {theirs[0]}, actions {theirs[1]})")


def _act(agent: ActorCritic, obs: torch.Tensor, greedy: bool, generator: torch.Generator,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    logits, _ = agent(obs, mask)
    return logits.argmax(-1) if greedy else sample_actions(logits, generator)


@torch.no_grad()
def _evaluate_sokoban(agent: ActorCritic, env_id: str, episodes: int, levels: str | None, split: str, greedy: bool,
                      generator: torch.Generator, dev: torch.device, train_grid: tuple[int, int],
                      view: dict[str, Any], *, from_file: bool, seed: int = 0,
                      writer: TrajectoryWriter | None = None) -> dict[str, Any]:
    """Greedy or sampled play on bank levels in order, with the observation mode and masks it trained with; each
    board's first episode is recorded to `writer` when given."""
    from creditgym.envs.sokoban.solver import solve

    spec = gym.spec(env_id)
    source = levels or spec.kwargs["levels"]
    # A file or split-less folder is one level set; the caller has said so where it matters.
    bank = SokobanVectorEnv(1, levels=source, split=split if has_held_out_split(source) else "train").bank
    if bank.shape != train_grid:
        raise ValueError(f"levels in {source} are {bank.shape[0]}x{bank.shape[1]} but the policy was trained on "
                         f"{train_grid[0]}x{train_grid[1]}; evaluate on levels of the training size")
    warn_when_levels_repeat(bank, episodes)
    order = np.arange(episodes) % len(bank)
    view = {"max_episode_steps": spec.max_episode_steps or 200, **view}
    success, steps, returns = [], [], []
    for start in range(0, episodes, 256):
        chunk = order[start:start + 256]
        env = SokobanVectorEnv(len(chunk), levels=bank, device=dev, **view)
        obs, info = env.reset(options={"level_index": chunk})
        recorder = None
        if writer is not None:
            states = functools.partial(sokoban_states, walled=view.get("obs_mode") == "egocentric")
            recorder = VectorRecorder(env_id, seed, states=states, restart=False)
            boards = [{"episode": start + j, "level_index": int(index)} for j, index in enumerate(chunk)]
            recorder.start(obs, masks=info.get("action_mask"), metadata=boards)
        played = []
        live = torch.ones(len(chunk), dtype=torch.bool, device=dev)
        total = torch.zeros(len(chunk), device=dev)
        length = torch.zeros(len(chunk), dtype=torch.int64, device=dev)
        solved = torch.zeros(len(chunk), dtype=torch.bool, device=dev)
        while live.any():
            action = _act(agent, obs, greedy, generator, info.get("action_mask"))
            obs, reward, terminated, truncated, info = env.step(action)
            if recorder is not None:
                played += recorder.add(actions=action[None], reached=reached_observations(obs, info, len(chunk))[None],
                                       next_obs=obs[None], terminated=terminated[None], truncated=truncated[None],
                                       components={k: v[None] for k, v in info["reward_components"].items()},
                                       success=info["success"][None], masks=_first(info.get("action_mask")))
            total += reward * live
            length += live.long()
            solved |= terminated & live
            live &= ~(terminated | truncated)
        if writer is not None:
            for episode in sorted(played, key=lambda e: e.metadata["episode"]):
                writer.write(episode)
        success += solved.tolist()
        steps += length.tolist()
        returns += total.tolist()
    optimal, excess = [], []
    for index, won, taken in zip(order, success, steps, strict=True):
        plan = solve(bank[int(index)]) if won else None
        if plan is not None:
            optimal.append(len(plan))
            excess.append(taken - len(plan))
    return {
        "episodes": episodes,
        "distinct_levels": int(min(episodes, len(bank))),
        "levels": str(source),
        "split": "file" if from_file else split,
        "max_episode_steps": view["max_episode_steps"],
        **_success_rate(success),
        "mean_steps": float(np.mean(steps)),
        "mean_return": float(np.mean(returns)),
        "solved_mean_steps": float(np.mean([s for s, w in zip(steps, success, strict=True) if w])) if any(success)
        else None,
        "solved_mean_optimal_steps": float(np.mean(optimal)) if optimal else None,
        "solved_mean_excess_steps": float(np.mean(excess)) if excess else None,
        "solved_optimal_fraction": float(np.mean([e == 0 for e in excess])) if excess else None,
    }


def _first(value: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None else value[None]


@torch.no_grad()
def _evaluate_generic(agent: ActorCritic, env_id: str, episodes: int, greedy: bool, generator: torch.Generator,
                      seed: int, dev: torch.device, env_kwargs: dict[str, Any],
                      writer: TrajectoryWriter | None = None) -> dict[str, Any]:
    """Episodes reset with seed + episode, played one at a time (and recorded to `writer` when given)."""
    env = gym.make(env_id, **env_kwargs)
    limit = env.spec.max_episode_steps if env.spec is not None else None  # the run's, where its env_kwargs set one

    def policy(obs: Any, info: dict[str, Any]) -> int:
        return int(_act(agent, torch.as_tensor(np.asarray(obs)[None], device=dev), greedy, generator)[0])

    try:
        played = record_episodes(env, policy, episodes, seed, record_state=writer is not None)
    finally:
        env.close()
    if writer is not None:
        for number, episode in enumerate(played):
            episode.metadata["episode"] = number
            writer.write(episode)
    if any("success" in episode.steps[-1].info for episode in played if episode.steps):
        success = _success_rate([e.success for e in played])
    else:  # 0% would read as a policy that always fails
        warnings.warn(f"{env_id} reports no info['success'], so the evaluation has no success rate (None); judge the "
                      "run by mean_return and mean_steps", stacklevel=3)
        success = {"success_rate": None, "success_rate_ci95": None}
    return {"episodes": episodes, "max_episode_steps": limit, **success,
            "mean_steps": float(np.mean([len(e.steps) for e in played])),
            "mean_return": float(np.mean([e.total_reward for e in played]))}


def _success_rate(success: list[bool]) -> dict[str, Any]:
    low, high = wilson_interval(sum(success), len(success))
    return {"success_rate": float(np.mean(success)), "success_rate_ci95": [round(low, 4), round(high, 4)]}


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate, 95% at z = 1.96. Unlike rate ± z·SE it stays within [0, 1]
    and does not shrink to a point at 0 or `trials` successes, which small evaluations often give."""
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    rate = successes / trials
    centre = rate + z * z / (2 * trials)
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials))
    scale = 1 + z * z / trials
    return max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)


def write_result(result: dict[str, Any], run_dir: str | Path, variant: str = "") -> Path:
    """eval.json in the run folder, or eval-<checkpoint name>.json beside a checkpoint file evaluated on its own;
    a `variant` (such as "train-sampled") is added to the name so that other settings never overwrite it."""
    run = Path(run_dir)
    stem = "-".join(part for part in ("eval", run.stem if run.is_file() else "", variant) if part)
    path = (run.parent if run.is_file() else run) / f"{stem}.json"
    return write_text_atomically(path, json.dumps(result, indent=2), what="evaluation result")
