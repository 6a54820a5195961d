"""Building records: playing a gymnasium env (`record_episodes`), the episodes of a batched vector env's first envs
(`VectorRecorder`, for PPO) and an LLM trainer's rollouts (`llm_episode_records`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from creditgym.envs.sokoban.level import BOXOBAN_SYMBOLS, NUM_TILES, Tile

from .files import TrajectoryWriter
from .records import Episode, Step

if TYPE_CHECKING:  # the LLM package imports transformers, which reading or re-scoring records never needs
    from creditgym.agents.llm.rollout import Episode as RolloutEpisode


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
    after every step when the env declares one and `record_state` is on. An env without
    `info["reward_components"]` is recorded with one channel, `reward`. Each episode is written when it ends (to a
    .gz path, gathered into gzip members as `TrajectoryWriter` does).
    """
    if n < 1 or group_size < 1:
        raise ValueError(f"n and group_size must be at least 1, got n={n}, group_size={group_size}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}; the seed fixes every episode")
    seed = int(seed)
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
                obs, reward, terminated, truncated, info = env.step(tokens.action)
                components = info.get("reward_components", {"reward": reward})
                episode.steps.append(Step(
                    action=tokens.action, observation=obs,
                    reward_components={k: float(v) for k, v in components.items()},
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


# -- recording vector envs (PPO) ---------------------------------------------------------------------------------
def reached_observations(obs: torch.Tensor, info: dict[str, Any], count: int) -> torch.Tensor:
    """The observation each of the first `count` envs of a same-step-autoreset vector env reached with this step.

    Where an episode ended that is its last observation (`info["final_obs"]`, whose rows follow the True entries of
    `info["_final_obs"]`), not the next episode's first, which `obs` holds there. Stays on the device, with no sync.
    """
    if "_final_obs" not in info:
        return obs[:count]
    ended = torch.as_tensor(info["_final_obs"], device=obs.device)
    rows = (ended.long().cumsum(0) - 1)[:count].clamp_(min=0)  # envs that did not end read any row, then drop it
    final = torch.as_tensor(info["final_obs"], device=obs.device).index_select(0, rows)
    return torch.where(ended[:count].view(-1, *[1] * (obs.dim() - 1)), final, obs[:count])


_BOXOBAN_TABLE = np.array([BOXOBAN_SYMBOLS[Tile(t)] for t in range(NUM_TILES)])


def sokoban_states(obs: np.ndarray | torch.Tensor, *, walled: bool = False) -> list[dict[str, Any]]:
    """The state of each board of a batch of Sokoban one-hot observations `(N, 7, H, W)`, as `SokobanEnv.state()`
    gives it (without `deadlock`, which the board alone does not tell), read off the observation.

    The batched Sokoban env has no per-board `state()`, and where an episode ends it has already loaded the next
    level, so its recordings take the board from what the policy saw: the whole room with `obs_mode="array"`, the
    window around the player with `"egocentric"`. A window's room can reach its edge, so pass `walled=True` for
    those: every board gets a ring of wall, which makes it an enclosed level, and all of a run's boards one shape
    (the solver potentials cache by shape and board). The Sokoban potentials give the same value on it as live.
    """
    boards = np.asarray(obs.detach().cpu() if isinstance(obs, torch.Tensor) else obs).argmax(1)
    if walled:
        boards = np.pad(boards, ((0, 0), (1, 1), (1, 1)), constant_values=Tile.WALL)
    count, height, width = boards.shape
    # One character per cell, then each row's characters read as one string.
    text = np.ascontiguousarray(_BOXOBAN_TABLE[boards]).view(f"<U{width}").reshape(count, height).tolist()
    player = ((boards == Tile.PLAYER) | (boards == Tile.PLAYER_ON_TARGET)).reshape(count, -1).argmax(1)
    players = np.stack(np.divmod(player, width), axis=1).tolist()
    is_box = (boards == Tile.BOX) | (boards == Tile.BOX_ON_TARGET)
    num_boxes = is_box.sum((1, 2))
    boxes = np.split(np.argwhere(is_box)[:, 1:], np.cumsum(num_boxes)[:-1])
    on_target = (boards == Tile.BOX_ON_TARGET).sum((1, 2)).tolist()
    return [{"board": text[i], "player": players[i], "boxes": boxes[i].tolist(), "boxes_on_target": on_target[i],
             "num_boxes": int(num_boxes[i])} for i in range(count)]


def _host(value: Any) -> np.ndarray:
    """A numpy copy (never a view of a buffer its owner will overwrite)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True).numpy()
    return np.array(value)


class VectorRecorder:
    """Trajectory records of the first envs of a vector env with same-step autoreset, built a block of steps at a time.

    `start` takes what `reset` returned for the recorded envs; each `add` takes a block of T steps of theirs, as
    (T, envs, ...) tensors or arrays, and returns the episodes that ended in it, in the order they ended (by step,
    then env). An episode in progress stays here until it ends: `state_dict` carries it through a checkpoint.
    `restart=False` records one episode per env (an evaluation), `True` every episode (training). `states` maps
    a batch of observations to one state dict each, e.g. `sokoban_states`, for envs whose potentials read it.
    The record's seed is `seed`; its metadata is its env's (by default its index, `env_index`) plus what `add`
    gives when it ends.
    """

    def __init__(self, env_id: str, seed: int | None, *, states: Callable[[np.ndarray], list[dict[str, Any]]] | None
                 = None, restart: bool = True) -> None:
        self.env_id, self.seed, self.states, self.restart = env_id, seed, states, restart
        self.episodes: list[Episode | None] = []
        self._metadata: list[dict[str, Any]] = []

    def start(self, obs: Any, *, masks: Any = None, metadata: Sequence[dict[str, Any]] | None = None) -> None:
        """Begin an episode in each recorded env from its reset observation (and action mask)."""
        obs = _host(obs)
        masks = None if masks is None else _host(masks)
        self._metadata = [dict(m) for m in metadata] if metadata is not None else [{"env_index": j}
                                                                                    for j in range(len(obs))]
        states = self.states(obs) if self.states else [None] * len(obs)
        self.episodes = [self._new(j, obs[j], None if masks is None else masks[j], states[j]) for j in range(len(obs))]

    def _new(self, env: int, obs: np.ndarray, mask: np.ndarray | None, state: dict[str, Any] | None) -> Episode:
        return Episode(env_id=self.env_id, seed=self.seed, observation=obs, steps=[],
                       info={} if mask is None else {"action_mask": mask}, state=state,
                       metadata=dict(self._metadata[env]))

    def add(self, *, actions: Any, reached: Any, next_obs: Any, terminated: Any, truncated: Any,
            components: dict[str, Any], success: Any = None, masks: Any = None,
            metadata: dict[str, Any] | None = None) -> list[Episode]:
        """Append a block of steps; returns the episodes that ended in it, with `metadata` added to theirs.

        Per step t and env: `reached` is the observation the action led to (`reached_observations`), `next_obs` the
        one the env returned (where the episode ended, the next episode's first), `masks` the action mask returned
        with it, `components` the reward channels (each (T, envs)), `success` the env's `info["success"]`.
        """
        actions, reached, next_obs = _host(actions), _host(reached), _host(next_obs)
        terminated, truncated = _host(terminated).astype(bool), _host(truncated).astype(bool)
        channels = {name: _host(value).astype(np.float64) for name, value in components.items()}
        success = None if success is None else _host(success).astype(bool)
        masks = None if masks is None else _host(masks)
        steps, envs = actions.shape
        done = terminated | truncated
        states: list[dict[str, Any] | None] = [None] * (steps * envs)
        if self.states:  # only for the envs recording an episode (after its one episode, an env of an evaluation stops)
            rows = [t * envs + j for t in range(steps) for j in range(envs) if self.episodes[j] is not None]
            if rows:
                flat = reached.reshape(steps * envs, *reached.shape[2:])
                for row, state in zip(rows, self.states(flat[rows]), strict=True):
                    states[row] = state
        finished = []
        for t in range(steps):
            for j in range(envs):
                episode = self.episodes[j]
                if episode is None:
                    continue
                info: dict[str, Any] = {}
                if success is not None:
                    info["success"] = bool(success[t, j])
                if masks is not None and not done[t, j]:  # an ended episode's mask is the next episode's
                    info["action_mask"] = masks[t, j]
                episode.steps.append(Step(
                    action=actions[t, j].item(), observation=reached[t, j],
                    reward_components={name: float(value[t, j]) for name, value in channels.items()},
                    terminated=bool(terminated[t, j]), truncated=bool(truncated[t, j]), info=info,
                    state=states[t * envs + j]))
                if done[t, j]:
                    episode.metadata.update(metadata or {})
                    finished.append(episode)
                    self.episodes[j] = None
                    if self.restart:
                        state = self.states(next_obs[t, j][None])[0] if self.states else None
                        self.episodes[j] = self._new(j, next_obs[t, j], None if masks is None else masks[t, j], state)
        return finished

    def state_dict(self) -> dict[str, Any]:
        """The episodes in progress, as JSON-ready records (so a checkpoint holds no creditgym classes)."""
        return {"episodes": [None if e is None else e.to_dict() for e in self.episodes], "metadata": self._metadata}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes = [None if e is None else Episode.from_dict(e) for e in state["episodes"]]
        self._metadata = [dict(m) for m in state["metadata"]]


def llm_episode_record(episode: RolloutEpisode, env_id: str, *, metadata: dict[str, Any] | None = None
                       ) -> Episode:
    """The trajectory record of one LLM rollout (`creditgym.agents.llm.rollout.Episode`).

    Step t holds turn t's reply as the action, the observation that followed it, the turn's reward components
    (the env's; learned rewards the trainer adds later are not in them) and, for the tokens, the context the
    reply was sampled from (`prompt_ids`: the whole segment before it, earlier turns included), the reply
    (`response_ids`) and its rollout logprobs. Info and env state are those a recording collector
    (`RolloutCollector(record=True)`) kept; without them a step's info holds `invalid_action` only, and the
    reset's info the instructions. The last step carries how the episode ended (terminated, or truncated when
    the env, max_turns or max_prompt_tokens cut it), and its info `success`, as an env's final step does. The
    seed is the group's reset seed; `metadata` gets the group index.
    """
    generated = [(segment, end) for segment in episode.segments for end in segment.turn_ends]
    if len(generated) != len(episode.turns):
        raise ValueError(f"the episode (group {episode.group}, seed {episode.seed}) has {len(episode.turns)} turns "
                         f"but its segments end {len(generated)} generations; it was not built by RolloutCollector")
    steps = []
    for t, (turn, (segment, end)) in enumerate(zip(episode.turns, generated, strict=True)):
        start = end + 1 - turn.num_tokens
        last = t == len(episode.turns) - 1
        info = _without_components(turn.info) if turn.info is not None else {"invalid_action": turn.invalid}
        if last:
            info.setdefault("success", episode.success)
        steps.append(Step(
            action=turn.action,
            observation=episode.final_observation if last else episode.turns[t + 1].observation,
            reward_components=dict(turn.reward_components) or {"reward": turn.reward},
            terminated=last and episode.terminated, truncated=last and episode.truncated, info=info,
            state=turn.state, prompt_ids=[int(i) for i in segment.token_ids[:start]],
            response_ids=[int(i) for i in segment.token_ids[start:end + 1]],
            logprobs=[float(x) for x in segment.logprobs[start:end + 1]],
        ))
    if episode.reset_info is not None:
        reset_info = _without_components(episode.reset_info)
    else:
        reset_info = {"instructions": episode.instructions}
        if episode.ground_truth is not None:
            reset_info["ground_truth"] = episode.ground_truth
    return Episode(env_id=env_id, seed=episode.seed,
                   observation=episode.turns[0].observation if episode.turns else episode.final_observation,
                   steps=steps, info=reset_info, state=episode.reset_state,
                   metadata={"group": episode.group, **(metadata or {})})


def llm_episode_records(episodes: Sequence[RolloutEpisode], env_id: str, *,
                        metadata: dict[str, Any] | None = None) -> list[Episode]:
    """`llm_episode_record` of each episode, e.g. of one `RolloutCollector.collect` batch."""
    return [llm_episode_record(episode, env_id, metadata=metadata) for episode in episodes]
