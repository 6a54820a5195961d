"""Scoring reads each row at its own positions. `LLMPolicy.sequence_logprobs` applies the output layer only where a
row predicts one of its own action tokens (not at the union of every row's positions), except for models that
transform the output layer's logits, which keep their own forward; `prompt_end_hidden` runs the instructions every
prompt opens with once per chunk. Each is checked against the model's plain forward over every row alone."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import pytest
import torch
from torch import Tensor

from creditgym.agents.llm import LLMPolicy, RolloutCollector, pack_episodes
from creditgym.agents.llm import policy as policy_module
from creditgym.agents.llm.batch import TokenBatch
from creditgym.llm import tiny_test_model
from creditgym.seeding import seeded_torch

KINDS = ["tiny", "lora", "softcap", "logit_scale", "logits_scaling"]


def _model(kind: str) -> tuple[Any, Any]:
    """The tiny test model; with LoRA adapters (their B matrices non-zero, so that they change the logits); or a
    tiny Gemma-2 (final_logit_softcapping), Cohere (logit_scale) or Granite (logits_scaling) over the same
    tokenizer: each transforms its output layer's logits."""
    model, tokenizer = tiny_test_model(seed=0)
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        with seeded_torch(0):
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                     lora_dropout=0.0, task_type="CAUSAL_LM"))
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.2)
    elif kind in ("softcap", "logit_scale", "logits_scaling"):
        from transformers import (
            CohereConfig,
            CohereForCausalLM,
            Gemma2Config,
            Gemma2ForCausalLM,
            GraniteConfig,
            GraniteForCausalLM,
        )

        shapes = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
        with seeded_torch(0):
            if kind == "softcap":  # a cap of 1 bends these small logits by about 10%
                model = Gemma2ForCausalLM(Gemma2Config(**shapes, head_dim=16, final_logit_softcapping=1.0,
                                                       sliding_window=4096))
            elif kind == "logit_scale":
                model = CohereForCausalLM(CohereConfig(**shapes, logit_scale=0.5))
            else:
                model = GraniteForCausalLM(GraniteConfig(**shapes, logits_scaling=4.0))
    return model.eval(), tokenizer


def _batch(policy: LLMPolicy) -> TokenBatch:
    """Multi-turn rows (the whole conversation in one row) that open with the same instructions: rows whose
    replies differ in length, so each row's positions are a strict subset of the batch's union."""
    envs = [gym.make("creditgym/Sanity-WordBandit-v0", num_rounds=3) for _ in range(6)]
    collector = RolloutCollector(envs, policy, group_size=3, max_turns=3, history_turns=None, max_prompt_tokens=4096)
    episodes = collector.collect([11, 12], generator=torch.Generator().manual_seed(0))
    return pack_episodes(episodes, policy.pad_id, torch.device("cpu"))


def _compositions(batch: TokenBatch) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Micro-batches: every row, a single row, rows out of order, and rows with a row that has no action tokens
    (a copy of another with its action mask cleared) between them."""
    ids, attention, action = batch.input_ids, batch.attention_mask, batch.action_mask
    parts = {name: (ids[rows], attention[rows], action[rows])
             for name, rows in (("all", torch.arange(len(ids))), ("single", torch.tensor([1])),
                                ("shuffled", torch.tensor([4, 0, 2])))}
    rows = torch.tensor([0, 1, 3])
    empty = action[rows].clone()
    empty[1] = 0
    parts["empty row"] = (ids[rows], attention[rows], empty)
    return parts


def _alone(policy: LLMPolicy, ids: Tensor, attention: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logprobs, entropies and last hidden states of the action tokens, from the model's own forward (logits at
    every position) over each row alone, without its padding: what scoring must give at each row's positions."""
    logprobs, entropy = torch.zeros(ids.shape), torch.zeros(ids.shape)
    hidden = torch.zeros((*ids.shape, policy.model.config.hidden_size))
    with torch.no_grad():
        for r in range(len(ids)):
            length = int(attention[r].sum())
            out = policy.model(input_ids=ids[r:r + 1, :length], output_hidden_states=True, use_cache=False)
            log_probs = torch.log_softmax(out.logits[0].float() / policy.temperature, dim=-1)
            for p in range(length - 1):
                if action[r, p + 1]:
                    logprobs[r, p + 1] = log_probs[p, ids[r, p + 1]]
                    entropy[r, p + 1] = -(log_probs[p].exp() * log_probs[p]).sum()
                    hidden[r, p + 1] = out.hidden_states[-1][0, p]
    return logprobs, entropy, hidden


def _score(policy: LLMPolicy, ids: Tensor, attention: Tensor, action: Tensor, shared: int,
           backward: bool = False) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """`sequence_logprobs` with entropies and hidden states; with `backward`, the gradients of a loss on both."""
    entropy = torch.zeros(ids.shape)
    policy.model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(backward):
        logprobs, hidden = policy.sequence_logprobs(ids, attention, action, with_hidden=True, shared_prefix=shared,
                                                    entropy_out=entropy)
        assert hidden is not None
        if backward:
            weights = torch.linspace(-1, 1, logprobs.numel()).view_as(logprobs)  # unequal, so rows cannot swap
            ((logprobs * weights).sum() + 1e-3 * hidden.square().sum()).backward()
    grads = [p.grad.clone() for p in policy.model.parameters() if p.grad is not None]
    return logprobs.detach(), entropy, hidden.detach(), grads


@pytest.fixture(scope="module")
def batches() -> dict[str, tuple[LLMPolicy, TokenBatch]]:
    out = {}
    for kind in KINDS:
        policy = LLMPolicy(*_model(kind), max_new_tokens=6)
        out[kind] = policy, _batch(policy)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_each_row_is_scored_at_its_own_positions(kind: str, batches: dict) -> None:
    policy, batch = batches[kind]
    assert batch.shared_prefix >= policy_module.MIN_SHARED_PREFIX
    own = batch.action_mask.bool().sum(-1)
    assert (own < batch.action_mask.bool().any(0).sum()).all(), "each row should have fewer positions than all rows"
    # Only models whose logits are the output layer's alone apply it themselves.
    assert policy._head_alone == (kind in ("tiny", "lora"))
    for name, (ids, attention, action) in _compositions(batch).items():
        expected = _alone(policy, ids, attention, action)
        for shared in (batch.shared_prefix, 0):
            logprobs, entropy, hidden, _ = _score(policy, ids, attention, action, shared)
            for got, want in zip((logprobs, entropy, hidden), expected, strict=True):
                # A row alone and in a padded batch differ by float32 summation order (up to 2e-6 here); a token
                # scored at its neighbour's position differs by 0.1 (median), and the largest such gap by more.
                assert torch.allclose(got, want, atol=1e-5, rtol=0), (name, shared)
            assert not logprobs[action == 0].any() and not entropy[action == 0].any(), (name, shared)
            assert not hidden[action == 0].any(), (name, shared)
    if not policy._head_alone:
        # The output layer alone would miss the model's transform of its logits, by far more than the tolerance.
        policy._head_alone = True
        try:
            ids, attention, action = batch.input_ids, batch.attention_mask, batch.action_mask
            wrong = _score(policy, ids, attention, action, batch.shared_prefix)[0]
        finally:
            policy._head_alone = False
        assert (wrong - _alone(policy, ids, attention, action)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["tiny", "lora"])
def test_the_output_layer_runs_on_the_action_tokens_alone_with_the_same_results(kind: str, batches: dict) -> None:
    """Against the model's forward with logits at the union of the rows' positions (the path models with a logit
    transform take): the same logprobs, entropies and hidden states, and gradients up to summation order."""
    policy, batch = batches[kind]
    head_inputs: list[int] = []
    hook = policy.model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: head_inputs.append(args[0].shape[0]))
    try:
        for name, (ids, attention, action) in _compositions(batch).items():
            head_inputs.clear()
            alone = _score(policy, ids, attention, action, batch.shared_prefix, backward=True)
            assert head_inputs == [int(action.bool().sum())], name  # one row of logits per action token
            policy._head_alone = False
            try:
                union = _score(policy, ids, attention, action, batch.shared_prefix, backward=True)
            finally:
                policy._head_alone = True
            for got, want in zip(alone[:3], union[:3], strict=True):
                assert torch.allclose(got, want, atol=1e-6, rtol=0), name
            assert len(alone[3]) == len(union[3]) > 0
            # The output layer's backward sums over fewer positions; a row scored at the wrong positions would
            # move the gradients by far more than this.
            for a, b in zip(alone[3], union[3], strict=True):
                assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-9, name
    finally:
        hook.remove()


def test_a_micro_batch_without_action_tokens_scores_zeros(batches: dict) -> None:
    policy, batch = batches["tiny"]
    ids, attention = batch.input_ids[:2], batch.attention_mask[:2]
    nothing = torch.zeros_like(batch.action_mask[:2])
    for shared in (batch.shared_prefix, 0):
        logprobs, entropy, hidden, _ = _score(policy, ids, attention, nothing, shared)
        assert not logprobs.any() and not entropy.any() and not hidden.any()


@pytest.mark.parametrize("kind", ["tiny", "lora"])
def test_prompt_end_states_share_the_instructions_and_read_each_prompts_last_token(
        kind: str, batches: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """ppo_llm's bootstrap states: with the shared instructions run once per chunk, as without, whatever the
    chunk size, and as the state `sequence_logprobs` gives the prompt's last token."""
    policy, batch = batches[kind]
    # Prompts that open alike, of several lengths: row r's tokens up to its first reply and r + 1 tokens of it.
    first_action = batch.action_mask.argmax(-1)
    prompts = [batch.input_ids[r, :int(start) + 1 + r].tolist() for r, start in enumerate(first_action)]
    assert len(set(map(len, prompts))) == len(prompts)
    shared = policy_module.shared_prefix_length(prompts)
    assert shared >= policy_module.MIN_SHARED_PREFIX
    widths: list[tuple[int, int]] = []
    hook = policy.model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt + [0]])
            mask = torch.zeros(ids.shape)
            mask[0, -1] = 1.0
            expected.append(policy.sequence_logprobs(ids, torch.ones_like(ids), mask, with_hidden=True)[1][0, -1])
        widths.clear()
        try:
            results = {size: policy.prompt_end_hidden(prompts, batch_size=size) for size in (1, 2, 4, 8)}
        finally:
            hook.remove()
        monkeypatch.setattr(policy_module, "MIN_SHARED_PREFIX", 10**9)
        plain = policy.prompt_end_hidden(prompts, batch_size=8)
    # The instructions ran once per chunk, and never again with the prompts' own tokens.
    own = max(map(len, prompts)) - shared
    assert (1, shared) in widths and all(width <= own for rows, width in widths if (rows, width) != (1, shared))
    for size, ends in results.items():
        assert ends.shape == plain.shape
        # Equal up to float32 summation order; the state of a neighbouring token differs by over 1.
        assert torch.allclose(ends, plain, atol=1e-5, rtol=0), size
        assert torch.allclose(ends, torch.stack(expected), atol=1e-5, rtol=0), size
