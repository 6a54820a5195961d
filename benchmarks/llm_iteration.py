"""One LLM training iteration (GRPO by default), timed by part: rollout, scoring, loss forward, backward, step.

Runs the trainer's own loop (`LLMTrainer.learn`) and times the calls it makes, each by wrapping it: the batched
rollout (`RolloutCollector.collect`), the no-grad scoring passes (`LLMTrainer.score`: π_old with ppo_llm's values
and bootstrap states, the KL reference, a learned reward's), the loss passes with grad (`LLMTrainer._loss`, the
forward), `backward` and the optimiser step. `other_s` is the rest of the iteration: packing the batch,
advantages, gradient clipping, a learned reward's own work, logging. The default one-epoch, one-minibatch GRPO
update takes π_old from its loss pass, so it has no scoring pass; micro-batches whose advantages are all 0 run no
backward. `--warmup` iterations run first, untimed. Prints one JSON object: the mean of each part over the timed
iterations, and each iteration's figures.

    python benchmarks/llm_iteration.py --model smollm2-135m --env creditgym/Sanity-WordBandit-v0 --episodes 16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import torch

import creditgym
from creditgym.agents.llm.config import LLMTrainConfig
from creditgym.agents.llm.trainer import LLMTrainer
from creditgym.benchmarking import add_llm_arguments, cpu_model

PARTS = ("rollout_s", "score_s", "loss_forward_s", "backward_s", "step_s")


class _Timers:
    """Seconds per part, one dict per iteration; an iteration starts with its rollout. On CUDA each reading waits
    for the GPU's queued work, so that a part is charged with its own kernels."""

    def __init__(self, clock: Callable[[], float], device: torch.device) -> None:
        self._clock = clock
        self._cuda = device.type == "cuda"
        self.iterations: list[dict[str, float]] = []
        self.started: list[float] = []

    def clock(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return self._clock()

    def add(self, part: str, seconds: float) -> None:
        self.iterations[-1][part] = self.iterations[-1].get(part, 0.0) + seconds

    def timed(self, part: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if part == "rollout_s":
                self.iterations.append({})
                self.started.append(self.clock())
            start = self.clock()
            try:
                return call(*args, **kwargs)
            finally:
                self.add(part, self.clock() - start)
        return wrapper


def _instrument(trainer: LLMTrainer, timers: _Timers) -> Callable[[], None]:
    """Wraps the calls each part makes; returns what undoes the one global wrap (`torch.autograd.backward`, which
    `Tensor.backward` calls)."""
    trainer.collector.collect = timers.timed("rollout_s", trainer.collector.collect)  # type: ignore[method-assign]
    trainer.score = timers.timed("score_s", trainer.score)  # type: ignore[method-assign]
    trainer._loss = timers.timed("loss_forward_s", trainer._loss)  # type: ignore[method-assign]
    trainer.update = timers.timed("update_s", trainer.update)  # type: ignore[method-assign]
    step_start: list[float] = []
    trainer.optimizer.register_step_pre_hook(lambda *_: step_start.append(timers.clock()))
    trainer.optimizer.register_step_post_hook(lambda *_: timers.add("step_s", timers.clock() - step_start.pop()))
    # The run's closing checkpoint (the whole model and AdamW's moments) is no part of an iteration.
    trainer.save_checkpoint = lambda *args, **kwargs: None  # type: ignore[method-assign]
    backward = torch.autograd.backward
    torch.autograd.backward = timers.timed("backward_s", backward)

    def undo() -> None:
        torch.autograd.backward = backward
    return undo


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_llm_arguments(parser, episodes=16, max_turns=3)
    parser.add_argument("--tiny", action="store_true",
                        help="a random tiny model built offline instead of --model, for a smoke run")
    parser.add_argument("--algo", default="grpo", help="the trainer's algorithm (grpo, drgrpo, rloo, reinforce_pp, "
                                                       "ppo_llm)")
    parser.add_argument("--micro-batch", type=int, default=8, help="rows per forward pass (micro_batch_size)")
    parser.add_argument("--iterations", type=int, default=1, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=0, help="iterations run before the timed ones, untimed")
    parser.add_argument("--clock", default="wall", choices=["wall", "thread"],
                        help="wall time, or this thread's CPU time (steadier on a busy machine; with --threads 1 "
                             "it covers torch's work on the CPU, but not the time a GPU works alone)")
    parser.add_argument("--config", type=json.loads, default={},
                        help='LLMTrainConfig fields to override as JSON, e.g. \'{"kl_coef": 0.05}\'')
    args = parser.parse_args(argv)
    if min(args.episodes, args.max_turns, args.max_new_tokens, args.threads, args.micro_batch,
           args.iterations) < 1:
        parser.error("--episodes, --max-turns, --max-new-tokens, --threads, --micro-batch and --iterations must be "
                     "at least 1")
    if min(args.history, args.seed, args.warmup) < 0:
        parser.error("--history, --seed and --warmup must be 0 or more")
    if args.env not in gym.registry:
        parser.error(f"unknown env id {args.env!r}; `creditgym list` shows the text envs")
    group = min(8, args.episodes)
    total = args.warmup + args.iterations
    with tempfile.TemporaryDirectory() as runs:
        try:  # the settings LLMTrainConfig refuses, refused before anything loads
            config = LLMTrainConfig(**{**dict(
                algo=args.algo, model="tiny" if args.tiny else args.model, env_id=args.env, num_groups=max(
                    1, args.episodes // group), group_size=group, max_turns=args.max_turns,
                history_turns=args.history, max_new_tokens=args.max_new_tokens, max_prompt_tokens=8192,
                micro_batch_size=args.micro_batch, seed=args.seed, device=args.device, threads=args.threads,
                iterations=total + 1, runs_dir=runs, run_name="bench", checkpoint_every=0, progress=False,
                tensorboard=False), **args.config})
        except (TypeError, ValueError) as error:
            parser.error(str(error))
        from creditgym.agents.config_cli import check_device
        from creditgym.agents.ppo import resolve_device
        from creditgym.llm.models import load_policy_model, tiny_test_model

        torch.set_num_threads(args.threads)
        try:
            check_device(args.device)
            device = resolve_device(args.device)
            model, tokenizer = (tiny_test_model(seed=0) if args.tiny
                                else load_policy_model(args.model, device=device, progress=False))
        except ValueError as error:
            parser.error(str(error))
        trainer = LLMTrainer(config, model=model, tokenizer=tokenizer)
        timers = _Timers(time.perf_counter if args.clock == "wall" else time.thread_time, device)
        undo = _instrument(trainer, timers)
        try:
            # One iteration short of config.iterations: learn() then skips the finished run's learning curve.
            metrics = trainer.learn(until_iteration=total)
            end = timers.clock()
        finally:
            undo()
            trainer.close()
    per_iteration = []
    for i, parts in enumerate(timers.iterations[args.warmup:], start=args.warmup):
        stop = timers.started[i + 1] if i + 1 < len(timers.started) else end
        figures = {"iteration_s": stop - timers.started[i], "update_s": parts.get("update_s", 0.0),
                   **{part: parts.get(part, 0.0) for part in PARTS}}
        figures["other_s"] = figures["iteration_s"] - sum(figures[part] for part in PARTS)
        per_iteration.append({key: round(value, 3) for key, value in figures.items()})
    means = {key: round(sum(it[key] for it in per_iteration) / len(per_iteration), 3) for key in per_iteration[0]}
    result = {
        "benchmark": "llm_iteration", "creditgym": creditgym.__version__,
        "machine": cpu_model(), "settings": vars(args),
        "model": "tiny" if args.tiny else args.model, "env": args.env, "algo": args.algo, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "threads": args.threads,
        "clock": args.clock, **means, "iterations": per_iteration,
        "last_metrics": {key: value for key, value in metrics.items()
                         if key.startswith("losses/") or key in ("charts/episodic_return", "charts/response_tokens")},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
