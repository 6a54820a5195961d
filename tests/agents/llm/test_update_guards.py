"""Guards of the LLM update that a mutation run found unguarded: the KL term of every group algorithm (also in
micro-batches whose advantages are all 0), fresh gradients each step, π_old fixed across epochs, the LoRA base as
reference, an exact resume with a value head or a frozen reference, and the value loss's scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from creditgym.agents.llm import pack_episodes
from creditgym.agents.llm import trainer as trainer_module
from creditgym.llm import tiny_test_model

from .helpers import make_trainer
from .test_update_maths import _episode, _episodes, _grads, _loss, _row_batch


def _move(model: torch.nn.Module, scale: float = 0.05) -> None:
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


# The k3 KL term is in the loss of every group algorithm, not only grpo's.
@pytest.mark.parametrize("algo", ["grpo", "drgrpo", "rloo"])
def test_k3_kl_is_in_the_loss_of_every_group_algo(tmp_path: Path, algo: str) -> None:
    trainer = make_trainer(tmp_path, algo=algo, kl_coef=0.5)
    batch = _row_batch([[1.0, 1.0]])
    new = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    _, stats, _ = _loss(trainer, batch, new, new.clone(), torch.ones(1, 2), ref)
    assert stats["losses/kl_ref"] and stats["losses/kl_ref"][0] > 0


# A micro-batch whose advantages are all 0 still carries the KL gradient
def test_tied_groups_still_get_the_kl_gradient(tmp_path: Path) -> None:
    tied = [_episode([[1]], [1.0]), _episode([[2]], [1.0]), _episode([[1]], [0.5], group=1),
            _episode([[3]], [0.5], group=1)]
    trainer = make_trainer(tmp_path, kl_coef=0.5)
    _move(trainer.policy.model)
    metrics = trainer.update(pack_episodes(tied, trainer.policy.pad_id, trainer.device))
    assert metrics["losses/kl_ref"] > 0
    assert metrics["losses/grad_norm"] > 0


# Gradients must not carry over from one optimiser step to the next
def test_each_step_starts_from_zero_gradients(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, update_epochs=2, learning_rate=1e-12, max_grad_norm=1e6)
    steps = _grads(trainer)
    trainer.update(pack_episodes(_episodes(), trainer.policy.pad_id, trainer.device))
    assert len(steps) == 2
    # lr ~ 0: the weights, hence the ratio (1) and the gradient, are the same at both steps
    for a, b in zip(steps[0], steps[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)


# Resume exactness with a value head (ppo_llm) or a frozen reference (KL), not only rloo without either.
@pytest.mark.parametrize("overrides", [{"algo": "ppo_llm"}, {"algo": "grpo", "kl_coef": 0.5, "learning_rate": 1e-2}])
def test_resume_continues_exactly_with_a_value_head_or_a_reference(tmp_path: Path, overrides: dict[str, Any]) -> None:
    straight = make_trainer(tmp_path / "a", iterations=3, **overrides)
    straight.learn()
    first = make_trainer(tmp_path / "b", iterations=3, **overrides)
    first.learn(until_iteration=1)
    resumed = make_trainer(tmp_path / "c", iterations=3, resume=tmp_path / "b" / "run", **overrides)
    if resumed.reference is not None:  # the reference is the initial model, not the checkpoint's weights
        initial, _ = tiny_test_model(seed=0)
        for (name, a), b in zip(resumed.reference.model.named_parameters(), initial.parameters(), strict=True):
            assert torch.equal(a, b), name
    resumed.learn()
    for (name, a), (_, b) in zip(straight.policy.model.named_parameters(), resumed.policy.model.named_parameters(),
                                 strict=True):
        assert torch.equal(a, b), name
    if straight.value_head is not None:
        assert resumed.value_head is not None
        assert torch.equal(straight.value_head.weight, resumed.value_head.weight)


# With several epochs, π_old must stay the policy that sampled the batch
def test_later_epochs_compare_against_the_rollout_policy(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, update_epochs=3, learning_rate=1e-2)
    metrics = trainer.update(pack_episodes(_episodes(), trainer.policy.pad_id, trainer.device))
    assert metrics["losses/approx_kl"] > 1e-6  # epochs 2 and 3 run a policy that has moved away from π_old


# With LoRA the reference is the base model, not the adapted policy
def test_lora_reference_is_the_base_model(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, lora_rank=4, kl_coef=0.1)
    batch = pack_episodes(_episodes(), trainer.policy.pad_id, trainer.device)
    base = trainer.reference_logprobs(batch)
    with torch.no_grad():
        for name, p in trainer.policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(generator=torch.Generator().manual_seed(0))
    moved = trainer.score(batch).logprobs
    reference = trainer.reference_logprobs(batch)
    assert reference is not None and base is not None
    torch.testing.assert_close(reference, base)
    assert (moved - reference).abs().max() > 1e-3


# The value loss is 0.5 · token-mean of (V − R)² (CleanRL / OpenRLHF), weighed by vf_coef
def test_value_loss_is_half_the_token_mean_squared_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make_trainer(tmp_path, algo="ppo_llm")
    assert trainer.value_head is not None
    with torch.no_grad():
        trainer.value_head.weight.normal_(generator=torch.Generator().manual_seed(0))
    batch = pack_episodes(_episodes(), trainer.policy.pad_id, trainer.device)
    targets = torch.linspace(-1.0, 1.0, batch.view_mask.numel()).view(batch.view_mask.shape) * batch.view_mask
    monkeypatch.setattr(trainer_module, "advantages",
                        lambda *args, **kwargs: (torch.zeros(batch.view_mask.shape), targets))
    values = trainer.score(batch).values
    assert values is not None
    mask = batch.action_mask
    expected = float(0.5 * (((values - batch.to_rows(targets)) ** 2) * mask).sum() / mask.sum())
    assert trainer.update(batch)["losses/value_loss"] == pytest.approx(expected, rel=1e-4)
