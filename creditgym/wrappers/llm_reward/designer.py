"""`RewardDesigner`: LLM-written dense rewards, in the style of Eureka, Text2Reward and Auto MC-Reward.

Each iteration asks a `ChatModel` for K programs `compute_dense_reward(state, action, next_state) -> (float, dict)`
and passes every one through five stages, recording each outcome:

1. extract: the code is pulled out of the reply (markdown fences, or bare code trimmed until it parses);
2. critic: the model reviews the program for consistency and errors (Auto MC-Reward's Reward Critic); the verdict
   is recorded and only disqualifies when `DesignerConfig.critic_rejects` is set;
3. static: `validate_program`'s AST allow-list;
4. dry run: the program runs in the sandbox on random transitions of the single env;
5. train: a short PPO run on the batched env with the program's reward *added* to the task reward (the sandbox
   is called once per step for all envs); fitness is the success rate of the episodes that end in the last
   `fitness_window` of training.

A program that fails any stage, or is disqualified by the sandbox during training, gets fitness -inf with its
error recorded and is never selected; the best program is the argmax of fitness. The next prompt carries the best
program so far, its reward reflection (per-component statistics, Eureka) and a trajectory analysis (why its
training episodes failed; statistics, standing in for Auto MC-Reward's LLM analyzer), plus the errors of the last
iteration's failed programs. Every program is written to `run_dir/candidates/<id>.json` and a per-stage pass
count to `run_dir/report.json`, with the config, seed and creditgym version.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv, VectorWrapper

import creditgym
from creditgym.agents.config_cli import check_device, check_run_folder
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.agents.vec import TorchVecEnv
from creditgym.llm.chat import ChatModel, ChatModelError
from creditgym.wrappers.llm_reward.describe import describe_env
from creditgym.wrappers.llm_reward.sandbox import RewardSandbox, SandboxLimits
from creditgym.wrappers.llm_reward.validate import ENTRY_POINT, validate_program
from creditgym.wrappers.llm_reward.wrapper import ComponentStats, VectorLLMCodeReward

STAGES = ("extract", "critic", "static", "dry_run", "train")
#: PPOConfig fields the designer sets itself; `ppo_kwargs` may set any other.
_PPO_MANAGED = frozenset({"env_id", "env_kwargs", "total_steps", "num_envs", "num_steps", "seed", "shaping",
                          "runs_dir", "run_name", "progress", "tensorboard", "checkpoint_every"})
_MAX_FEEDBACK_ERRORS = 4
_MAX_ERROR_CHARS = 400

SYSTEM_PROMPT = f"""You are a reward engineer. You write dense reward functions for reinforcement learning.
Write exactly one Python function:

def {ENTRY_POINT}(state, action, next_state):
    ...
    return total, components

`state` and `next_state` are plain dicts described by the class below, `action` is the action taken.
`total` is a float; `components` is a dict of named float parts that sum to `total`.
Rules: only `import math` is allowed; no classes, files, printing or names starting with an underscore.
The dense reward is ADDED to the task reward, so reward progress towards solving and keep it small
(about -1 to 1 per step). Reply with one ```python code block."""

CRITIC_PROMPT = """You review reward functions for reinforcement learning before they are used.
Check the program below against the state description: does it read only fields that exist, with the right types;
can it raise an error or return NaN; do the components sum to the total; does it reward progress on the task
rather than something the agent can farm (such as standing still or pushing a box back and forth)?
Answer with a short review, then a last line that is exactly VERDICT: PASS or VERDICT: FAIL."""


@dataclass
class DesignerConfig:
    """Every RewardDesigner setting."""

    env_id: str = "creditgym/Sokoban-6x6-2b-v0"
    """registered env id with a creditgym batched env (Sokoban) for the fitness runs"""
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"obs_mode": "egocentric", "action_mask": True})
    """keyword arguments for the env, in both the dry run and the PPO runs"""
    iterations: int = 3
    """design iterations (Eureka: 5)"""
    samples: int = 4
    """candidate programs per iteration, K (Eureka: 16)"""
    temperature: float = 0.7
    """sampling temperature of the candidate programs (the critic decodes greedily)"""
    max_new_tokens: int = 512
    """longest reply, for programs and reviews"""
    critic: bool = True
    """ask the model to review every extracted program (Auto MC-Reward's Reward Critic)"""
    critic_rejects: bool = False
    """disqualify programs the critic fails; off, the verdict is only recorded (a weak model's review is noise)"""
    dry_run_transitions: int = 64
    """random single-env transitions every program must evaluate without error before training"""
    train_steps: int = 20_000
    """env steps of each fitness PPO run, summed over envs (the same for every candidate and the sparse baseline)"""
    num_envs: int = 32
    """parallel envs of each fitness run"""
    num_steps: int = 32
    """steps per env per PPO rollout"""
    seeds: tuple[int, ...] = (1,)
    """PPO seeds per candidate; fitness is the mean success rate over them"""
    fitness_window: float = 0.5
    """fraction of training, at the end, whose finished episodes count towards the success rate"""
    replace_task_reward: bool = False
    """train on the candidate reward alone (the task channel is cancelled by a `task_removed` channel)"""
    ppo_kwargs: dict[str, Any] = field(default_factory=dict)
    """other PPOConfig fields for the fitness runs, e.g. {"learning_rate": 1e-3, "device": "cpu"}"""
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)
    """limits of the sandbox that runs every program"""
    seed: int = 0
    """seeds program sampling and the dry-run transitions"""
    runs_dir: str = "runs/design-reward"
    """where design runs are written"""
    run_name: str | None = None
    """run folder name under runs_dir (default: env-time)"""
    progress: bool = True
    """show a progress bar over the candidates, on stderr, naming the stage that runs now"""

    def __post_init__(self) -> None:
        self.seeds = tuple(self.seeds)
        for name in ("iterations", "samples", "max_new_tokens", "dry_run_transitions", "num_envs", "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"DesignerConfig.{name} must be at least 1, got {getattr(self, name)}")
        if not self.temperature >= 0:  # also refuses nan
            raise ValueError(f"temperature must be ≥ 0 (0 decodes greedily), got {self.temperature}")
        check_device(self.ppo_kwargs.get("device", "auto"))  # now, not after every program has been generated
        check_run_folder("DesignerConfig", self.runs_dir, self.run_name)
        if self.train_steps < self.num_envs * self.num_steps:
            raise ValueError(f"train_steps ({self.train_steps}) must cover one rollout, num_envs * num_steps = "
                             f"{self.num_envs * self.num_steps}; raise train_steps or lower num_envs/num_steps")
        if not self.seeds:
            raise ValueError("seeds must hold at least one PPO seed, e.g. (1,)")
        if min(self.seed, *self.seeds) < 0:  # numpy's and torch's seeding refuse them, but only after generation
            raise ValueError(f"seed and seeds must be ≥ 0, got seed={self.seed}, seeds={self.seeds}")
        if not 0 < self.fitness_window <= 1:
            raise ValueError(f"fitness_window must be in (0, 1], got {self.fitness_window}")
        if self.env_id not in gym.registry:
            raise ValueError(f"unknown env id {self.env_id!r}; `creditgym list` shows the registered ids")
        spec = gym.spec(self.env_id)
        if spec.vector_entry_point is None or spec.namespace != "creditgym":
            raise ValueError(f"{self.env_id} has no creditgym batched env; fitness runs need one (use a Sokoban id)")
        ppo_fields = {f.name for f in dataclasses.fields(PPOConfig)}
        bad = sorted(set(self.ppo_kwargs) - (ppo_fields - _PPO_MANAGED))
        if bad:
            raise ValueError(f"ppo_kwargs {bad} are not PPOConfig fields or are set by the designer "
                             f"({sorted(_PPO_MANAGED)}); set those through DesignerConfig instead")


@dataclass
class Candidate:
    """One program and everything that happened to it; `fitness` is -inf unless it passed every stage."""

    id: str
    iteration: int
    sample: int
    model: str
    prompt: list[dict[str, str]]
    response: str
    source: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    fitness: float = -math.inf
    errors: list[str] = field(default_factory=list)

    def fail(self, stage: str, error: str, **details: Any) -> None:
        self.stages[stage] = {"passed": False, "error": error, **details}
        self.errors.append(f"{stage}: {error}")
        self.fitness = -math.inf

    def to_json(self) -> str:
        return strict_json(dataclasses.asdict(self))


@dataclass
class DesignResult:
    """The outcome of `RewardDesigner.run()`."""

    best: Candidate | None
    """argmax of fitness over every candidate of every iteration; None when none passed every stage"""
    candidates: list[Candidate]
    stage_counts: dict[str, int]
    """how many candidates passed each stage ("generated" counts them all)"""
    run_dir: Path


def extract_code(reply: str) -> str | None:
    """The program in a model reply: the fenced block that defines the entry point (else the first fenced block),
    or bare code from its first `def`/`import` line, trimmed from the end until it parses. None if there is none.

    >>> extract_code("Sure:\\n```python\\ndef compute_dense_reward(s, a, n):\\n    return 0.0, {}\\n```\\nDone.")
    'def compute_dense_reward(s, a, n):\\n    return 0.0, {}'
    """
    blocks = re.findall(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\n(.*?)(?:```|\Z)", reply, flags=re.DOTALL)
    blocks = [block.strip("\n") for block in blocks if block.strip()]
    if blocks:
        defining = [block for block in blocks if f"def {ENTRY_POINT}" in block]
        return (defining or blocks)[0]
    lines = reply.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"(def|import|from)\s", line)), None)
    if start is None:
        return None
    # Prose after bare code breaks parsing; the longest prefix that parses is the program.
    for end in range(len(lines), start, -1):
        code = "\n".join(lines[start:end]).strip("\n")
        try:
            ast.parse(code)
        except (SyntaxError, ValueError):
            continue
        return code
    return "\n".join(lines[start:]).strip("\n")


def parse_verdict(review: str) -> str:
    """"pass" or "fail" from the last `VERDICT:` line of a critic review, else "unclear"."""
    found = re.findall(r"VERDICT:\s*(PASS|FAIL)", review, flags=re.IGNORECASE)
    return found[-1].lower() if found else "unclear"


# -- the batched reward wrapper and the episode recorder used by the fitness runs --------------------------------
class EpisodeRecorder(VectorWrapper):
    """Records each finished episode: when it ended, success, boxes on target and the return of every channel."""

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self.episodes: list[dict[str, Any]] = []
        self.steps = 0
        self._returns: dict[str, np.ndarray] = {}
        self._lengths = np.zeros(env.num_envs, np.int64)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.steps += self.num_envs
        self._lengths += 1
        for name, value in info["reward_components"].items():
            self._returns.setdefault(name, np.zeros(self.num_envs))
            self._returns[name] += torch.as_tensor(value).cpu().numpy()
        done = (terminated | truncated).cpu().numpy()
        success = info["success"].cpu().numpy()
        on_target = info["boxes_on_target"].cpu().numpy()
        for i in np.flatnonzero(done):
            self.episodes.append({"end_step": self.steps, "success": bool(success[i]),
                                  "boxes_on_target": int(on_target[i]), "length": int(self._lengths[i]),
                                  "returns": {name: float(column[i]) for name, column in self._returns.items()}})
            self._lengths[i] = 0
            for column in self._returns.values():
                column[i] = 0.0
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self._lengths[:] = 0
        self._returns = {}
        return self.env.reset(seed=seed, options=options)

    def get_state(self) -> dict[str, Any]:
        return self.env.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.env.set_state(state)


def analyze_trajectories(episodes: list[dict[str, Any]], channel: str = "llm_reward") -> str:
    """Trajectory Analyzer: why the recorded training episodes failed, and whether the dense channel paid failed
    episodes as much as successful ones (a sign it rewards something other than progress)."""
    if not episodes:
        return "No training episode finished in the fitness window: the agent never ended an episode."
    failed = [e for e in episodes if not e["success"]]
    lines = [f"{len(episodes)} training episodes ended; {1 - len(failed) / len(episodes):.0%} solved."]
    if failed:
        by_boxes: dict[int, int] = {}
        for episode in failed:
            by_boxes[episode["boxes_on_target"]] = by_boxes.get(episode["boxes_on_target"], 0) + 1
        spread = ", ".join(f"{count} with {boxes} box(es) on target" for boxes, count in sorted(by_boxes.items()))
        mean_length = sum(e["length"] for e in failed) / len(failed)
        lines.append(f"{len(failed)} failed by running out of time (mean length {mean_length:.0f} steps): {spread}.")
    for name in ("task", channel):
        solved = [e["returns"].get(name, 0.0) for e in episodes if e["success"]]
        unsolved = [e["returns"].get(name, 0.0) for e in failed]
        if unsolved and any(name in e["returns"] for e in episodes):
            text = f"mean {name} return per episode: failed {sum(unsolved) / len(unsolved):.3f}"
            if solved:
                text += f", solved {sum(solved) / len(solved):.3f}"
            lines.append(text + ".")
    if failed and any(channel in e["returns"] for e in episodes):
        unsolved_dense = sum(e["returns"].get(channel, 0.0) for e in failed) / len(failed)
        if unsolved_dense > 0:
            lines.append(f"Failed episodes still collect a positive {channel} return: the dense reward pays for "
                         "something the agent can farm without solving; reward progress differences instead.")
    return "\n".join(lines)


def reward_reflection(stats: dict[str, dict[str, float]], success_rate: float) -> str:
    """Eureka's reward reflection: the success rate and per-component statistics over the training transitions."""
    lines = [f"Success rate during the last part of training: {success_rate:.2f}.",
             "Per-component statistics over all training transitions:"]
    for name, s in stats.items():
        lines.append(f"  {name}: mean {s['mean']:.4f}, std {s['std']:.4f}, min {s['min']:.3f}, max {s['max']:.3f}, "
                     f"non-zero {s['nonzero']:.0%}")
    if len(lines) == 2:
        lines.append("  (no statistics: the program returned no components)")
    return "\n".join(lines)


# -- the designer -----------------------------------------------------------------------------------------------
class _DesignProgress:
    """A rich progress bar on stderr over the candidates, with the best fitness and the stage that runs now (a no-op
    when disabled)."""

    def __init__(self, *, enabled: bool, total: int) -> None:
        self.bar = None
        self.best = -math.inf
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]design"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
                                TextColumn("{task.fields[now]}"), console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task("design", total=total, best="-", now="")

    def show(self, now: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, now=now)

    def advance(self, candidate: Candidate) -> None:
        if self.bar is not None:
            self.best = max(self.best, candidate.fitness)
            self.bar.update(self.task, advance=1, best=f"{self.best:.3f}" if math.isfinite(self.best) else "-")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class RewardDesigner:
    """Generates, critiques, validates, dry-runs and trains reward programs; keeps the best (see module doc).

        designer = RewardDesigner(HFChatModel.from_pretrained("smollm2-135m"), DesignerConfig(iterations=1))
        result = designer.run()
        result.best.source if result.best else result.stage_counts
    """

    def __init__(self, chat: ChatModel, config: DesignerConfig | None = None, *, model_name: str | None = None
                 ) -> None:
        self.chat = chat
        self.config = config or DesignerConfig()
        self.model_name = model_name or _model_name(chat)
        self.description = describe_env(self.config.env_id, self.config.env_kwargs)
        cfg = self.config
        self.run_dir = Path(cfg.runs_dir) / (cfg.run_name or f"{cfg.env_id.split('/')[-1]}-{int(time.time())}")
        self._transitions: list[tuple[Any, Any, Any]] | None = None
        self._progress = _DesignProgress(enabled=False, total=0)  # run() shows one; evaluate() alone shows none

    def run(self) -> DesignResult:
        """All iterations; every candidate is stored as it finishes and the report after each iteration."""
        cfg = self.config
        candidates: list[Candidate] = []
        best: Candidate | None = None
        feedback = ""
        self._progress = _DesignProgress(enabled=cfg.progress, total=cfg.iterations * cfg.samples)
        try:
            for iteration in range(cfg.iterations):
                prompt = self.prompt(feedback)
                batch = self._generate(iteration, prompt)
                candidates += batch
                for candidate in batch:
                    if candidate.fitness > (best.fitness if best else -math.inf):
                        best = candidate
                feedback = self.feedback(best, batch)
                self._write_report(candidates, best)
        finally:
            self._progress.close()
        return DesignResult(best=best, candidates=candidates, stage_counts=stage_counts(candidates),
                            run_dir=self.run_dir)

    def prompt(self, feedback: str = "") -> list[dict[str, str]]:
        """The design conversation: system rules, then the env description, then feedback from the last round."""
        user = f"{self.description}\n\nWrite {ENTRY_POINT} for this task."
        if feedback:
            user += f"\n\n{feedback}"
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def feedback(self, best: Candidate | None, batch: list[Candidate]) -> str:
        """What the next iteration is told: the best program with its reflection and analysis, and recent errors."""
        parts = []
        if best is not None:
            train = best.stages["train"]
            parts.append(f"The best program so far (fitness {best.fitness:.3f}):\n```python\n{best.source}\n```\n"
                         f"{train['reflection']}\nTrajectory analysis:\n{train['analysis']}\n"
                         "Improve on it: change the components that do not help and keep those that do.")
        errors = [f"- {c.errors[0][:_MAX_ERROR_CHARS]}" for c in batch if c.errors][:_MAX_FEEDBACK_ERRORS]
        if errors:
            parts.append("Some programs of the last round failed; avoid these errors:\n" + "\n".join(errors))
        return "\n\n".join(parts)

    def evaluate(self, candidate: Candidate, code: str | None) -> Candidate:
        """Stages 2-5 for an extracted program (stage 1's result is `code`); fills in the candidate and stores it."""
        cfg = self.config
        candidate.source = code
        self._progress.show(f"{candidate.id}: checking")
        if code is None:
            candidate.fail("extract", f"no code in the reply (expected a ```python block defining {ENTRY_POINT})")
            return self._store(candidate)
        candidate.stages["extract"] = {"passed": True}
        verdict, review = self._critique(code) if cfg.critic else ("skipped", "")
        if verdict == "fail" and cfg.critic_rejects:
            candidate.fail("critic", "the critic rejected the program", verdict=verdict, review=review)
            return self._store(candidate)
        candidate.stages["critic"] = {"passed": verdict != "fail", "verdict": verdict, "review": review}
        problems = validate_program(code)
        if problems:
            candidate.fail("static", "; ".join(problems))
            return self._store(candidate)
        candidate.stages["static"] = {"passed": True}
        dry = self._dry_run(code)
        if dry["error"] is not None:
            candidate.fail("dry_run", dry["error"])
            return self._store(candidate)
        candidate.stages["dry_run"] = {"passed": True, "components": dry["components"]}
        runs = []
        for seed in cfg.seeds:
            self._progress.show(f"{candidate.id}: PPO seed {seed}, {cfg.train_steps:,} env steps")
            runs.append(self.train(code, seed))
        failed = next((run for run in runs if run["error"] is not None), None)
        if failed is not None:
            candidate.fail("train", failed["error"], seed=failed["seed"])
            return self._store(candidate)
        candidate.fitness = sum(run["success_rate"] for run in runs) / len(runs)
        last = runs[-1]
        candidate.stages["train"] = {
            "passed": True, "success_rates": [run["success_rate"] for run in runs], "env_steps": last["env_steps"],
            "components": last["components"], "sandbox_seconds": last["sandbox_seconds"],
            "transitions": last["transitions"], "wall_seconds": last["wall_seconds"],
            "reflection": reward_reflection(last["components"], candidate.fitness),
            "analysis": analyze_trajectories(last["episodes"]),
        }
        return self._store(candidate)

    def train(self, program: str | None, seed: int) -> dict[str, Any]:
        """One fitness PPO run with `program` added to the task reward (None: the sparse task reward alone)."""
        cfg = self.config
        ppo_config = PPOConfig(
            env_id=cfg.env_id, env_kwargs=dict(cfg.env_kwargs), total_steps=cfg.train_steps, num_envs=cfg.num_envs,
            num_steps=cfg.num_steps, seed=seed, runs_dir=str(self.run_dir / "ppo"),
            run_name=f"{'sparse' if program is None else 'candidate'}-s{seed}-{time.monotonic_ns()}",
            progress=False, tensorboard=False, checkpoint_every=0, **cfg.ppo_kwargs,
        )
        ppo = PPO(ppo_config)
        # PPOConfig only names built-in potentials, so the batched env PPO built is re-wrapped here and reset with
        # the same seed, which gives the same first boards as PPO's own reset.
        env: VectorEnv = ppo.envs.env
        reward = None
        try:
            if program is not None:
                try:
                    env = reward = VectorLLMCodeReward(env, program, limits=cfg.sandbox,
                                                       replace_task_reward=cfg.replace_task_reward)
                except ValueError as error:
                    return {"error": str(error), "seed": seed}
            recorder = EpisodeRecorder(env)
            ppo.envs = TorchVecEnv(recorder, ppo.device)
            ppo.next_obs, info = ppo.envs.reset(seed=seed)
            ppo.next_mask = info.get("action_mask")
            start = time.perf_counter()
            ppo.learn()
            wall = time.perf_counter() - start
        finally:
            ppo.envs.close()
        if reward is not None and reward.error is not None:
            return {"error": f"disqualified during training: {reward.error}", "seed": seed}
        window_start = (1 - cfg.fitness_window) * recorder.steps
        episodes = [e for e in recorder.episodes if e["end_step"] > window_start]
        success = sum(e["success"] for e in episodes) / len(episodes) if episodes else 0.0
        return {"error": None, "seed": seed, "success_rate": success, "env_steps": recorder.steps,
                "episodes": episodes, "wall_seconds": wall,
                "components": reward.stats.summary() if reward else {},
                "sandbox_seconds": reward.sandbox_seconds if reward else 0.0,
                "transitions": reward.transitions if reward else 0}

    def sparse_fitness(self) -> float:
        """Mean success rate of the same PPO runs on the task reward alone: the baseline at equal env steps."""
        return sum(self.train(None, seed)["success_rate"] for seed in self.config.seeds) / len(self.config.seeds)

    # -- internals ----------------------------------------------------------------------------------------------
    def _generate(self, iteration: int, prompt: list[dict[str, str]]) -> list[Candidate]:
        cfg = self.config
        # The sample number in each prompt keeps servers that honour `seed` from returning K identical replies.
        prompts = [[prompt[0], {"role": "user", "content": f"{prompt[1]['content']}\n(Sample {k + 1} of "
                                                           f"{cfg.samples}.)"}] for k in range(cfg.samples)]
        self._progress.show(f"iteration {iteration + 1}: generating {cfg.samples} programs")
        replies = self.chat.generate(prompts, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                     seed=cfg.seed + iteration)
        replies = [str(reply) for reply in replies][:cfg.samples]
        replies += [""] * (cfg.samples - len(replies))
        batch = []
        for k, (messages, reply) in enumerate(zip(prompts, replies, strict=True)):
            candidate = Candidate(id=f"it{iteration}-s{k}", iteration=iteration, sample=k, model=self.model_name,
                                  prompt=messages, response=reply)
            batch.append(self.evaluate(candidate, extract_code(reply)))
            self._progress.advance(batch[-1])
        return batch

    def _critique(self, code: str) -> tuple[str, str]:
        messages = [{"role": "system", "content": CRITIC_PROMPT},
                    {"role": "user", "content": f"{self.description}\n\nProgram:\n```python\n{code}\n```"}]
        try:
            review = self.chat.generate([messages], temperature=0.0, max_new_tokens=self.config.max_new_tokens)[0]
        except (ChatModelError, IndexError) as error:
            return "error", f"the critic gave no review: {error}"
        return parse_verdict(str(review)), str(review)

    def _dry_run(self, code: str) -> dict[str, Any]:
        with RewardSandbox(limits=self.config.sandbox) as sandbox:
            error = sandbox.load(code)
            if error is not None:
                return {"error": error}
            result = sandbox.evaluate(self._sample_transitions())
        if not result.ok:
            return {"error": result.error}
        stats = ComponentStats()
        stats.add("total", np.asarray(result.rewards))
        for name, column in result.components.items():
            stats.add(name, np.asarray(column))
        return {"error": None, "components": stats.summary()}

    def _sample_transitions(self) -> list[tuple[Any, Any, Any]]:
        """Random-policy transitions of the single env, as plain data (drawn once, shared by every candidate)."""
        if self._transitions is None:
            env = gym.make(self.config.env_id, **self.config.env_kwargs)
            env.action_space.seed(self.config.seed)
            env.reset(seed=self.config.seed)
            state, transitions = env.unwrapped.state(), []
            while len(transitions) < self.config.dry_run_transitions:
                action = env.action_space.sample()
                _, _, terminated, truncated, _ = env.step(action)
                next_state = env.unwrapped.state()
                transitions.append((state, action.item() if hasattr(action, "item") else action, next_state))
                if terminated or truncated:
                    env.reset()
                    next_state = env.unwrapped.state()
                state = next_state
            env.close()
            self._transitions = transitions
        return self._transitions

    def _store(self, candidate: Candidate) -> Candidate:
        folder = self.run_dir / "candidates"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{candidate.id}.json").write_text(candidate.to_json())
        return candidate

    def _write_report(self, candidates: list[Candidate], best: Candidate | None) -> None:
        report = {
            "env_id": self.config.env_id, "model": self.model_name, "seed": self.config.seed,
            "creditgym": creditgym.__version__, "config": dataclasses.asdict(self.config),
            "stage_counts": stage_counts(candidates),
            "per_iteration": {str(i): stage_counts([c for c in candidates if c.iteration == i])
                              for i in sorted({c.iteration for c in candidates})},
            "best": None if best is None else {"id": best.id, "fitness": best.fitness, "source": best.source},
            "fitness": {c.id: c.fitness for c in candidates},
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "report.json").write_text(strict_json(report))


def strict_json(value: Any) -> str:
    """JSON that strict parsers (jq, JavaScript) read: a disqualified candidate's fitness, -inf, is written null."""
    def finite(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: finite(v) for key, v in item.items()}
        if isinstance(item, list | tuple):
            return [finite(v) for v in item]
        return item

    return json.dumps(finite(value), indent=2, allow_nan=False, default=str)


def stage_counts(candidates: list[Candidate]) -> dict[str, int]:
    """How many candidates passed each stage ("critic" counts programs it did not fail, or skipped reviewing)."""
    counts = {"generated": len(candidates)}
    for stage in STAGES:
        counts[stage] = sum(1 for c in candidates if c.stages.get(stage, {}).get("passed", False))
    return counts


def _model_name(chat: ChatModel) -> str:
    model = getattr(chat, "model", None)
    if isinstance(model, str):
        return model
    name = getattr(getattr(model, "config", None), "name_or_path", "")
    return f"{type(chat).__name__}({name})" if name else type(chat).__name__
