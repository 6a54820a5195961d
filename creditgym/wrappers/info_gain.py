"""IGPO information-gain turn rewards (arXiv 2510.14967) for LLM policies on ToolUse and Dialogue.

p_t is the policy's teacher-forced probability of the ground-truth final action given the conversation before
turn t: exp of the mean log π_θ over the answer's tokens. A turn that makes the right answer likelier earns the
gain, r_t = p_{t+1} − p_t, for every turn but the last; the last turn earns the outcome r_T ∈ [0, 1] (the env's
`task` channel, clipped: a correct ToolUse answer, or Dialogue's fraction of requirements met). The gains of an
episode telescope to p_{T−1} − p_0. An episode cut before it answered (max_turns) earns its outcome, 0, on its last
turn too, not that turn's gain: IGPO's last turn is the answer. The trainer normalises these turn rewards across
the group before summing them to go, as IGPO does (`LLMTrainConfig.turn_normalization`).

The ground truth comes from the env at training time only: ToolUse and Dialogue put it in the reset
`info["ground_truth"]` when built with `expose_ground_truth=True`, the rollout keeps it on the `Episode`, and it
never enters a prompt the policy samples from. Conversations are rendered as the policy sees them: the
instructions as system message and the last `history_turns` turns (None: all of them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from creditgym.credit import information_gain_rewards

if TYPE_CHECKING:
    from creditgym.agents.llm.policy import LLMPolicy
    from creditgym.agents.llm.rollout import Episode

MISSING_GROUND_TRUTH = ("IGPO needs each task's ground-truth answer: build the env with expose_ground_truth=True "
                        "(ToolUse and Dialogue accept it), e.g. env_kwargs={'expose_ground_truth': True}")


def episode_outcome(episode: Episode) -> float:
    """IGPO's final-turn reward: the episode's `task` channel clipped to [0, 1] (success when there is none)."""
    task = [turn.reward_components["task"] for turn in episode.turns if "task" in turn.reward_components]
    return min(1.0, max(0.0, sum(task))) if task else float(episode.success)


class InformationGain:
    """Computes p_t with `policy` (no grad) and IGPO's turn rewards; `coef` scales the information gains."""

    channel = "info_gain"

    def __init__(self, policy: LLMPolicy, *, coef: float = 1.0, history_turns: int | None = None,
                 micro_batch_size: int = 8) -> None:
        if not math.isfinite(coef):
            raise ValueError(f"information-gain coef must be a finite number, got {coef}")
        if micro_batch_size < 1:
            raise ValueError("micro_batch_size must be at least 1")
        self.policy = policy
        self.coef = coef
        self.history_turns = history_turns
        self.micro_batch_size = micro_batch_size

    def contexts(self, episode: Episode) -> list[list[int]]:
        """The prompt before each turn t (token ids ending with the assistant header), t = 0 .. T−1."""
        prompts = []
        for t, turn in enumerate(episode.turns):
            start = 0 if self.history_turns is None else max(0, t - self.history_turns)
            messages = [{"role": "system", "content": episode.instructions}]
            for past in episode.turns[start:t]:
                messages += [{"role": "user", "content": past.observation},
                             {"role": "assistant", "content": past.action}]
            messages.append({"role": "user", "content": turn.observation})
            prompts.append(self.policy.chat_prompt(messages))
        return prompts

    @torch.no_grad()
    def answer_probabilities(self, episodes: Sequence[Episode]) -> list[Tensor]:
        """``(T_i,)`` per episode: p_t = exp(mean over answer tokens of log π_θ(answer | context before turn t))."""
        sequences: list[tuple[list[int], int]] = []  # (prompt + answer ids, number of answer tokens)
        for episode in episodes:
            if episode.ground_truth is None:
                raise ValueError(MISSING_GROUND_TRUTH)
            answer = list(self.policy.tokenizer(episode.ground_truth, add_special_tokens=False)["input_ids"])
            sequences += [(prompt + answer, len(answer)) for prompt in self.contexts(episode)]
        probabilities = torch.zeros(len(sequences))
        device = self.policy.device
        from creditgym.agents.llm.policy import shared_prefix_length  # here: the LLM trainer imports this module

        # The instructions every context opens with run once per micro-batch (the same length for all of them, so
        # that a turn's probability does not depend on the turns it is scored with).
        shared = shared_prefix_length([ids for ids, _ in sequences],
                                      limit=min(len(ids) - num_answer for ids, num_answer in sequences) - 1)
        for start in range(0, len(sequences), self.micro_batch_size):
            chunk = sequences[start:start + self.micro_batch_size]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), self.policy.pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            answer_mask = torch.zeros((len(chunk), width))
            for row, (ids, num_answer) in enumerate(chunk):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention[row, :len(ids)] = 1
                answer_mask[row, len(ids) - num_answer:len(ids)] = 1
            logprobs, _ = self.policy.sequence_logprobs(input_ids.to(device), attention.to(device),
                                                        answer_mask.to(device), shared_prefix=shared)
            mean = logprobs.sum(-1).cpu() / answer_mask.sum(-1).clamp_min(1)
            probabilities[start:start + len(chunk)] = mean.exp()
        return list(probabilities.split([len(episode.turns) for episode in episodes]))

    def turn_rewards(self, episodes: Sequence[Episode],
                     probabilities: Sequence[Tensor] | None = None) -> list[Tensor]:
        """IGPO's ``(T_i,)`` rewards per episode: coef·(p_{t+1} − p_t) for t < T−1, then the outcome."""
        probabilities = self.answer_probabilities(episodes) if probabilities is None else probabilities
        num_turns = max((len(p) for p in probabilities), default=0)
        padded = torch.zeros(len(episodes), num_turns)
        mask = torch.zeros(len(episodes), num_turns, dtype=torch.bool)
        for i, p in enumerate(probabilities):
            padded[i, :len(p)] = p
            mask[i, :len(p)] = True
        outcomes = torch.tensor([episode_outcome(e) for e in episodes])
        # Scaling p scales the gains and leaves the outcome alone: the outcome is added on the last turn only.
        rewards = information_gain_rewards(self.coef * padded, mask, outcomes)
        return [rewards[i, :len(p)] for i, p in enumerate(probabilities)]

    def gains(self, episodes: Sequence[Episode], probabilities: Sequence[Tensor] | None = None) -> list[Tensor]:
        """The dense part only, ``(T_i,)`` with 0 on the last turn: what a trainer adds to the env's own rewards,
        whose last turn already pays the outcome."""
        rewards = self.turn_rewards(episodes, probabilities)
        for r in rewards:
            r[-1:] = 0.0
        return rewards
