"""The LLM implicit PRM (PRIME, OPRL): the reference's properties, and an exact micro-batched update."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from creditgym.agents.llm.batch import TokenBatch
from creditgym.wrappers.implicit_prm import LLMImplicitPRM, outcome_ce_loss, trajectory_dpo_loss
from tests.agents.llm.helpers import LetterCountEnv

from .llm_episodes import collect


@pytest.fixture(scope="module")
def rollouts():  # noqa: ANN201
    torch.set_num_threads(1)
    return collect(lambda: LetterCountEnv(turns=3))


def _score(policy, batch: TokenBatch) -> torch.Tensor:  # noqa: ANN001
    """The logprobs the trainer scores the batch with (`LLMTrainer.score`)."""
    with torch.no_grad():
        return policy.sequence_logprobs(batch.input_ids, batch.attention_mask, batch.action_mask,
                                        shared_prefix=batch.shared_prefix)[0]


def _labels(batch: TokenBatch) -> torch.Tensor:
    """Alternate success and failure, so every group of the batch has DPO pairs."""
    return torch.arange(batch.group_ids.shape[0]) % 2 == 0


def _moved(prm: LLMImplicitPRM, batch: TokenBatch, ref: torch.Tensor, steps: int = 3) -> LLMImplicitPRM:
    for group in prm.optimizer.param_groups:
        group["lr"] = 1e-2
    for _ in range(steps):
        prm.update(batch, _labels(batch), batch.group_ids, ref)
    return prm


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_prm_equal_to_the_old_policy_pays_nothing_and_dpo_loss_is_log_2(rollouts, lora_rank: int) -> None:  # noqa: ANN001
    policy, _, batch = rollouts
    prm = LLMImplicitPRM(policy, loss="dpo", reference="old", lora_rank=lora_rank, micro_batch_size=3)
    old = _score(policy, batch)
    assert torch.all(prm.token_rewards(batch, old) == 0)
    assert torch.all(prm.step_rewards(batch, old) == 0)
    metrics = prm.update(batch, _labels(batch), batch.group_ids, old)
    assert metrics["implicit_prm/pairs"] > 0
    assert abs(metrics["implicit_prm/loss"] - math.log(2)) < 1e-6


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_prime_prm_equal_to_its_reference_pays_nothing(rollouts, lora_rank: int) -> None:  # noqa: ANN001
    policy, _, batch = rollouts
    prm = LLMImplicitPRM(policy, loss="ce", reference="initial", lora_rank=lora_rank, micro_batch_size=3)
    ref = prm.reference_logprobs(batch)
    assert torch.all(prm.token_rewards(batch, ref) == 0) and torch.all(prm.step_rewards(batch, ref) == 0)
    metrics = prm.update(batch, _labels(batch), batch.group_ids, ref)
    assert abs(metrics["implicit_prm/loss"] - math.log(2)) < 1e-6
    # After training the PRM moved away from its reference, which stayed the starting policy.
    _moved(prm, batch, ref)
    assert torch.equal(prm.reference_logprobs(batch), ref)
    assert prm.token_rewards(batch, ref).abs().sum() > 0


def test_step_rewards_sum_to_beta_times_the_log_ratio(rollouts) -> None:  # noqa: ANN001
    policy, _, batch = rollouts
    prm = LLMImplicitPRM(policy, loss="ce", reference="initial", beta=0.05, micro_batch_size=3)
    ref = prm.reference_logprobs(batch)
    _moved(prm, batch, ref)
    logprobs = prm.logprobs(batch)
    log_ratio = batch.to_view((logprobs - ref) * batch.action_mask).sum(-1)
    steps = prm.step_rewards(batch, ref)
    tokens = prm.token_rewards(batch, ref)
    assert log_ratio.abs().max() > 1e-3
    assert torch.allclose(steps.sum(-1), 0.05 * log_ratio, atol=1e-5)
    assert torch.allclose(tokens.sum(-1), 0.05 * log_ratio, atol=1e-5)
    # Each turn gets its own tokens' log-ratio (OPRL's step advantage depends on the split, not only the sum)
    per_token = batch.to_view((logprobs - ref) * batch.action_mask)
    expected = torch.zeros_like(steps)
    for e in range(per_token.shape[0]):
        turn, total = 0, 0.0
        for v in range(per_token.shape[1]):
            if batch.view_mask[e, v]:
                total += float(per_token[e, v])
                if batch.turn_ends[e, v]:
                    expected[e, turn], turn, total = 0.05 * total, turn + 1, 0.0
    assert (expected[:, :-1].abs() > 1e-4).any()  # earlier turns carry reward too
    assert torch.allclose(steps, expected, atol=1e-5)


@pytest.mark.parametrize("loss", ["ce", "dpo"])
def test_micro_batched_update_has_the_whole_batch_gradient(rollouts, loss: str) -> None:  # noqa: ANN001
    policy, _, batch = rollouts
    ref = _score(policy, batch) - 0.1 * batch.action_mask  # any fixed reference, so the log-ratio is not 0
    grads = []
    for micro_batch_size in (1, 100):
        prm = LLMImplicitPRM(policy, loss=loss, reference="old", micro_batch_size=micro_batch_size)
        prm.update(batch, _labels(batch), batch.group_ids, ref)
        grads.append(torch.cat([p.grad.flatten() for p in prm.params]))
    # the same loss differentiated in one piece
    prm = LLMImplicitPRM(policy, loss=loss, reference="old")
    logprobs, _ = prm.scorer.sequence_logprobs(batch.input_ids, batch.attention_mask, batch.action_mask)
    sums = batch.to_view((logprobs - ref) * batch.action_mask).sum(-1)
    prm.loss(sums, _labels(batch), batch.group_ids, batch.turn_mask.sum(-1)).backward()
    torch.nn.utils.clip_grad_norm_(prm.params, prm.max_grad_norm)
    whole = torch.cat([p.grad.flatten() for p in prm.params])
    assert whole.abs().max() > 0
    for grad in grads:
        assert torch.allclose(grad, whole, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss", ["ce", "dpo"])
def test_training_lowers_the_outcome_loss(rollouts, loss: str) -> None:  # noqa: ANN001
    policy, _, batch = rollouts
    prm = LLMImplicitPRM(policy, loss=loss, reference="initial", beta=0.5, micro_batch_size=4)
    ref = prm.reference_logprobs(batch)
    labels = _labels(batch)
    first = prm.update(batch, labels, batch.group_ids, ref)["implicit_prm/loss"]
    _moved(prm, batch, ref, steps=5)
    last = prm.update(batch, labels, batch.group_ids, ref)["implicit_prm/loss"]
    assert last < first - 0.05, (first, last)
    # and it lowered it the right way: successes now score above failures (a loss with the labels or the DPO
    # pair swapped also decreases as it is trained)
    sums = batch.to_view((prm.logprobs(batch) - ref) * batch.action_mask).sum(-1)
    assert sums[labels].mean() > sums[~labels].mean()


@pytest.mark.parametrize(("loss", "score"), [("ce", "sum"), ("dpo", "sum"), ("dpo", "mean")])
def test_loss_matches_the_reference_formula(rollouts, loss: str, score: str) -> None:  # noqa: ANN001
    """PRIME: BCE(σ(β Σ log π_φ/π_ref), success); OPRL: −log σ(β (score(τ+) − score(τ−))) over every (success,
    failure) pair of a group, the score the sum or its mean over turns."""
    policy, _, _ = rollouts
    beta = 0.5
    prm = LLMImplicitPRM(policy, loss=loss, score=score, reference="old", beta=beta)
    sums = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0, 1.0], dtype=torch.float64)
    success = torch.tensor([True, False, True, False, True, True])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])  # group 2 has no failure, so no pair
    turns = torch.tensor([1, 2, 4, 3, 2, 1])
    got = float(prm.loss(sums, success, groups, turns))
    if loss == "ce":
        terms = [-math.log(1 / (1 + math.exp(-beta * x))) if y else -math.log(1 - 1 / (1 + math.exp(-beta * x)))
                 for x, y in zip(sums.tolist(), success.tolist(), strict=True)]
    else:
        scores = [x / n if score == "mean" else x for x, n in zip(sums.tolist(), turns.tolist(), strict=True)]
        terms = [-math.log(1 / (1 + math.exp(-beta * (scores[i] - scores[j]))))
                 for i in range(6) for j in range(6)
                 if groups[i] == groups[j] and success[i] and not success[j]]
        assert len(terms) == 3
    assert got == pytest.approx(sum(terms) / len(terms), abs=1e-9)


def test_losses_are_log_2_at_zero_log_ratio() -> None:
    zeros = torch.zeros(4)
    assert abs(float(outcome_ce_loss(zeros, torch.tensor([1.0, 0, 1, 0]), beta=0.05)) - math.log(2)) < 1e-7
    assert abs(float(trajectory_dpo_loss(zeros[:2], zeros[2:], beta=0.05)) - math.log(2)) < 1e-7


def test_checkpoint_state_restores_the_prm(rollouts) -> None:  # noqa: ANN001
    policy, _, batch = rollouts
    prm = LLMImplicitPRM(policy, loss="dpo", reference="old", lora_rank=4)
    ref = _score(policy, batch)
    _moved(prm, batch, ref, steps=2)
    restored = LLMImplicitPRM(policy, loss="dpo", reference="old", lora_rank=4)
    restored.load_state_dict(copy.deepcopy(prm.state_dict()))  # as through torch.save and torch.load
    assert torch.equal(restored.logprobs(batch), prm.logprobs(batch))
    prm.update(batch, _labels(batch), batch.group_ids, ref)
    restored.update(batch, _labels(batch), batch.group_ids, ref)
    assert torch.equal(restored.logprobs(batch), prm.logprobs(batch))


def test_bad_settings_are_refused(rollouts) -> None:  # noqa: ANN001
    policy, _, batch = rollouts
    with pytest.raises(ValueError, match="loss must be one of"):
        LLMImplicitPRM(policy, loss="mse")
    with pytest.raises(ValueError, match="reference must be one of"):
        LLMImplicitPRM(policy, reference="sft")
    with pytest.raises(ValueError, match="pass the rollout policy's logprobs"):
        LLMImplicitPRM(policy, reference="old").reference_logprobs(batch)
