"""Evaluate a run of the LLM trainer (grpo, drgrpo, rloo, reinforce_pp, ppo_llm): success rate, turns, returns.

The model is rebuilt as the trainer built it (base model, LoRA adapters when the run had them) and the run's
trained weights are loaded into it; episodes are played in batches with the trainer's `RolloutCollector`, with the
run's turn limit, history window and prompt budget. Sokoban plays distinct held-out levels in order, as the PPO
evaluation does; other envs reset with seeds seed, seed + 1, ..., by default from the first seed after those the run
trained on, so that an env without a held-out split still plays tasks the run never saw.

    from creditgym.agents.llm.evaluate import evaluate_llm
    evaluate_llm("runs/grpo-Sokoban-6x6-1b-v0-s1-...", episodes=200, device="cpu")
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import load_env_creator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import creditgym
from creditgym.agents.config_cli import MAX_SEED, check_device, check_env_arguments, saved_run_config
from creditgym.agents.evaluate import wilson_interval
from creditgym.agents.ppo import resolve_device
from creditgym.agents.runs import load_weights, read_checkpoint, reseeded
from creditgym.envs import check_env_id
from creditgym.envs.sokoban.bank import warn_when_levels_repeat
from creditgym.llm.models import load_policy_model
from creditgym.trajectories import llm_episode_records, replacing_writer

from .config import ALGOS, LLMTrainConfig
from .policy import LLMPolicy
from .rollout import Episode, RolloutCollector
from .trainer import _Progress, add_lora, make_text_env, training_seeds

SPLITS = ("train", "test")
_KEPT_CHECKPOINT = re.compile(r"checkpoint(-\d+)?\.pt")


def is_llm_checkpoint(run_dir: str | Path) -> bool:
    """Whether a run folder (or one of its checkpoint files) holds an LLM trainer run rather than a PPO one.

    Reads the run's config.json where there is one, which costs nothing next to loading a model's checkpoint;
    only without it is the checkpoint itself read.
    """
    config = _recorded_config(Path(run_dir))
    if config is None:
        _, state = read_checkpoint(run_dir, torch.device("cpu"))
        config = state["config"]
    return _is_llm_config(config)


def load_llm_policy(run_dir: str | Path, device: str | torch.device, *, model: PreTrainedModel | None = None,
                    tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[LLMTrainConfig, LLMPolicy]:
    """The config and trained policy (eval mode, on `device`) of an LLM trainer run folder or checkpoint file.

    `model`/`tokenizer` replace loading the run's `config.model` (tests pass `tiny_test_model()`); they must be the
    base model the run started from, as a LoRA checkpoint holds only the adapters. The model is moved to `device`,
    given the run's adapters and loaded in place, as the trainer does.
    """
    dev = _device(device)
    path, state, config = _read_llm_checkpoint(run_dir, dev)
    return config, _build_policy(path, state, config, dev, model, tokenizer)


def evaluate_llm(run_dir: str | Path, *, env_id: str | None = None, episodes: int = 200, levels: str | None = None,
                 split: str = "test", greedy: bool = True, seed: int | None = None, device: str = "cpu",
                 model: PreTrainedModel | None = None, tokenizer: PreTrainedTokenizerBase | None = None,
                 batch_size: int = 32, progress: bool = False, record: str | Path | None = None) -> dict[str, Any]:
    """Play `episodes` episodes with a run's trained LLM policy; see the module docstring for what is played.

    `greedy` decodes the most likely token; otherwise tokens are sampled at the run's temperature, each episode from
    its own generator, seeded from `seed` and the episode's number (`episode_generator`), so that episode k plays
    alike whatever `batch_size` and `episodes`. `seed` also gives the first reset seed (None: `evaluation_seed`).
    `batch_size` episodes are played at once. `record` names a file that gets the episodes as trajectory records,
    gzip-compressed where the name ends in .gz (replaced if it exists; `creditgym rescore` reads it). Returns the
    metrics and where they came from.
    """
    _check_inputs(env_id, episodes, split, seed, batch_size)
    check_device(device)
    dev = resolve_device(device)
    path, state, config = _read_llm_checkpoint(run_dir, dev)
    env_id = env_id or config.env_id
    # The envs before the model, so that a wrong --levels or env argument fails before a large model loads.
    envs, bank, setting = _make_envs(config, env_id, levels, split, min(batch_size, episodes))
    seed = evaluation_seed(config, env_id, setting, episodes) if seed is None else seed
    try:
        policy = _build_policy(path, state, config, dev, model, tokenizer, progress=progress)
        result = _play(policy, config, envs, bank, episodes, greedy, seed, progress, record, env_id)
    finally:
        for env in envs:
            env.close()
    result.update(setting)
    result.update(_overlap_with_training(config, env_id, seed, episodes, setting))
    result.update({"run_dir": str(run_dir), "env_id": env_id, "greedy": greedy, "seed": seed,
                   "batch_size": batch_size, "device": str(dev),
                   "creditgym": creditgym.__version__, "algo": config.algo, "model": config.model,
                   "iteration": state.get("iteration"), "max_turns": config.max_turns})
    return result


def evaluate_policy(policy: LLMPolicy, config: LLMTrainConfig, *, env_id: str | None = None, episodes: int = 200,
                    levels: str | None = None, split: str = "test", greedy: bool = True, seed: int | None = None,
                    batch_size: int = 32, progress: bool = False, record: str | Path | None = None
                    ) -> dict[str, Any]:
    """`evaluate_llm`'s metrics for a policy in memory (such as a trainer's live `policy`) under a run's `config`."""
    _check_inputs(env_id, episodes, split, seed, batch_size)
    env_id = env_id or config.env_id
    envs, bank, setting = _make_envs(config, env_id, levels, split, min(batch_size, episodes))
    seed = evaluation_seed(config, env_id, setting, episodes) if seed is None else seed
    try:
        return {**_play(policy, config, envs, bank, episodes, greedy, seed, progress, record, env_id), **setting,
                **_overlap_with_training(config, env_id, seed, episodes, setting)}
    finally:
        for env in envs:
            env.close()


# -- loading ------------------------------------------------------------------------------------------------------
def _recorded_config(path: Path) -> dict[str, Any] | None:
    """The training config in the run's config.json, or None where there is none to trust."""
    if path.is_dir():
        folder = path
    elif _KEPT_CHECKPOINT.fullmatch(path.name):  # a run's own checkpoint file, beside the run's config.json
        folder = path.parent
    else:
        return None
    try:
        config = json.loads((folder / "config.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None
    return config if isinstance(config, dict) else None


def _is_llm_config(config: Any) -> bool:
    return isinstance(config, Mapping) and config.get("algo") in ALGOS


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    check_device(device)
    return resolve_device(device)


def _read_llm_checkpoint(run_dir: str | Path, device: torch.device) -> tuple[Path, dict[str, Any], LLMTrainConfig]:
    """The checkpoint's file, contents (on `device`) and training config, or an error that says what to pass."""
    path, state = read_checkpoint(run_dir, device, kind="LLM trainer")
    saved = state["config"]
    if not _is_llm_config(saved) or "trainable" not in state:
        if "model" in state and not _is_llm_config(saved):
            raise ValueError(f"{path} is a PPO checkpoint, not an LLM trainer one; evaluate it with "
                             "creditgym.agents.evaluate.evaluate (`creditgym eval` of a PPO run)")
        raise ValueError(f"{path} is not an LLM trainer checkpoint: it holds no 'trainable' weights or no algo of "
                         f"{ALGOS}; pass a run folder or checkpoint written by `creditgym train --algo grpo ...`")
    # The run's device is not the evaluation's: a run trained on a GPU evaluates on a machine without one.
    known = {item.name for item in fields(LLMTrainConfig)}
    try:
        with saved_run_config(path):
            config = LLMTrainConfig(**{**{k: v for k, v in saved.items() if k in known}, "device": "auto"})
    except (TypeError, ValueError) as err:
        raise ValueError(f"the config saved in {path} is not one this creditgym accepts ({err}); evaluate it with "
                         "the creditgym version that trained it") from None
    return path, state, config


def _build_policy(path: Path, state: dict[str, Any], config: LLMTrainConfig, device: torch.device,
                  model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase | None, *,
                  progress: bool = True) -> LLMPolicy:
    """The model as `LLMTrainer` builds it, with the checkpoint's trainable weights loaded into it."""
    if model is None or tokenizer is None:
        try:
            model, tokenizer = load_policy_model(config.model, progress=progress)
        except ValueError as err:
            raise ValueError(f"{path} was trained from model {config.model!r}, which does not load here: {err}") \
                from None
    model = model.to(device)
    if config.lora_rank:
        model = add_lora(model, config)
    weights = state["trainable"]
    if not isinstance(weights, dict):
        raise ValueError(f"checkpoint {path} is damaged: its 'trainable' weights are a {type(weights).__name__}, "
                         "not a mapping of names to tensors; use another checkpoint of the run (such as a kept "
                         "checkpoint-<iteration>.pt)")
    # What the trainer saved: every weight, or with LoRA only the adapters (peft freezes the rest).
    expected = {name for name, p in model.named_parameters() if p.requires_grad or not config.lora_rank}
    if set(weights) != expected:
        raise ValueError(_weights_mismatch(path, config, set(weights), expected))
    hint = (f" (the run trained {config.model!r} with lora_rank={config.lora_rank}); evaluate with that model and "
            "the run's own config")
    load_weights(model, weights, path, hint=hint, strict=False)
    model.eval()
    return LLMPolicy(model, tokenizer, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                     bf16=config.bf16)


def _weights_mismatch(path: Path, config: LLMTrainConfig, saved: set[str], expected: set[str]) -> str:
    saved_lora = bool(saved) and all("lora_" in name for name in saved)
    if saved_lora and not config.lora_rank:
        why = "it holds LoRA adapters, but its config says lora_rank=0"
    elif config.lora_rank and not saved_lora:
        why = f"its config says lora_rank={config.lora_rank}, but it holds full weights, not LoRA adapters"
    else:
        extra, missing = sorted(saved - expected), sorted(expected - saved)
        first = f"{extra[0]} is not in this model" if extra else f"{missing[0]} is missing from the checkpoint"
        why = f"its weights are not this model's: {first} ({len(extra)} unknown, {len(missing)} missing)"
    return (f"checkpoint {path} does not fit the model it was loaded into: {why}. It was trained from "
            f"{config.model!r} with lora_rank={config.lora_rank}, lora_target_modules={config.lora_target_modules!r}; "
            "evaluate with that model (and any model=/tokenizer= passed must be it) and the run's unedited config")


# -- playing ------------------------------------------------------------------------------------------------------
def _check_inputs(env_id: str | None, episodes: int, split: str, seed: int | None, batch_size: int) -> None:
    for name, value, least in (("episodes", episodes, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r}")
    # Episode i resets with seed + i, and gymnasium's seeds stop at 2**63 - 1.
    bad_seed = isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - episodes
    if seed is not None and bad_seed:
        raise ValueError(f"seed must be a whole number between 0 and 2**63 - 1 - episodes, got {seed!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if env_id is not None:
        check_env_id(env_id)


def _is_sokoban(env_id: str) -> bool:
    return env_id.startswith("creditgym/Sokoban")


def _takes_split(env_id: str) -> bool:
    entry_point = gym.spec(env_id).entry_point
    creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    return "split" in inspect.signature(creator).parameters


def _make_envs(config: LLMTrainConfig, env_id: str, levels: str | None, split: str,
               count: int) -> tuple[list[gym.Env], Any, dict[str, Any]]:
    """`count` text envs of `env_id` on the evaluation split, the Sokoban level bank to play in order (else None),
    and the settings that go into the result."""
    sokoban = _is_sokoban(env_id)
    if levels is not None and not sokoban:
        raise ValueError(f"levels applies to Sokoban ids only, not {env_id}; leave --levels out")
    kwargs = dict(config.env_kwargs)
    setting: dict[str, Any] = {}
    # Envs with a held-out split (Sokoban levels, ToolUse worlds and questions, Shop goals) play the one asked for,
    # whatever the run trained on.
    if _takes_split(env_id):
        kwargs["split"] = split
        setting["split"] = split
    if levels is not None:
        kwargs["levels"] = levels
        setting["split"] = "file"
    check_env_arguments(env_id, kwargs, batched=False)
    envs: list[gym.Env] = []
    try:
        for _ in range(count):
            envs.append(make_text_env(env_id, kwargs))
    except BaseException:
        for env in envs:
            env.close()
        raise
    bank = envs[0].unwrapped.bank if sokoban else None
    if bank is not None:
        setting["levels"] = str(kwargs.get("levels", gym.spec(env_id).kwargs.get("levels")))
    return envs, bank, setting


def evaluation_seed(config: LLMTrainConfig, env_id: str, setting: dict[str, Any], episodes: int) -> int:
    """The default first seed: on the run's own env without a held-out split, the first after the seeds the run
    trained on (`training_seeds`), where the training tasks cannot come back; 0 elsewhere (a split's levels are
    held out whatever the seed, which then only seeds the sampling)."""
    if "split" in setting or env_id != config.env_id:
        return 0
    after = training_seeds(config).stop
    return after if after <= MAX_SEED - episodes else 0


def _overlap_with_training(config: LLMTrainConfig, env_id: str, seed: int, episodes: int,
                           setting: dict[str, Any]) -> dict[str, Any]:
    """For an env without a held-out split, how many evaluation episodes reset with a seed the run trained on
    (a run trained with --seed 0 met the tasks of evaluation seeds 0, 1, ...), with a warning that says what to
    pass instead."""
    if "split" in setting or env_id != config.env_id:
        return {}
    trained = training_seeds(config)
    overlap = len(range(max(seed, trained.start), min(seed + episodes, trained.stop)))
    if overlap:
        warnings.warn(f"{overlap} of the {episodes} evaluation episodes reset {env_id} with seeds the run trained on "
                      f"({trained.start} to {trained.stop - 1}), and {env_id} has no held-out split: pass "
                      f"--seed {trained.stop} (or any seed outside that range) to evaluate on tasks it never saw",
                      stacklevel=3)
    return {"episodes_with_training_seeds": overlap}


@torch.no_grad()
def _play(policy: LLMPolicy, config: LLMTrainConfig, envs: list[gym.Env], bank: Any, episodes: int, greedy: bool,
          seed: int, progress: bool, record: str | Path | None, env_id: str) -> dict[str, Any]:
    if bank is not None:
        warn_when_levels_repeat(bank, episodes)
    # Opened first, so an unwritable path fails before any episode is played.
    with replacing_writer(record) if record is not None else contextlib.nullcontext() as writer:
        bar = _Progress(progress, "eval", total=episodes, start=0)
        played: list[Episode] = []
        start_time, tokens = time.perf_counter(), 0
        try:
            for start in range(0, episodes, len(envs)):
                count = min(len(envs), episodes - start)
                collector = RolloutCollector(envs[:count], policy, group_size=1, max_turns=config.max_turns,
                                             history_turns=config.history_turns,
                                             max_prompt_tokens=config.max_prompt_tokens, record=writer is not None)
                numbers = range(start, start + count)
                options: Sequence[dict[str, Any]] | None = None
                if bank is not None:  # the bank in order, wrapping only when asked for more episodes than it holds
                    options = [{"level": bank[number % len(bank)]} for number in numbers]
                # Each episode samples from its own generator: with one for the batch, an episode's tokens would
                # depend on its place in it, and so on --batch-size. Greedy decoding draws nothing.
                generators = None if greedy else [episode_generator(policy.device, seed, n) for n in numbers]
                batch = collector.collect([seed + number for number in numbers], generator=generators,
                                          greedy=greedy, options=options)
                played += batch
                if writer is not None:
                    for number, record_ in zip(numbers, llm_episode_records(batch, env_id), strict=True):
                        record_.metadata["episode"] = number
                        writer.write(record_)
                tokens += sum(episode.num_generated_tokens for episode in batch)
                bar.advance(len(played), {"charts/success_rate": float(np.mean([ep.success for ep in played])),
                                          "charts/tokens_per_s": tokens / max(time.perf_counter() - start_time, 1e-9)})
        finally:
            bar.close()
    result = _summary(played, config, bank, episodes)
    if record is not None:
        result["recorded"] = str(record)
    return result


def episode_generator(device: torch.device, seed: int, episode: int) -> torch.Generator:
    """The generator that samples evaluation episode `episode` (0, 1, ...) of an evaluation with `seed`, on `device`:
    seeded from both through numpy's SeedSequence (`reseeded`), so that no two episodes share a stream."""
    return reseeded(device, seed, episode, "eval-sampling")


def _summary(played: list[Episode], config: LLMTrainConfig, bank: Any, episodes: int) -> dict[str, Any]:
    if not any(episode.turns for episode in played):
        raise ValueError(f"no episode played a turn: every first prompt (instructions and observation) was longer "
                         f"than the run's max_prompt_tokens ({config.max_prompt_tokens}); train with a larger "
                         "--max-prompt-tokens")
    success = [episode.success for episode in played]
    steps = [len(episode.turns) for episode in played]
    turns = [turn for episode in played for turn in episode.turns]
    result: dict[str, Any] = {
        "episodes": episodes,
        "success_rate": float(np.mean(success)),
        "success_rate_ci95": [round(bound, 4) for bound in wilson_interval(int(sum(success)), len(success))],
        "mean_steps": float(np.mean(steps)),
        "mean_return": float(np.mean([episode.total_reward for episode in played])),
        "invalid_action_rate": float(np.mean([turn.invalid for turn in turns])),
        # Episodes the env did not end: cut at the run's max_turns, the env's time limit or the prompt budget.
        "truncated_rate": float(np.mean([not episode.terminated for episode in played])),
        "mean_response_tokens": float(np.mean([turn.num_tokens for turn in turns])),
    }
    if bank is not None:
        result["distinct_levels"] = int(min(len(played), len(bank)))
        result.update(_solver_gap(played, bank))
    return result


def _solver_gap(played: list[Episode], bank: Any) -> dict[str, Any]:
    """As the PPO evaluation reports: how many turns the solved levels took, against the solver's optimum."""
    from creditgym.envs.sokoban.solver import solve

    solved, optimal, excess = [], [], []
    for number, episode in enumerate(played):
        if not episode.success:
            continue
        solved.append(len(episode.turns))
        plan = solve(bank[number % len(bank)])
        if plan is not None:
            optimal.append(len(plan))
            excess.append(len(episode.turns) - len(plan))
    return {
        "solved_mean_steps": float(np.mean(solved)) if solved else None,
        "solved_mean_optimal_steps": float(np.mean(optimal)) if optimal else None,
        "solved_mean_excess_steps": float(np.mean(excess)) if excess else None,
        "solved_optimal_fraction": float(np.mean([e == 0 for e in excess])) if excess else None,
    }
