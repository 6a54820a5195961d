"""Trajectory records (JSONL, one episode a line) and offline re-scoring with another potential or estimator.

A record keeps, for each step, the observation (text or array), the action, the reward components, the info and,
when the env declares one, its `state()`, so potentials can be recomputed offline. LLM policies can add the
prompt and response token ids and logprobs. Each line also holds the env id, the reset seed and the creditgym
version.

    episodes = record_episodes(env, policy, n=8, seed=0, path="runs/traj.jsonl")
    episodes = [add_shaping(e, get_potential("box_distance").offline, gamma=0.99) for e in episodes]
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import creditgym
from creditgym import credit
from creditgym.wrappers.potentials import RecordPotential, get_potential, potential_names

FORMAT = "creditgym.trajectory/1"
ESTIMATORS = ("grpo", "dr_grpo", "rloo", "gae", "reinforce_pp", "reward_to_go")
_NDARRAY = "__ndarray__"


class TrajectoryFormatError(ValueError):
    """A trajectory file has a line that is not a valid record; the message gives the file and line number."""


@dataclass
class Step:
    """One transition: the action taken and what followed it."""

    action: Any
    observation: Any
    """The observation after the action."""
    reward_components: dict[str, float]
    terminated: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)
    """The step's info without `reward_components` (kept above)."""
    state: dict[str, Any] | None = None
    """`env.unwrapped.state()` after the action, when the env declares it."""
    advantage: float | None = None
    """Set by offline re-scoring with an estimator."""
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    logprobs: list[float] | None = None
    """Per response token, for LLM policies."""

    @property
    def reward(self) -> float:
        return float(sum(self.reward_components.values()))


@dataclass
class Episode:
    """One episode: the reset (observation, info, state) and its steps."""

    env_id: str
    seed: int | None
    observation: Any
    """The first observation, from reset."""
    steps: list[Step]
    info: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    version: str = creditgym.__version__
    """creditgym version that recorded it."""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def total_reward(self) -> float:
        return sum(step.reward for step in self.steps)

    def channel_sums(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        for step in self.steps:
            for name, value in step.reward_components.items():
                sums[name] = sums.get(name, 0.0) + value
        return sums

    @property
    def success(self) -> bool:
        return bool(self.steps and self.steps[-1].info.get("success", False))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data; a TypeError names the field that cannot be stored."""
        data = {"format": FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        data["steps"] = [{f.name: getattr(s, f.name) for f in dataclasses.fields(s)} for s in self.steps]
        return _encode(data, "episode")

    @classmethod
    def from_dict(cls, data: Any) -> Episode:
        """Inverse of `to_dict`; a ValueError says what is missing or malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"a record must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}; this creditgym reads {FORMAT!r} records")
        _require(data, "episode", {"env_id": str, "steps": list, "version": str})
        if data.get("seed") is not None and not isinstance(data["seed"], int):
            raise ValueError(f"episode.seed must be an integer or null, got {data['seed']!r}")
        steps = []
        for t, raw in enumerate(data["steps"]):
            where = f"steps[{t}]"
            if not isinstance(raw, dict):
                raise ValueError(f"{where} must be an object, got {type(raw).__name__}")
            _require(raw, where, {"action": object, "observation": object, "reward_components": dict,
                                  "terminated": bool, "truncated": bool})
            bad = [k for k, v in raw["reward_components"].items() if not isinstance(v, int | float)]
            if bad:
                raise ValueError(f"{where}.reward_components {bad} are not numbers")
            known = {f.name for f in dataclasses.fields(Step)}
            steps.append(Step(**{k: _decode(v) for k, v in raw.items() if k in known}))
        known = {f.name for f in dataclasses.fields(cls)} - {"steps"}
        return cls(steps=steps, **{k: _decode(v) for k, v in data.items() if k in known})


def _require(data: dict[str, Any], where: str, fields: dict[str, type]) -> None:
    for name, kind in fields.items():
        if name not in data:
            raise ValueError(f"{where} has no {name!r}")
        if not isinstance(data[name], kind):
            raise ValueError(f"{where}.{name} must be {kind.__name__}, got {type(data[name]).__name__}")


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return {_NDARRAY: value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"cannot store {where}: its key {key!r} is not a string")
        return {key: _encode(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, enum.Enum):
        return _encode(value.value, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode(dataclasses.asdict(value), where)
    raise TypeError(f"cannot store {where} ({type(value).__name__}) in a trajectory record; convert it to "
                    "strings, numbers, lists, dicts or numpy arrays")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _NDARRAY in value:
            return np.asarray(value[_NDARRAY], dtype=value["dtype"])
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


# -- files ------------------------------------------------------------------------------------------------------
class TrajectoryWriter:
    """Appends episodes to a JSONL file, one line each, written and flushed per episode.

    An episode that cannot be serialised or written leaves the file as it was, so earlier episodes are never
    lost. Use as a context manager, or call `close()`.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_APPEND)
        self._fd = os.open(self.path, flags, 0o644)

    def write(self, episode: Episode) -> None:
        data = memoryview((json.dumps(episode.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
        size = os.fstat(self._fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except BaseException:
            os.ftruncate(self._fd, size)  # drop the partial line
            raise

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trajectories(path: str | Path) -> Iterator[Episode]:
    """Episodes from a JSONL file, in order; a malformed line raises `TrajectoryFormatError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trajectory file at {path}; write one with record_episodes(..., path=...)")
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                raise TrajectoryFormatError(f"{path}:{number}: not UTF-8 text ({error.reason})") from None
            except json.JSONDecodeError as error:
                cut = "" if raw.endswith(b"\n") else "; the line is cut short, as after an interrupted write"
                raise TrajectoryFormatError(f"{path}:{number}: not valid JSON ({error.msg} at column "
                                            f"{error.colno}){cut}") from None
            try:
                episode = Episode.from_dict(data)
            except (ValueError, TypeError) as error:
                raise TrajectoryFormatError(f"{path}:{number}: {error}") from None
            yield episode


def load_trajectories(path: str | Path) -> list[Episode]:
    return list(read_trajectories(path))


# -- recording --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyOutput:
    """What an LLM policy returns instead of a bare action, so its tokens are recorded too."""

    action: Any
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    logprobs: list[float] | None = None


Policy = Callable[[Any, dict[str, Any]], Any]
"""(observation, info) -> action, or a `PolicyOutput`."""


def record_episodes(env: gym.Env, policy: Policy, n: int, seed: int, *, group_size: int = 1,
                    record_state: bool = True, path: str | Path | None = None,
                    metadata: dict[str, Any] | None = None) -> list[Episode]:
    """Play `n` episodes and return their records (also appended to `path` when given, one by one).

    Episode i resets with seed `seed + i // group_size`, so each group of `group_size` episodes shares a task
    (as GRPO/RLOO need); the action space is seeded with `seed`. The env's `state()` is recorded at reset and
    after every step when the env declares one and `record_state` is on.
    """
    if n < 1 or group_size < 1:
        raise ValueError(f"n and group_size must be at least 1, got n={n}, group_size={group_size}")
    state_fn = getattr(env.unwrapped, "state", None) if record_state else None
    state_fn = state_fn if callable(state_fn) else None
    env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    env.action_space.seed(seed)
    writer = TrajectoryWriter(path) if path is not None else None
    episodes = []
    try:
        for i in range(n):
            episode_seed = seed + i // group_size
            obs, info = env.reset(seed=episode_seed)
            episode = Episode(env_id=env_id, seed=episode_seed, observation=obs, steps=[],
                              info=_without_components(info), state=state_fn() if state_fn else None,
                              metadata=dict(metadata or {}))
            done = False
            while not done:
                out = policy(obs, info)
                tokens = out if isinstance(out, PolicyOutput) else PolicyOutput(out)
                obs, _, terminated, truncated, info = env.step(tokens.action)
                episode.steps.append(Step(
                    action=tokens.action, observation=obs,
                    reward_components={k: float(v) for k, v in info["reward_components"].items()},
                    terminated=bool(terminated), truncated=bool(truncated), info=_without_components(info),
                    state=state_fn() if state_fn else None, prompt_ids=tokens.prompt_ids,
                    response_ids=tokens.response_ids, logprobs=tokens.logprobs,
                ))
                done = terminated or truncated
            if writer is not None:
                writer.write(episode)
            episodes.append(episode)
    finally:
        if writer is not None:
            writer.close()
    return episodes


def _without_components(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "reward_components"}


# -- offline re-scoring -----------------------------------------------------------------------------------------
def add_shaping(episode: Episode, potential: RecordPotential, gamma: float, *, channel: str = "shaping",
                replace: bool = False) -> Episode:
    """A copy of `episode` with F = γΦ(s') − Φ(s) in `channel`, Φ evaluated on the recorded observations/states.

    Φ(s') is 0 on termination and kept on truncation, exactly as `PotentialShaping` does live.
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if not replace and any(channel in step.reward_components for step in episode.steps):
        raise ValueError(f"the episode already has a {channel!r} channel; pass another channel name "
                         "(channel=..., --channel) or replace it (replace=True, --replace)")
    last = potential(episode.observation, episode.state)
    steps = []
    for step in episode.steps:
        current = 0.0 if step.terminated else potential(step.observation, step.state)
        components = {**step.reward_components, channel: gamma * current - last}
        steps.append(dataclasses.replace(step, reward_components=components))
        last = current
    return dataclasses.replace(episode, steps=steps)


def offline_potential(spec: str) -> RecordPotential:
    """A built-in potential's offline form by name, or a `module:function` taking (observation, state)."""
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"cannot load potential {spec!r} ({error}); give module:function importable from "
                             "here, e.g. mypkg.potentials:phi") from None
        if not callable(function):
            raise ValueError(f"{spec} is not callable; it must take (observation, state) and return a float")
        return function
    offline = get_potential(spec).offline
    if offline is None:
        raise ValueError(f"potential {spec!r} reads the live env and cannot be recomputed from a recording; "
                         f"offline potentials: {', '.join(offline_potential_names())}, or module:function over "
                         "(observation, state)")
    return offline


def offline_potential_names() -> list[str]:
    """Built-in potentials that can be evaluated on recorded states."""
    return [name for name in potential_names() if get_potential(name).offline is not None]


def step_advantages(episodes: Sequence[Episode], estimator: str, *, gamma: float = 1.0, lam: float = 1.0
                    ) -> list[list[float]]:
    """Per-step advantages from the recorded rewards, with `creditgym.credit`.

    Episodes sharing (env id, seed) form a group for grpo, dr_grpo and rloo, whose episode outcome is the
    γ-discounted return, broadcast to every step. gae uses V ≡ 0 (no critic offline): A_t = Σ_l (γλ)^l r_{t+l}.
    reinforce_pp is the reward-to-go whitened over the batch; reward_to_go is the discounted return from t.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if not episodes:
        return []
    lengths = [len(e.steps) for e in episodes]
    rewards = torch.zeros((len(episodes), max(max(lengths), 1)), dtype=torch.float64)
    mask = torch.zeros_like(rewards, dtype=torch.bool)
    terminated = torch.zeros_like(mask)
    for i, episode in enumerate(episodes):
        rewards[i, : lengths[i]] = torch.tensor([s.reward for s in episode.steps], dtype=torch.float64)
        mask[i, : lengths[i]] = True
        terminated[i, : lengths[i]] = torch.tensor([s.terminated for s in episode.steps], dtype=torch.bool)
    if estimator in ("grpo", "dr_grpo", "rloo"):
        groups = [(e.env_id, e.seed) if e.seed is not None else (e.env_id, None, i) for i, e in enumerate(episodes)]
        outcome = credit.reward_to_go(rewards, mask, gamma=gamma)[:, 0]
        by_name = {"grpo": credit.grpo_advantages, "dr_grpo": credit.dr_grpo_advantages,
                   "rloo": credit.rloo_advantages}
        advantages = by_name[estimator](outcome, groups)[:, None].expand_as(rewards)
    elif estimator == "gae":
        # Each episode ends at its last recorded step; padding after it is cut off by that end.
        ends = ~terminated & (mask.cumsum(1) == torch.tensor(lengths)[:, None])
        zeros = torch.zeros_like(rewards.T)
        advantages = credit.gae(rewards.T, zeros, zeros, terminated.T, ends.T, gamma=gamma, lam=lam)[0].T
    elif estimator == "reinforce_pp":
        advantages = credit.reinforce_pp_advantages(rewards, mask, gamma=gamma)
    else:
        advantages = credit.reward_to_go(rewards, mask, gamma=gamma)
    return [advantages[i, : lengths[i]].tolist() for i in range(len(episodes))]


def with_advantages(episodes: Sequence[Episode], estimator: str, *, gamma: float = 1.0, lam: float = 1.0
                    ) -> list[Episode]:
    """Copies of `episodes` with `Step.advantage` set by `step_advantages`."""
    values = step_advantages(episodes, estimator, gamma=gamma, lam=lam)
    return [
        dataclasses.replace(e, steps=[dataclasses.replace(s, advantage=a) for s, a in zip(e.steps, adv, strict=True)])
        for e, adv in zip(episodes, values, strict=True)
    ]


def summarize(episodes: Sequence[Episode]) -> dict[str, float]:
    """Means over episodes: length, success, return, each channel's episode sum and the step advantages."""
    if not episodes:
        return {"episodes": 0.0}
    count = len(episodes)
    out = {
        "episodes": float(count),
        "length": sum(len(e.steps) for e in episodes) / count,
        "success": sum(e.success for e in episodes) / count,
        "return": sum(e.total_reward for e in episodes) / count,
    }
    for episode in episodes:
        for name, value in episode.channel_sums().items():
            out[f"reward/{name}"] = out.get(f"reward/{name}", 0.0) + value / count
    advantages = [s.advantage for e in episodes for s in e.steps if s.advantage is not None]
    if advantages:
        out["advantage/mean"] = float(np.mean(advantages))
        out["advantage/std"] = float(np.std(advantages))
    return out
