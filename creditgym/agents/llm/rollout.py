"""Batched multi-turn rollouts of an `LLMPolicy` on text envs, GRPO-style: G groups × K rollouts per group.

Every rollout of a group resets its env with the same seed, so the K episodes start from one task. Each turn,
one `generate` call advances every live episode; episodes that end leave the batch. Invalid actions go to the env
unchanged: the env explains them in its next observation and charges its `format` channel.

Prompts are the env's `info["instructions"]` as the system message, then the last `history_turns` turns
(observation as user, reply as assistant), then the current observation (verl-agent's bounded history). While
the history window has not started to slide, a turn extends the episode's token sequence; afterwards each turn
starts a new segment. Every generated token thus sits in exactly one segment, in the context it was sampled
from, with its assistant-mask bit and rollout logprob.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import torch

from creditgym.envs import env_state, obs_modes

from .policy import ConversationCache, Generators, LLMPolicy


@dataclass
class Segment:
    """A token sequence the trainer scores in one forward pass."""

    token_ids: list[int] = field(default_factory=list)
    action_mask: list[bool] = field(default_factory=list)
    """True on generated (assistant) tokens; prompt, template and observation tokens are False"""
    logprobs: list[float] = field(default_factory=list)
    """the rollout's logprob of each generated token, 0 elsewhere"""
    turn_ends: list[int] = field(default_factory=list)
    """position of the last generated token of each turn in this segment"""

    def extend(self, token_ids: list[int], *, action: bool, logprobs: list[float] | None = None) -> None:
        self.token_ids += token_ids
        self.action_mask += [action] * len(token_ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(token_ids)


@dataclass
class Turn:
    observation: str
    action: str
    reward: float
    reward_components: dict[str, float]
    invalid: bool
    num_tokens: int
    info: dict[str, Any] | None = None
    """the env's step info, kept only by a recording collector (`record=True`)"""
    state: dict[str, Any] | None = None
    """`env.unwrapped.state()` after the action, kept only by a recording collector on envs that declare it"""


@dataclass
class Episode:
    """One rollout: its turns, its token segments, and how it ended."""

    group: int
    seed: int
    instructions: str
    turns: list[Turn] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    ground_truth: str | None = None
    """the correct final action, from `info["ground_truth"]` at reset (envs built with expose_ground_truth=True);
    for training-time reward models such as IGPO, never part of a prompt"""
    final_observation: str | None = None
    """the observation after the last turn (the reset observation when no turn was played)"""
    next_prompt: list[int] | None = None
    """for an episode that was cut (truncated), the prompt its next turn would have had: the state a value head
    bootstraps from. Kept only by a collector built with `keep_next_prompts=True`"""
    reset_info: dict[str, Any] | None = None
    reset_state: dict[str, Any] | None = None
    """the reset's info and `env.unwrapped.state()`, kept only by a recording collector"""

    @property
    def total_reward(self) -> float:
        return sum(turn.reward for turn in self.turns)

    @property
    def num_generated_tokens(self) -> int:
        return sum(turn.num_tokens for turn in self.turns)


class RolloutCollector:
    """Owns `num_groups * group_size` envs and collects one batch of episodes per `collect` call.

    `record=True` also keeps each turn's info and env `state()` (and the reset's), for trajectory records
    (`creditgym.trajectories.llm_episode_records`); `keep_next_prompts=True` keeps the prompt after the last turn
    of each cut episode (`Episode.next_prompt`), for PPO's value bootstrap.
    """

    def __init__(self, envs: Sequence[gym.Env], policy: LLMPolicy, *, group_size: int, max_turns: int,
                 history_turns: int | None, max_prompt_tokens: int, record: bool = False,
                 keep_next_prompts: bool = False) -> None:
        if len(envs) % group_size:
            raise ValueError(f"{len(envs)} envs do not split into groups of {group_size}")
        self.envs = list(envs)
        # A pool (RayEnvPool) steps a whole turn as one call per worker, in parallel; a list is stepped in turn.
        self.pool = envs if hasattr(envs, "step_many") else None
        self.policy = policy
        self.group_size = group_size
        self.max_turns = max_turns
        self.history_turns = history_turns
        self.max_prompt_tokens = max_prompt_tokens
        self.record = record
        self.keep_next_prompts = keep_next_prompts

    def close(self) -> None:
        """Close the envs, or the pool that holds them."""
        if self.pool is not None:
            self.pool.close()
        else:
            for env in self.envs:
                env.close()

    def collect(self, seeds: Sequence[int], *, generator: Generators = None, greedy: bool = False,
                options: Sequence[Mapping[str, Any] | None] | None = None) -> list[Episode]:
        """One episode per env; group g (envs g*K .. g*K+K-1) resets with `seeds[g]`, and with `options[g]` where
        given (e.g. `{"level": level}` for Sokoban, so an evaluation plays chosen levels).

        `generator` samples every episode's replies (one draw per token for the whole batch, as training does), or
        is a sequence of one generator per env, each sampling its own episode only: an episode then plays the same
        whichever episodes are collected with it (as an evaluation's are)."""
        if len(seeds) * self.group_size != len(self.envs):
            raise ValueError(f"need {len(self.envs) // self.group_size} seeds (one per group), got {len(seeds)}")
        if options is not None and len(options) != len(seeds):
            raise ValueError(f"need one reset options entry per group ({len(seeds)}), got {len(options)}")
        per_episode = None if generator is None or isinstance(generator, torch.Generator) else list(generator)
        if per_episode is not None and len(per_episode) != len(self.envs):
            raise ValueError(f"generator: pass one torch.Generator, or one per env ({len(self.envs)}), not "
                             f"{len(per_episode)}")
        episodes, observations, stopped = [], [], []
        env_seeds = [int(seeds[i // self.group_size]) for i in range(len(self.envs))]
        everyone = range(len(self.envs))
        if self.pool is not None and options is None:
            resets, reset_states = self._pooled(self.pool.reset_many, everyone, env_seeds)
        else:  # without options the call is as before, for envs (and pools) whose reset takes a seed only
            resets = [env.reset(seed=seed) if options is None
                      else env.reset(seed=seed, options=options[i // self.group_size])
                      for i, (env, seed) in enumerate(zip(self.envs, env_seeds, strict=True))]
            reset_states = self._local_states(everyone)
        for i, (env, (obs, info)) in enumerate(zip(self.envs, resets, strict=True)):
            seed = env_seeds[i]
            if not isinstance(obs, str):
                has_text = "text" in obs_modes(env.spec.id) if env.spec else hasattr(env.unwrapped, "obs_mode")
                hint = ("pass obs_mode='text' for its text view" if has_text else
                        "it has no text view, so train PPO on it instead (no --algo)")
                raise ValueError(f"{env.spec.id if env.spec else env} returned a {type(obs).__name__} observation; LLM "
                                 f"policies need text envs ({hint})")
            episodes.append(Episode(group=i // self.group_size, seed=seed, instructions=info.get("instructions", ""),
                                    ground_truth=info.get("ground_truth")))
            if self.record:
                episodes[-1].reset_info, episodes[-1].reset_state = info, reset_states[i]
            observations.append(obs)
            stopped.append(False)
        live = list(range(len(self.envs)))
        # A turn whose prompt extends the episode's last one (the reply and the next observation appended) encodes
        # only those new tokens: the policy keeps each episode's keys and values from turn to turn.
        conversations = ConversationCache() if isinstance(self.policy, LLMPolicy) else None
        for turn in range(self.max_turns):
            prompts = [self._prompt(episodes[i], observations[i], turn, stopped[i]) for i in live]
            too_long = [i for i, prompt in zip(live, prompts, strict=True) if len(prompt) > self.max_prompt_tokens]
            for i, prompt in zip(live, prompts, strict=True):
                if i in too_long:
                    episodes[i].truncated = True
                    episodes[i].next_prompt = list(prompt) if self.keep_next_prompts else None
                    if conversations is not None:
                        conversations.discard(i)
            if too_long:
                prompts = [p for i, p in zip(live, prompts, strict=True) if i not in too_long]
                live = [i for i in live if i not in too_long]
            carried = {} if conversations is None else {"conversations": conversations, "keys": live}
            generations = self.policy.generate(
                prompts, greedy=greedy, generator=generator if per_episode is None else [per_episode[i] for i in live],
                **carried)
            if any(not generation.token_ids for generation in generations):
                # A turn's reward sits on its last generated token: without one, it would land on another turn.
                raise ValueError(f"{type(self.policy).__name__}.generate returned a reply with no tokens; a turn "
                                 "needs at least one (a server that sends no token ids must send the text, or its "
                                 "stop token)")
            still_live = []
            texts = [generation.text for generation in generations]
            if self.pool is not None:
                steps, states = self._pooled(self.pool.step_many, live, texts)
            else:
                steps = [self.envs[i].step(text) for i, text in zip(live, texts, strict=True)]
                states = self._local_states(live)
            for i, generation, step, state in zip(live, generations, steps, states, strict=True):
                episode = episodes[i]
                segment = episode.segments[-1]
                segment.extend(generation.token_ids, action=True, logprobs=generation.logprobs)
                segment.turn_ends.append(len(segment.token_ids) - 1)
                obs, reward, terminated, truncated, info = step
                turn = Turn(observations[i], generation.text, float(reward),
                            {k: float(v) for k, v in info.get("reward_components", {}).items()},
                            bool(info.get("invalid_action", False)), len(generation.token_ids))
                if self.record:
                    turn.info, turn.state = info, state
                episode.turns.append(turn)
                observations[i], stopped[i] = obs, generation.stopped
                if terminated or truncated:
                    episode.terminated, episode.truncated = bool(terminated), bool(truncated and not terminated)
                    episode.success = bool(info.get("success", False))
                    if conversations is not None:
                        conversations.discard(i)
                else:
                    still_live.append(i)
            live = still_live
            if not live:
                break
        for i in live:
            episodes[i].truncated = True  # out of turns (max_turns)
        for i, (episode, observation) in enumerate(zip(episodes, observations, strict=True)):
            episode.final_observation = observation
            if self.keep_next_prompts and episode.truncated and episode.next_prompt is None and episode.turns:
                extends, tokens = self._prompt_tokens(episode, observation, len(episode.turns), stopped[i])
                episode.next_prompt = episode.segments[-1].token_ids + tokens if extends else tokens
        return episodes

    def _pooled(self, call: Any, indices: Sequence[int], args: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """A pool's `reset_many`/`step_many` results and, for a recording collector, each env's state after its
        call, read where the env is (in its Ray worker) and sent back with the result; Nones otherwise."""
        if not self.record:
            return call(indices, args), [None] * len(indices)
        results_and_states = call(indices, args, with_state=True)
        return [result for result, _ in results_and_states], [state for _, state in results_and_states]

    def _local_states(self, indices: Sequence[int]) -> list[dict[str, Any] | None]:
        # state() may copy the whole board or world: only when recording
        return [env_state(self.envs[i]) for i in indices] if self.record else [None] * len(indices)

    def _prompt(self, episode: Episode, observation: str, turn: int, stopped: bool) -> list[int]:
        """The prompt for this turn, appended to the episode's token sequence or as a new segment."""
        extends, tokens = self._prompt_tokens(episode, observation, turn, stopped)
        if extends:
            episode.segments[-1].extend(tokens, action=False)
        else:
            episode.segments.append(Segment())
            episode.segments[-1].extend(tokens, action=False)
        return episode.segments[-1].token_ids

    def _prompt_tokens(self, episode: Episode, observation: str, turn: int, stopped: bool) -> tuple[bool, list[int]]:
        """Whether this turn's prompt extends the episode's last segment, and the tokens it adds (or starts with)."""
        if turn > 0 and self.policy.incremental and (self.history_turns is None or turn <= self.history_turns):
            return True, self.policy.continuation(observation, stopped=stopped)
        start = 0 if self.history_turns is None else max(0, len(episode.turns) - self.history_turns)
        messages = [{"role": "system", "content": episode.instructions}]
        for past in episode.turns[start:]:
            messages += [{"role": "user", "content": past.observation}, {"role": "assistant", "content": past.action}]
        messages.append({"role": "user", "content": observation})
        return False, self.policy.chat_prompt(messages)
