"""The LLM trainer's update maths on numbers small enough to check by hand.

`test_trainer.py` only checks that a step changes the weights with a finite loss, which a flipped clip, a KL
with the wrong sign, a broken gradient accumulation or a sampler that ignores the temperature all still do.
Here the clipped objective and the k3 KL go through the real `LLMTrainer._loss` with logprobs the test chooses,
the denominator, the KL reward, gradient clipping and accumulation through the real `update`, the temperature
through `LLMPolicy`, and turn ends and `terminated` through the real `pack_episodes`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from creditgym.agents.llm import LLMPolicy, RolloutCollector, pack_episodes
from creditgym.agents.llm import trainer as trainer_module
from creditgym.agents.llm.batch import TokenBatch
from creditgym.agents.llm.rollout import Episode, Segment, Turn
from creditgym.agents.llm.trainer import LLMTrainer
from creditgym.llm import tiny_test_model

from .helpers import LetterCountEnv, make_trainer

TEMPERATURE = 0.7


# -- hand-built inputs ------------------------------------------------------------------------------------------
class _ChosenLogprobs:
    """Stands in for `LLMPolicy` inside `_loss`: returns the "new" logprobs the test picked (with grad), so the
    objective can be checked against numbers worked out by hand. `_loss` is always called on every row."""

    def __init__(self, logprobs: Tensor) -> None:
        self.logprobs = logprobs.clone().requires_grad_(True)

    def sequence_logprobs(self, input_ids: Tensor, attention_mask: Tensor, action_mask: Tensor, *,
                          with_hidden: bool = False, shared_prefix: int = 0) -> tuple[Tensor, None]:
        assert input_ids.shape == self.logprobs.shape, "the tests call _loss on all rows"
        return self.logprobs * action_mask, None


def _row_batch(action_mask: list[list[float]]) -> TokenBatch:
    """A TokenBatch with only the row layout `_loss` reads; the episode view is empty."""
    mask = torch.tensor(action_mask)
    r, width = mask.shape
    return TokenBatch(
        input_ids=torch.zeros((r, width), dtype=torch.long), attention_mask=torch.ones((r, width), dtype=torch.long),
        action_mask=mask, rollout_logprobs=torch.zeros((r, width)), rows=torch.zeros(0, dtype=torch.long),
        positions=torch.zeros(0, dtype=torch.long), view_mask=torch.zeros((r, 0), dtype=torch.bool),
        turn_ends=torch.zeros((r, 0), dtype=torch.bool), turn_rewards=torch.zeros((r, 0)),
        turn_mask=torch.zeros((r, 0), dtype=torch.bool), returns=torch.zeros(r),
        group_ids=torch.zeros(r, dtype=torch.long), terminated=torch.zeros(r, dtype=torch.bool),
        observations=[[] for _ in range(r)])


def _loss(trainer: LLMTrainer, batch: TokenBatch, new: Tensor, old: Tensor, adv: Tensor,
          ref: Tensor | None = None) -> tuple[Tensor, dict[str, list[float]], _ChosenLogprobs]:
    """`trainer._loss` on every row, with the denominator `update` uses for the grpo family (the token count)."""
    chosen = _ChosenLogprobs(new)
    trainer.policy = chosen  # type: ignore[assignment]
    stats: dict[str, list[float]] = defaultdict(list)
    rows = torch.arange(batch.input_ids.shape[0])
    denominator = batch.action_mask.sum().clamp_min(1.0)
    loss = trainer._loss(batch, rows, old, ref, adv, None, denominator, stats)
    return loss, stats, chosen


def _segment(turn_tokens: list[int], *, first: int = 0) -> Segment:
    """A segment of 3 prompt tokens, then each turn's generated tokens with 2 observation tokens between turns.

    Token ids are printable bytes of the tiny model's vocabulary; rollout logprobs are -0.5 on generated tokens.
    """
    segment = Segment()
    segment.extend([60, 61, 62], action=False)
    for t, n in enumerate(turn_tokens):
        if t:
            segment.extend([63, 64], action=False)
        segment.extend([70 + first + t + i for i in range(n)], action=True, logprobs=[-0.5] * n)
        segment.turn_ends.append(len(segment.token_ids) - 1)
    return segment


def _episode(segments: list[list[int]], rewards: list[float], *, group: int = 0,
             terminated: bool = True) -> Episode:
    """An episode whose segments hold the given turns' token counts (several segments: bounded history)."""
    episode = Episode(group=group, seed=0, instructions="", terminated=terminated, truncated=not terminated)
    done = 0
    for turns in segments:
        episode.segments.append(_segment(turns, first=done))
        done += len(turns)
    sizes = [n for turns in segments for n in turns]
    episode.turns = [Turn(f"obs {t}", "a" * n, reward, {"task": reward}, False, n)
                     for t, (n, reward) in enumerate(zip(sizes, rewards, strict=True))]
    return episode


def _episodes() -> list[Episode]:
    """Two task groups of two episodes with varied returns, turn counts and segments, so advantages are non-zero."""
    return [
        _episode([[2, 1]], [0.5, 1.0]),
        _episode([[3], [1, 2]], [0.0, 0.0, 0.25], terminated=False),
        _episode([[1]], [1.0], group=1),
        _episode([[2], [2]], [0.0, -0.5], group=1, terminated=False),
    ]


def _grads(trainer: LLMTrainer) -> list[list[Tensor]]:
    """The gradients the optimiser steps with, one list per step (read in a step pre-hook, after clipping)."""
    seen: list[list[Tensor]] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        seen.append([p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                     for group in optimizer.param_groups for p in group["params"]])

    trainer.optimizer.register_step_pre_hook(hook)
    return seen


# -- the clipped objective and the k3 KL (`_loss`) ---------------------------------------------------------------
@pytest.mark.parametrize(("ratio", "a", "expected", "gradient"), [
    (1.5, 1.0, -1.2, 0.0),    # a gain past 1 + clip is capped, and the capped branch passes no gradient
    (1.1, 1.0, -1.1, -1.1),   # inside the clip range: -A * ratio, d/d logprob = -A * ratio
    (0.5, 1.0, -0.5, -0.5),   # a ratio below 1 - clip with A > 0 is not clipped (the pessimistic bound)
    (0.5, -1.0, 0.8, 0.0),    # A < 0: the ratio is capped at 1 - clip from below
    (1.5, -1.0, 1.5, 1.5),    # A < 0 and a ratio above 1 + clip: not clipped (the pessimistic bound)
])
def test_clipped_objective_per_token(tmp_path: Path, ratio: float, a: float, expected: float,
                                     gradient: float) -> None:
    trainer = make_trainer(tmp_path, clip_coef=0.2)
    batch = _row_batch([[0.0, 1.0, 0.0]])  # one generated token between a prompt token and padding
    old = torch.tensor([[0.0, -2.0, 0.0]])
    new = old + torch.tensor([[0.3, math.log(ratio), 0.7]])  # off-mask changes must not count
    adv = torch.tensor([[5.0, a, 5.0]])
    loss, stats, chosen = _loss(trainer, batch, new, old, adv)
    # The loss to minimise is -min(r A, clip(r) A) = max(-r A, -clip(r) A), divided by the token count (1).
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["losses/policy_loss"] == [pytest.approx(expected, abs=1e-6)]
    loss.backward()
    assert chosen.logprobs.grad is not None
    torch.testing.assert_close(chosen.logprobs.grad, torch.tensor([[0.0, gradient, 0.0]]), atol=1e-6, rtol=0)


def test_k3_kl_is_added_with_its_coefficient(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, kl_coef=0.5)
    batch = _row_batch([[1.0, 1.0, 0.0]])
    new = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])  # the padding column differs too: it must not count
    loss, stats, _ = _loss(trainer, batch, new, new.clone(), torch.ones(1, 3), ref)
    # k3 estimator of KL(pi || pi_ref) per token: exp(d) - d - 1 with d = log pi_ref - log pi, averaged over tokens
    deltas = [-1.5 - -1.0, -1.0 - -2.0]
    kl = sum(math.exp(d) - d - 1 for d in deltas) / 2
    assert stats["losses/kl_ref"] == [pytest.approx(kl, rel=1e-5)]
    assert stats["losses/policy_loss"] == [pytest.approx(-1.0, abs=1e-6)]  # ratio 1, A = 1 on both tokens
    assert loss.item() - stats["losses/policy_loss"][0] == pytest.approx(0.5 * kl, rel=1e-5)


def test_k3_kl_is_clamped_like_verl(tmp_path: Path) -> None:
    # A token the policy made e^-200 as likely as the reference: exp(200) is inf in float32, and the run would stop
    trainer = make_trainer(tmp_path, kl_coef=0.5)
    batch = _row_batch([[1.0, 1.0, 0.0]])
    new = torch.tensor([[-201.0, -1.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.5, 0.0]])
    loss, stats, _ = _loss(trainer, batch, new, new.detach().clone(), torch.ones(1, 3), ref)
    kl = (trainer_module.K3_TOKEN_BOUND + (math.exp(-0.5) + 0.5 - 1)) / 2  # the far token counts at the bound
    assert math.isfinite(loss.item())
    assert stats["losses/kl_ref"] == [pytest.approx(kl, rel=1e-5)]


# -- through `update`: denominator, KL reward, gradient clipping and accumulation --------------------------------
@pytest.mark.parametrize("micro_batch_size", [1, 64])
@pytest.mark.parametrize(("algo", "expected"), [("grpo", -1 / 4), ("drgrpo", -1 / (2 * 4))])
def test_policy_loss_divides_by_the_minibatch_token_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          algo: str, expected: float, micro_batch_size: int) -> None:
    # A row of 1 token with A = 1 and a row of 3 tokens with A = 0, at ratio 1: every token weighs the same, so
    # the loss is -1 / 4 (a mean over sequences would give -1 / 2). Dr.GRPO divides by rows * max_new_tokens (4).
    trainer = make_trainer(tmp_path, algo=algo, micro_batch_size=micro_batch_size, max_new_tokens=4)
    batch = pack_episodes([_episode([[1]], [1.0]), _episode([[3]], [0.0])], trainer.policy.pad_id,
                          trainer.device)
    adv = torch.zeros(batch.view_mask.shape)
    adv[0, 0] = 1.0
    monkeypatch.setattr(trainer_module, "advantages", lambda *args, **kwargs: (adv, None))
    metrics = trainer.update(batch)
    assert metrics["losses/policy_loss"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(("algo", "advantage"), [("reinforce_pp", "turn"), ("reinforce_pp", "episode"),
                                                 ("ppo_llm", "turn")])
def test_kl_reward_is_old_minus_reference_logprobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algo: str,
                                                   advantage: str) -> None:
    trainer = make_trainer(tmp_path, algo=algo, advantage=advantage, kl_coef=0.1)
    assert trainer.reference is not None
    with torch.no_grad():  # the policy starts as a copy of the reference: move it, so the KL is not 0
        generator = torch.Generator().manual_seed(0)
        for p in trainer.policy.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    batch = pack_episodes(_episodes(), trainer.policy.pad_id, trainer.device)
    old = trainer.score(batch)[0]
    ref = trainer.score(batch, trainer.reference)[0]
    expected = batch.to_view(old - ref)
    assert expected.abs().max() > 1e-3
    seen: list[Tensor | None] = []
    real = trainer_module.advantages

    def spy(*args: Any, kl: Tensor | None = None, **kwargs: Any) -> Any:
        seen.append(kl)
        return real(*args, kl=kl, **kwargs)

    monkeypatch.setattr(trainer_module, "advantages", spy)
    trainer.update(batch)
    assert len(seen) == 1 and seen[0] is not None, "the KL penalty never reached the advantages"
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-4)


def test_gradients_are_clipped_to_max_grad_norm(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_grad_norm=1e-3, update_epochs=2)
    steps = _grads(trainer)
    metrics = trainer.update(pack_episodes(_episodes(), trainer.policy.pad_id, trainer.device))
    assert metrics["losses/grad_norm"] > 1e-2  # well above the cap, so the clip had work to do
    assert len(steps) == 2
    for grads in steps:
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert float(total) <= 1e-3 * (1 + 1e-4)


def test_micro_batches_accumulate_to_the_full_batch_gradient(tmp_path: Path) -> None:
    # The same seed gives the same rollouts; one pass over all rows and eight one-row micro-batches must then
    # step with the same gradient (Adam's first step hides its scale, so the gradients are compared, not only
    # the weights).
    results = []
    for size in (1, 64):
        trainer = make_trainer(tmp_path / str(size), micro_batch_size=size, iterations=1, max_grad_norm=100.0)
        steps = _grads(trainer)
        trainer.learn()
        weights = [p.detach().clone() for p in trainer.policy.model.parameters()]
        results.append((steps, weights))
    (one_row, weights_one), (all_rows, weights_all) = results
    assert len(one_row) == len(all_rows) == 1
    assert max(float(g.abs().max()) for g in all_rows[0]) > 1e-4
    for a, b in zip(one_row[0], all_rows[0], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    for a, b in zip(weights_one, weights_all, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# -- the temperature (`LLMPolicy`) -------------------------------------------------------------------------------
def _tempered_logprobs(model: Any, token_ids: list[int], start: int) -> list[float]:
    """log softmax(logits / T) of each token from `start` on, from one plain forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([token_ids])).logits[0].float()
    log_probs = torch.log_softmax(logits / TEMPERATURE, dim=-1)
    return [float(log_probs[p - 1, token_ids[p]]) for p in range(start, len(token_ids))]


def test_sampling_and_scoring_use_the_temperature() -> None:
    model, tokenizer = tiny_test_model(seed=0)
    policy = LLMPolicy(model, tokenizer, temperature=TEMPERATURE, max_new_tokens=6)
    prompts = [policy.chat_prompt([{"role": "user", "content": "hi"}]),
               policy.chat_prompt([{"role": "user", "content": "hello there"}])]
    generations = policy.generate(prompts, generator=torch.Generator().manual_seed(0))
    for prompt, generation in zip(prompts, generations, strict=True):
        sequence = prompt + generation.token_ids
        expected = _tempered_logprobs(model, sequence, len(prompt))
        # The recorded rollout logprobs are those of the tempered distribution the tokens were drawn from ...
        assert generation.logprobs == pytest.approx(expected, abs=1e-4)
        # ... and scoring the sequence later gives the same numbers, so the first update's ratio is 1.
        mask = torch.tensor([[0.0] * len(prompt) + [1.0] * len(generation.token_ids)])
        scored, _ = policy.sequence_logprobs(torch.tensor([sequence]), torch.ones_like(mask, dtype=torch.long),
                                             mask)
        assert scored[0, len(prompt):].tolist() == pytest.approx(expected, abs=1e-4)


def test_rollout_and_update_logprobs_agree_at_a_temperature_below_one(tmp_path: Path) -> None:
    metrics = make_trainer(tmp_path, temperature=TEMPERATURE, iterations=1).learn()
    assert metrics["charts/logprob_diff_max"] < 1e-4


# -- packing (`pack_episodes`) -----------------------------------------------------------------------------------
def test_view_turn_ends_are_the_segments_own_turn_ends() -> None:
    episodes = _episodes()
    batch = pack_episodes(episodes, pad_id=0, device=torch.device("cpu"))
    # The episode view's tokens in order, as (row, position); row r is the r-th segment that holds actions.
    segments = [seg for ep in episodes for seg in ep.segments]
    flat = list(zip(batch.rows.tolist(), batch.positions.tolist(), strict=True))
    index = 0
    for e, episode in enumerate(episodes):
        width = int(batch.view_mask[e].sum())
        view = flat[index:index + width]
        index += width
        got = [view[a] for a in range(width) if batch.turn_ends[e, a]]
        expected = [(segments.index(seg), p) for seg in episode.segments for p in seg.turn_ends]
        assert got == expected, f"episode {e}"
        assert batch.turn_mask[e].sum() == len(episode.turns)
        # The turn rewards sit on those ends in turn order.
        assert batch.turn_rewards[e, :len(episode.turns)].tolist() == [t.reward for t in episode.turns]
    assert not batch.turn_ends[~batch.view_mask].any()


def test_terminated_is_each_episodes_own() -> None:
    episodes = _episodes()
    batch = pack_episodes(episodes, pad_id=0, device=torch.device("cpu"))
    assert batch.terminated.tolist() == [True, False, True, False]
    # From real rollouts: one turn ends a 1-turn env (terminated) and only cuts a 2-turn one (max_turns).
    model, tokenizer = tiny_test_model(seed=0)
    policy = LLMPolicy(model, tokenizer, max_new_tokens=3)
    collector = RolloutCollector([LetterCountEnv(turns=1), LetterCountEnv(turns=2)], policy, group_size=2,
                                 max_turns=1, history_turns=None, max_prompt_tokens=4096)
    episodes = collector.collect([0], generator=torch.Generator().manual_seed(0))
    assert [ep.terminated for ep in episodes] == [True, False]
    batch = pack_episodes(episodes, policy.pad_id, torch.device("cpu"))
    assert batch.terminated.tolist() == [ep.terminated for ep in episodes]


# -- logged metrics and Dr.GRPO's budget (an audit against TRL and verl) -----------------------------------------
@pytest.mark.parametrize("micro_batch_size", [1, 2, 64])
def test_the_logged_kl_does_not_depend_on_micro_batching(tmp_path: Path, micro_batch_size: int) -> None:
    """Every micro-batch adds its share of the minibatch's token mean; the logged k3 KL was their mean, so it
    shrank by the number of micro-batches."""
    trainer = make_trainer(tmp_path, kl_coef=0.5, micro_batch_size=micro_batch_size)
    with torch.no_grad():  # a policy away from its reference and from the rollout logprobs
        generator = torch.Generator().manual_seed(0)
        for p in trainer.policy.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    batch = pack_episodes(_episodes(), trainer.policy.pad_id, trainer.device)
    mask = batch.action_mask
    new = trainer.score(batch).logprobs
    ref = trainer.score(batch, trainer.reference).logprobs
    delta = (ref - new) * mask
    kl = float(((delta.exp() - delta - 1) * mask).sum() / mask.sum())
    metrics = trainer.update(batch)
    assert metrics["losses/kl_ref"] == pytest.approx(kl, rel=1e-4)  # one epoch: every row scored before the step


def test_approx_kl_and_clipfrac_weigh_every_token_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A row of 1 token whose ratio is clipped and a row of 3 at ratio 1: clipfrac 1/4 per token (a mean over the
    # two micro-batches would give 1/2).
    trainer = make_trainer(tmp_path, micro_batch_size=1, clip_coef=0.2)
    batch = pack_episodes([_episode([[1]], [1.0]), _episode([[3]], [0.0])], trainer.policy.pad_id, trainer.device)
    shift = torch.zeros_like(batch.rollout_logprobs)
    shift[0][batch.action_mask[0].bool()] = math.log(2.0)  # ratio 2 on row 0's token
    scores = trainer.score(batch)
    batch.old_scores = scores._replace(logprobs=scores.logprobs - shift)  # old logprobs lower by log 2 on row 0
    metrics = trainer.update(batch)
    assert metrics["losses/clipfrac"] == pytest.approx(1 / 4)
    assert metrics["losses/approx_kl"] == pytest.approx((2 - 1 - math.log(2)) / 4, rel=1e-4)


def test_drgrpo_divides_by_each_generations_budget_whatever_the_history_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dr.GRPO's normaliser is a constant token budget per generation. It was rows x max_new_tokens, and an episode
    packs into one row while its turns extend the context but into a row per turn once the history window slides,
    so the same turns gave a loss 3 times as large in one row."""
    losses = []
    for name, segments in (("one row", [[4, 4, 4]]), ("a row per turn", [[4], [4], [4]])):
        trainer = make_trainer(tmp_path / name, algo="drgrpo", max_new_tokens=4)
        batch = pack_episodes([_episode(segments, [0.0, 0.0, 1.0])], trainer.policy.pad_id, trainer.device)
        ones = torch.ones(batch.view_mask.shape)
        monkeypatch.setattr(trainer_module, "advantages", lambda *args, ones=ones, **kwargs: (ones, None))
        losses.append(trainer.update(batch)["losses/policy_loss"])
    # 12 tokens with A = 1 at ratio 1 over a budget of 3 generations x 4 tokens
    assert losses == [pytest.approx(-1.0, abs=1e-5), pytest.approx(-1.0, abs=1e-5)]


def test_entropy_is_logged_over_the_generated_tokens_of_the_tempered_policy(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, temperature=TEMPERATURE)
    batch = pack_episodes(_episodes(), trainer.policy.pad_id, trainer.device)
    expected, count = 0.0, 0
    with torch.no_grad():
        for r in range(batch.input_ids.shape[0]):
            logits = trainer.policy.model(input_ids=batch.input_ids[r:r + 1]).logits[0].float() / TEMPERATURE
            log_p = torch.log_softmax(logits, -1)
            for position in batch.action_mask[r].nonzero().squeeze(1).tolist():
                expected -= float((log_p[position - 1].exp() * log_p[position - 1]).sum())
                count += 1
    metrics = trainer.update(batch)
    assert metrics["losses/entropy"] == pytest.approx(expected / count, rel=1e-4)


# -- passes the update can skip without changing a bit (a performance audit) -----------------------------------
def _count_scoring(trainer: LLMTrainer) -> list[bool]:
    """Records each `sequence_logprobs` call of the policy: whether it ran with gradients."""
    calls: list[bool] = []
    real = trainer.policy.sequence_logprobs

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(torch.is_grad_enabled())
        return real(*args, **kwargs)

    trainer.policy.sequence_logprobs = counted  # type: ignore[method-assign]
    return calls


def _weights(trainer: LLMTrainer) -> list[Tensor]:
    return [p.detach().clone() for p in trainer.policy.model.parameters()]


def test_a_one_step_update_scores_the_batch_once(tmp_path: Path) -> None:
    # One epoch of one minibatch: the loss pass runs π_old itself, so a separate scoring pass (a third of the
    # update's time) gave the same numbers. A twin scored apart first must end bit for bit the same.
    one, two = make_trainer(tmp_path / "one"), make_trainer(tmp_path / "two")
    batch_one = pack_episodes(_episodes(), one.policy.pad_id, one.device)
    batch_two = pack_episodes(_episodes(), two.policy.pad_id, two.device)
    batch_two.old_scores = two.score(batch_two)
    calls = _count_scoring(one)
    metrics_one, metrics_two = one.update(batch_one), two.update(batch_two)
    assert calls == [True] * math.ceil(len(batch_one.input_ids) / 3)  # the loss passes only
    assert metrics_one == metrics_two and metrics_one["losses/entropy"] > 0
    assert all(torch.equal(a, b) for a, b in zip(_weights(one), _weights(two), strict=True))


def test_micro_batches_without_advantage_run_without_gradients(tmp_path: Path) -> None:
    # Every group tied (all its episodes returned alike): every advantage is 0 and the gradient is exactly 0, so
    # the passes run without grad; the optimiser still steps on zero gradients, as after a backward pass of 0.
    tied = [_episode([[1]], [1.0]), _episode([[2]], [1.0]), _episode([[1]], [0.5], group=1),
            _episode([[3]], [0.5], group=1)]
    trainer, twin = make_trainer(tmp_path / "a", weight_decay=0.1), make_trainer(tmp_path / "b", weight_decay=0.1)
    calls = _count_scoring(trainer)
    metrics = trainer.update(pack_episodes(tied, trainer.policy.pad_id, trainer.device))
    assert calls and not any(calls) and metrics["losses/grad_norm"] == 0.0
    twin.optimizer.zero_grad()
    for p in twin.policy.model.parameters():
        p.grad = torch.zeros_like(p)
    twin.optimizer.step()  # weight decay only
    assert all(torch.equal(a, b) for a, b in zip(_weights(trainer), _weights(twin), strict=True))


def test_idle_rows_share_micro_batches_and_each_runs_only_to_its_longest_row(tmp_path: Path) -> None:
    # Tied groups (all advantages 0) interleaved with untied ones, rows of very different lengths: the loss pass
    # puts the rows that need grad together, longest first, so half the micro-batches run without grad (mixed at
    # random, most would need it), and each runs only as wide as its own rows.
    episodes = []
    for group in range(4):
        tied = group % 2 == 1
        episodes += [_episode([[40 if group < 2 else 2]], [1.0], group=group),
                     _episode([[3]], [1.0 if tied else 0.0], group=group)]
    trainer = make_trainer(tmp_path, micro_batch_size=2, num_minibatches=1)
    batch = pack_episodes(episodes, trainer.policy.pad_id, trainer.device)
    widths: list[tuple[bool, int]] = []
    decoder = trainer.policy.model.get_decoder()
    handle = decoder.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append((torch.is_grad_enabled(), kwargs["input_ids"].shape[1])),
        with_kwargs=True)
    try:
        trainer.update(batch)
    finally:
        handle.remove()
    assert batch.shared_prefix == 0 and batch.input_ids.shape[1] == 43
    # active rows (groups 0 and 2) then idle ones (1 and 3), each pair as wide as its longer row plus one column
    assert widths == [(True, 43), (True, 7), (False, 43), (False, 7)]


def test_scoring_runs_to_the_longest_row_and_matches_the_full_width() -> None:
    # A micro-batch runs only up to one column past its longest row: the logprobs, entropies and hidden states are
    # those of the rows padded to the full width, up to float rounding (the attention kernel blocks its sums by the
    # width), and whatever width the rows come padded to, the same columns run.
    model, tokenizer = tiny_test_model(seed=0)
    policy = LLMPolicy(model, tokenizer)
    generator = torch.Generator().manual_seed(0)
    lengths = [37, 52, 61]
    width = 90
    input_ids = torch.full((3, width), policy.pad_id)
    attention = torch.zeros((3, width), dtype=torch.long)
    actions = torch.zeros((3, width))
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(0, 250, (length,), generator=generator)
        attention[row, :length] = 1
        actions[row, length - 9:length] = 1
    with torch.no_grad():
        full_entropy = torch.zeros((3, width))
        full = policy._sequence_logprobs(input_ids, attention, actions, True, 0, full_entropy)
    seen: list[int] = []
    handle = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    results = []
    with torch.no_grad():
        for cut in (width, 75, 62):
            entropy = torch.full((3, cut), 7.0)
            lp, hidden = policy.sequence_logprobs(input_ids[:, :cut], attention[:, :cut], actions[:, :cut],
                                                  with_hidden=True, entropy_out=entropy)
            assert lp.shape == (3, cut) and hidden is not None and hidden.shape[:2] == (3, cut)
            results.append((lp[:, :62], hidden[:, :62], entropy[:, :62]))
            assert not entropy[:, 62:].any() and not lp[:, 62:].any() and not hidden[:, 62:].any()
    handle.remove()
    assert seen == [62, 62, 62]  # one column past the longest row, whatever the width given
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))
    expected = (full[0][:, :62], full[1][:, :62], full_entropy[:, :62])
    for got, want in zip(results[0], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert results[0][0].abs().sum() > 0 and (results[0][0] != 0).sum() == actions.sum()
