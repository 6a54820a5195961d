"""Offline re-scoring of records: potential-based shaping recomputed on recorded states (`add_shaping`), advantages
from the recorded rewards (`step_advantages`), summaries, and both over a whole file in bounded memory
(`rescore_file`)."""

from __future__ import annotations

import array
import dataclasses
import hashlib
import importlib
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import creditgym
from creditgym import credit
from creditgym.wrappers.potentials import RecordPotential, get_potential, potential_names

from .files import read_trajectories, replacing_writer
from .records import Episode, TrajectoryWarning

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "gae", "reinforce_pp", "reward_to_go")
_GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
#: The metadata key of a re-scored episode that lists how it was re-scored, oldest first.
RESCORED = "rescored"


def add_shaping(episode: Episode, potential: RecordPotential | str, gamma: float, *, channel: str = "shaping",
                replace: bool = False, scale: float = 1.0) -> Episode:
    """A copy of `episode` with F = γΦ(s') − Φ(s) in `channel`, Φ evaluated on the recorded observations/states.

    `potential` is an offline potential or its name for `offline_potential`. Φ(s') is 0 on termination and kept on
    truncation, and `scale` multiplies Φ, exactly as `PotentialShaping` does live. A potential that fails or does
    not return a finite number raises a ValueError naming the step. The copy's `metadata["rescored"]` (a list) gains
    an entry of these settings and the creditgym version: `potential` (its name, or a function's module:qualname),
    `gamma`, `scale`, `channel`, `replace`.
    """
    record = _shaping_record(potential, gamma, channel=channel, replace=replace, scale=scale)
    if isinstance(potential, str):
        potential = offline_potential(potential)
    values = _shaping_values(episode, potential, gamma, channel=channel, replace=replace, scale=scale)
    return _with_rescoring(_with_channel(episode, channel, values), record)


def _shaping_record(potential: RecordPotential | str, gamma: float, *, channel: str, replace: bool, scale: float
                   ) -> dict[str, Any]:
    """What `add_shaping` adds to an episode's `metadata["rescored"]`: its settings and the creditgym version. The
    potential is its name where one was given, else the function's `module:qualname` (a lambda's says only where it
    was written: pass a name or a module-level function to keep a record that can be re-run)."""
    return {"potential": potential if isinstance(potential, str) else _function_name(potential), "gamma": gamma,
            "scale": scale, "channel": channel, "replace": replace, "creditgym": creditgym.__version__}


def _advantages_record(estimator: str, gamma: float, lam: float) -> dict[str, Any]:
    """What `with_advantages` adds to an episode's `metadata["rescored"]`: its settings (λ for gae only, the one
    estimator that reads it) and the creditgym version."""
    return {"estimator": estimator, "gamma": gamma, **({"lam": lam} if estimator == "gae" else {}),
            "creditgym": creditgym.__version__}


def _function_name(function: Any) -> str:
    """`module:qualname` of a function, or of a callable object's class (never its repr, which holds an address
    that differs between runs)."""
    named = function if hasattr(function, "__qualname__") else type(function)
    return f"{getattr(named, '__module__', None) or '?'}:{named.__qualname__}"


def _with_rescoring(episode: Episode, record: dict[str, Any]) -> Episode:
    """A copy of `episode` whose `metadata["rescored"]` ends with `record`: re-scoring a re-scored recording keeps
    the earlier entries (a value there that is no list, someone else's, is kept as the first)."""
    earlier = episode.metadata.get(RESCORED)
    history = list(earlier) if isinstance(earlier, list) else ([] if earlier is None else [earlier])
    return dataclasses.replace(episode, metadata={**episode.metadata, RESCORED: [*history, dict(record)]})


def _shaping_values(episode: Episode, potential: RecordPotential, gamma: float, *, channel: str, replace: bool,
                    scale: float) -> list[float]:
    """`add_shaping`'s F of each step: kept apart from the copy it makes so that `rescore_file` can keep the
    values alone between its two reads of a file."""
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if not replace and any(channel in step.reward_components for step in episode.steps):
        raise ValueError(f"the episode already has a {channel!r} channel; pass another channel name "
                         "(channel=..., --channel) or replace it (replace=True, --replace)")

    def phi(observation: Any, state: dict[str, Any] | None, where: str) -> float:
        try:
            value = float(potential(observation, state))
        except Exception as error:
            missing = ("; the record holds no env state there (the env declares no state(), it was recorded with "
                       "record_state=False, or its envs ran in Ray workers)" if state is None else "")
            raise ValueError(f"the potential failed on {where} of the episode with seed {episode.seed} "
                             f"({type(error).__name__}: {error}){missing}") from error
        if not np.isfinite(value):
            raise ValueError(f"the potential is {value} on {where} of the episode with seed {episode.seed}")
        return scale * value

    last = phi(episode.observation, episode.state, "the reset observation")
    values = []
    for t, step in enumerate(episode.steps):
        current = 0.0 if step.terminated else phi(step.observation, step.state, f"steps[{t}]")
        values.append(gamma * current - last)
        last = current
    return values


def _with_channel(episode: Episode, channel: str, values: Iterable[float]) -> Episode:
    """A copy of `episode` with one value a step in reward channel `channel`."""
    steps = [dataclasses.replace(step, reward_components={**step.reward_components, channel: value})
             for step, value in zip(episode.steps, values, strict=True)]
    return dataclasses.replace(episode, steps=steps)


def offline_potential(spec: str) -> RecordPotential:
    """A built-in potential's offline form by name, or a `module:function` taking (observation, state)."""
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except Exception as error:  # also whatever the user's module raises as it is imported (a SyntaxError)
            raise ValueError(f"cannot load potential {spec!r} ({type(error).__name__}: {error}); give "
                             "module:function importable from here, e.g. mypkg.potentials:phi") from None
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

    Episodes sharing their env id, seed and start (the reset's state, or its observation where the env has no
    state) form a group for grpo, dr_grpo and rloo, whose episode outcome is the γ-discounted return, broadcast to
    every step: an LLM trainer's groups, which play one task each. PPO and evaluation recordings play other levels
    under one seed, so there most episodes are a group of their own (advantage 0) and the few that replay a bank
    level are compared only with each other (a warning says so when half of the episodes or more are alone).
    gae uses V ≡ 0 (no critic offline): A_t = Σ_l (γλ)^l r_{t+l}.
    reinforce_pp is the reward-to-go whitened over the batch; reward_to_go is the discounted return from t.
    """
    _check_estimator(estimator, gamma, lam)
    if not episodes:
        return []
    rewards = _StepRewards(estimator)
    for episode in episodes:
        rewards.add(episode)
    advantages = rewards.advantages(gamma=gamma, lam=lam)
    return [row.tolist() for row in np.split(advantages, np.cumsum(rewards.lengths)[:-1])]


def _check_estimator(estimator: str, gamma: float, lam: float) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma} and {lam}")


class _StepRewards:
    """What `step_advantages` computes from, gathered one episode at a time into flat arrays: each step's total
    reward and terminated flag, each episode's length and, for group estimators, its group. `rescore_file` keeps
    these few numbers a step, where holding the episodes (observations, states) would take tens of GB."""

    def __init__(self, estimator: str) -> None:
        self.estimator = estimator
        self.lengths = array.array("q")
        self.rewards = array.array("d")
        self.terminated = array.array("b")
        self.groups = array.array("q")
        self._group_numbers: dict[tuple[Any, ...], int] = {}

    def add(self, episode: Episode) -> None:
        """Raises a ValueError naming the episode (0-based, in the order added) and step of a non-finite reward."""
        index = len(self.lengths)
        for t, step in enumerate(episode.steps):
            bad = {name: value for name, value in step.reward_components.items() if not math.isfinite(value)}
            if bad:
                raise ValueError(f"episode {index} (0-based), step {t}: reward channel(s) {bad} are not finite, and "
                                 "advantages would all be NaN; re-score a recording of finite rewards")
        self.lengths.append(len(episode.steps))
        self.rewards.extend(step.reward for step in episode.steps)
        self.terminated.extend(step.terminated for step in episode.steps)
        if self.estimator in _GROUP_ESTIMATORS:
            # A digest of the start's JSON, which is as large as an observation, since a group is kept per episode.
            group = ((episode.env_id, episode.seed, hashlib.sha256(_start_key(episode).encode()).digest())
                     if episode.seed is not None else (episode.env_id, None, index))
            self.groups.append(self._group_numbers.setdefault(group, len(self._group_numbers)))

    def advantages(self, *, gamma: float, lam: float) -> np.ndarray:
        """Every step's advantage, episode after episode in the order they were added, as float64.

        Episodes are scored in chunks of about `_CHUNK_CELLS` padded steps: one padded episodes × longest-episode
        tensor for a long PPO recording (600k episodes of up to 120 steps) would take GBs with its temporaries.
        Every estimator but reinforce_pp's whitening works per episode, so chunks change no bit of those."""
        count = len(self.lengths)
        if not count:
            return np.zeros(0)
        if self.estimator in _GROUP_ESTIMATORS:
            groups = np.asarray(self.groups, dtype=np.int64)
            alone = int((np.bincount(groups)[groups] == 1).sum())
            if count > 1 and alone == count:
                warnings.warn(f"no two of the {count} episodes start alike (env, seed and first state), so each "
                              f"is a group of its own and every {self.estimator} advantage is 0; group estimators "
                              "need groups of one task (an LLM trainer's records), else use gae or reinforce_pp",
                              stacklevel=3)
            elif count > 1 and 2 * alone >= count:  # a PPO recording, whose bank levels recur now and then
                warnings.warn(f"{alone} of the {count} episodes start unlike any other (env, seed and first state), "
                              f"so their {self.estimator} advantage is 0 and only the {count - alone} that share a "
                              "start are compared; group estimators need groups of one task (an LLM trainer's "
                              "records), else use gae or reinforce_pp", stacklevel=3)
            outcome = torch.from_numpy(np.concatenate([
                credit.reward_to_go(rewards, mask, gamma=gamma)[:, 0].numpy()
                for rewards, mask, _, _ in self._padded_chunks()]))
            by_name = {"grpo": credit.grpo_advantages, "dr_grpo": credit.dr_grpo_advantages,
                       "rloo": credit.rloo_advantages}
            per_episode = by_name[self.estimator](outcome, self.groups.tolist()).numpy()
            return np.repeat(per_episode, np.array(self.lengths, dtype=np.int64))
        parts = []
        for rewards, mask, terminated, lengths in self._padded_chunks():
            if self.estimator == "gae":
                # Each episode ends at its last recorded step; padding after it is cut off by that end.
                ends = ~terminated & (mask.cumsum(1) == lengths[:, None])
                zeros = torch.zeros_like(rewards.T)
                advantages = credit.gae(rewards.T, zeros, zeros, terminated.T, ends.T, gamma=gamma, lam=lam)[0].T
            else:  # reward_to_go, and reinforce_pp's returns before their whitening over the whole batch
                advantages = credit.reward_to_go(rewards, mask, gamma=gamma)
            parts.append(advantages[mask].numpy())
        flat = np.concatenate(parts)
        if self.estimator == "reinforce_pp":
            return credit.masked_whiten(torch.from_numpy(flat)).numpy()
        return flat

    def _padded_chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(rewards, mask, terminated, lengths) of consecutive episodes, padded to the longest in the chunk."""
        sizes = self.lengths  # Python ints: the chunking loop below runs once per episode
        lengths = np.array(sizes, dtype=np.int64)
        rewards = np.array(self.rewards, dtype=np.float64)
        terminated = np.array(self.terminated, dtype=np.bool_)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        first = 0
        while first < len(sizes):
            last, longest = first, 1
            while last < len(sizes) and (last - first + 1) * max(longest, sizes[last]) <= _CHUNK_CELLS:
                longest = max(longest, sizes[last])
                last += 1
            if last == first:  # an episode longer than a chunk is a chunk of its own
                last, longest = first + 1, sizes[first]
            chunk_lengths = torch.from_numpy(lengths[first:last])
            mask = torch.arange(longest)[None, :] < chunk_lengths[:, None]
            padded_rewards = torch.zeros(mask.shape, dtype=torch.float64)
            padded_rewards[mask] = torch.from_numpy(rewards[offsets[first]:offsets[last]])
            padded_terminated = torch.zeros_like(mask)
            padded_terminated[mask] = torch.from_numpy(terminated[offsets[first]:offsets[last]])
            yield padded_rewards, mask, padded_terminated, chunk_lengths
            first = last


_CHUNK_CELLS = 1 << 20
"""padded steps scored at once by `_StepRewards.advantages` (8 MB a float64 tensor)"""


def _start_key(episode: Episode) -> str:
    """The reset's state (or observation), as canonical JSON: equal for episodes that start alike."""
    start = episode.state if episode.state is not None else episode.observation
    return json.dumps(start, sort_keys=True, default=lambda value: np.asarray(value).tolist())


def with_advantages(episodes: Sequence[Episode], estimator: str, *, gamma: float = 1.0, lam: float = 1.0
                    ) -> list[Episode]:
    """Copies of `episodes` with `Step.advantage` set by `step_advantages`; each one's `metadata["rescored"]` (a list)
    gains an entry of these settings and the creditgym version: `estimator`, `gamma`, and `lam` for gae."""
    values = step_advantages(episodes, estimator, gamma=gamma, lam=lam)
    record = _advantages_record(estimator, gamma, lam)
    return [_with_rescoring(_with_step_advantages(e, adv), record) for e, adv in zip(episodes, values, strict=True)]


def _with_step_advantages(episode: Episode, values: Iterable[float]) -> Episode:
    return dataclasses.replace(episode, steps=[dataclasses.replace(s, advantage=a)
                                               for s, a in zip(episode.steps, values, strict=True)])


def summarize(episodes: Iterable[Episode]) -> dict[str, float]:
    """Means over episodes: length, success, return, each channel's episode sum and the step advantages."""
    summary = RecordSummary()
    for episode in episodes:
        summary.add(episode)
    return summary.result()


class RecordSummary:
    """`summarize`, one episode at a time, for recordings too large to hold: it keeps running sums, and the step
    advantages (a number a step) for their mean and std."""

    def __init__(self) -> None:
        self.count = 0
        self._steps = 0
        self._successes = 0
        self._return = 0.0
        self._channels: dict[str, float] = {}
        self._advantages = array.array("d")

    def add(self, episode: Episode) -> None:
        self.count += 1
        self._steps += len(episode.steps)
        self._successes += episode.success
        self._return += episode.total_reward
        for name, value in episode.channel_sums().items():
            self._channels[name] = self._channels.get(name, 0.0) + value
        self._advantages.extend(step.advantage for step in episode.steps if step.advantage is not None)

    def result(self) -> dict[str, float]:
        """Means over the episodes added so far; {"episodes": 0.0} before the first."""
        if not self.count:
            return {"episodes": 0.0}
        out = {"episodes": float(self.count), "length": self._steps / self.count,
               "success": self._successes / self.count, "return": self._return / self.count}
        out.update({f"reward/{name}": total / self.count for name, total in self._channels.items()})
        if self._advantages:
            advantages = np.array(self._advantages, dtype=np.float64)
            out["advantage/mean"] = float(np.mean(advantages))
            out["advantage/std"] = float(np.std(advantages))
        return out


def rescore_file(source: str | Path, out: str | Path, *, potential: RecordPotential | str | None = None,
                 estimator: str | None = None, gamma: float = 1.0, lam: float = 1.0, scale: float = 1.0,
                 channel: str = "shaping", replace: bool = False, progress: Callable[[int, int], None] | None = None
                 ) -> tuple[dict[str, float], dict[str, float], int]:
    """`add_shaping` with `potential` (an offline potential, or its name for `offline_potential`) and/or
    `with_advantages` with `estimator`, on every episode of the trajectory file `source`, written to `out`.
    Returns `summarize` of the episodes before and after, and their number. `out` is replaced only once every
    episode is written, so an error leaves an earlier file there as it was. `progress(done, total)` follows the bytes
    read, over both reads where there are two (`total` is then twice the file's size). Each written episode's
    `metadata["rescored"]` gains the entries that `add_shaping` and `with_advantages` add, in that order.

    The file is read one episode at a time: memory grows with a few numbers a step (rewards, advantages), never
    with observations or states, which for a long PPO run's recording decode to tens of GB. Advantages need every
    episode's rewards first, so with an estimator the file is read twice, the potential evaluated only in the
    first read; a file that changed in between (a run still recording to it) raises a ValueError.
    """
    if potential is None and estimator is None:
        raise ValueError("nothing to re-score: give a potential, an estimator, or both")
    if estimator is not None:
        _check_estimator(estimator, gamma, lam)
    # What each written episode's metadata["rescored"] gains, the same entries as add_shaping then with_advantages.
    records = ([] if potential is None else
               [_shaping_record(potential, gamma, channel=channel, replace=replace, scale=scale)])
    records += [] if estimator is None else [_advantages_record(estimator, gamma, lam)]
    if isinstance(potential, str):
        potential = offline_potential(potential)
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError(f"the output {out} is the input file; choose another path")
    before, after = RecordSummary(), RecordSummary()
    reads = 1 if estimator is None else 2

    def read(number: int) -> Iterator[Episode]:
        """The file's episodes, in read `number` (0 or 1) of `reads`, reporting to `progress`."""
        report = None if progress is None else lambda done, size: progress(number * size + done, reads * size)
        return read_trajectories(source, progress=report)

    if estimator is None:  # each episode is re-scored on its own
        with replacing_writer(out) as writer:
            for episode in read(0):
                before.add(episode)
                values = _shaping_values(episode, potential, gamma, channel=channel, replace=replace, scale=scale)
                episode = _with_rescoring(_with_channel(episode, channel, values), records[0])
                writer.write(episode)
                after.add(episode)
        return before.result(), after.result(), before.count

    rewards = _StepRewards(estimator)
    shaping = array.array("d")
    first_read: list[tuple[int, int | None, float]] = []  # what the second read must find again
    for episode in read(0):
        before.add(episode)
        first_read.append((len(episode.steps), episode.seed, episode.total_reward))
        if potential is not None:
            values = _shaping_values(episode, potential, gamma, channel=channel, replace=replace, scale=scale)
            shaping.extend(values)
            episode = _with_channel(episode, channel, values)
        rewards.add(episode)
    advantages = rewards.advantages(gamma=gamma, lam=lam)
    del rewards  # its per-step arrays, no longer needed while the second read runs

    start = 0
    with warnings.catch_warnings(), replacing_writer(out) as writer:
        warnings.simplefilter("ignore", TrajectoryWarning)  # the first read has said that the file ends cut short
        for index, episode in enumerate(read(1)):
            found = (len(episode.steps), episode.seed, episode.total_reward)
            if index >= len(first_read):
                raise _changed(source, f"the second read found more than the first read's {len(first_read)} "
                                       "episodes")
            if found != first_read[index]:
                raise _changed(source, f"episode {index} (0-based) has {found[0]} steps, seed {found[1]} and return "
                                       f"{found[2]} in the second read; {first_read[index][0]} steps, seed "
                                       f"{first_read[index][1]} and return {first_read[index][2]} in the first")
            end = start + found[0]
            if potential is not None:
                episode = _with_channel(episode, channel, shaping[start:end])
            episode = _with_step_advantages(episode, advantages[start:end].tolist())
            for record in records:
                episode = _with_rescoring(episode, record)
            writer.write(episode)
            after.add(episode)
            start = end
        if after.count != len(first_read):
            raise _changed(source, f"the second read found {after.count} episodes, the first {len(first_read)}")
    return before.result(), after.result(), before.count


def _changed(source: Path, what: str) -> ValueError:
    return ValueError(f"{source} changed while it was re-scored ({what}), as when a run is still recording to it; "
                      "re-score it once the run has ended, or re-score a copy of it")
