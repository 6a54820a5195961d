"""Batched multi-turn rollouts: assistant masks, segments under bounded history, recorded logprobs."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from creditgym.agents.llm import LLMPolicy, RolloutCollector, pack_episodes
from creditgym.agents.llm import policy as policy_module
from creditgym.llm import tiny_test_model
from tests.agents.llm.helpers import LetterCountEnv


def _collect(history_turns: int | None, *, max_new_tokens: int = 5, seed: int = 0) -> tuple[LLMPolicy, list]:
    model, tokenizer = tiny_test_model(seed=seed)
    policy = LLMPolicy(model, tokenizer, max_new_tokens=max_new_tokens)
    envs = [gym.make("creditgym/Sanity-WordBandit-v0", num_rounds=3) for _ in range(6)]
    collector = RolloutCollector(envs, policy, group_size=3, max_turns=4, history_turns=history_turns,
                                 max_prompt_tokens=4096)
    return policy, collector.collect([11, 12], generator=torch.Generator().manual_seed(0))


def _runs(mask: list[bool]) -> list[tuple[bool, int, int]]:
    """(is_action, start, end) of each run of equal mask values."""
    runs, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            runs.append((mask[start], start, i))
            start = i
    return runs


@pytest.mark.parametrize("history_turns", [None, 1])
def test_masks_cover_exactly_the_generated_tokens(history_turns: int | None) -> None:
    policy, episodes = _collect(history_turns)
    tok = policy.tokenizer
    assert all(len(ep.turns) >= 2 for ep in episodes), "the random model should need several turns"
    for ep in episodes:
        turn = 0
        for segment in ep.segments:
            runs = _runs(segment.action_mask)
            assert not runs[0][0], "a segment starts with prompt tokens"
            for is_action, start, end in runs:
                ids = segment.token_ids[start:end]
                if is_action:
                    assert end - start == ep.turns[turn].num_tokens
                    assert tok.decode(ids, skip_special_tokens=True) == ep.turns[turn].action
                    assert segment.turn_ends[segment.turn_ends.index(end - 1)] == end - 1
                    assert all(lp <= 0 for lp in segment.logprobs[start:end])
                    turn += 1
                else:
                    # Everything outside the mask is template text around the env's observation.
                    text = tok.decode(ids)
                    assert ep.turns[turn].observation in text if turn < len(ep.turns) else True
                    assert text.endswith("<|im_start|>assistant\n") or end == len(segment.token_ids)
                    assert all(lp == 0 for lp in segment.logprobs[start:end])
        assert turn == len(ep.turns)
    if history_turns is None:
        assert all(len(ep.segments) == 1 for ep in episodes)  # one growing conversation
    else:
        # turns 0 and 1 share a segment; each later turn starts its own window
        assert all(len(ep.segments) == max(1, len(ep.turns) - 1) for ep in episodes)


def test_first_prompt_is_the_chat_template_of_instructions_and_observation() -> None:
    policy, episodes = _collect(None)
    ep = episodes[0]
    expected = policy.tokenizer.apply_chat_template(
        [{"role": "system", "content": ep.instructions}, {"role": "user", "content": ep.turns[0].observation}],
        tokenize=False, add_generation_prompt=True)
    first_action = ep.segments[0].action_mask.index(True)
    assert policy.tokenizer.decode(ep.segments[0].token_ids[:first_action]) == expected


@pytest.mark.parametrize("history_turns", [None, 0, 2])
def test_recomputed_logprobs_match_the_rollout(history_turns: int | None) -> None:
    policy, episodes = _collect(history_turns, max_new_tokens=6)
    batch = pack_episodes(episodes, policy.pad_id, torch.device("cpu"))
    recomputed, _ = policy.sequence_logprobs(batch.input_ids, batch.attention_mask, batch.action_mask)
    mask = batch.action_mask.bool()
    assert mask.sum() == sum(ep.num_generated_tokens for ep in episodes)
    assert (batch.rollout_logprobs[mask] < 0).all()
    assert torch.allclose(recomputed[mask], batch.rollout_logprobs[mask], atol=1e-4, rtol=0)
    # and the comparison is not vacuous: a shifted mask does not match
    shifted = torch.roll(batch.rollout_logprobs, 1, dims=1)
    assert not torch.allclose(recomputed[mask], shifted[mask], atol=1e-4, rtol=0)


def test_episode_view_maps_back_to_rows_and_turn_ends() -> None:
    policy, episodes = _collect(1)
    batch = pack_episodes(episodes, policy.pad_id, torch.device("cpu"))
    values = torch.arange(batch.input_ids.numel(), dtype=torch.float32).reshape(batch.input_ids.shape)
    values = values * batch.action_mask
    assert torch.equal(batch.to_rows(batch.to_view(values)), values)
    assert torch.equal(batch.view_mask.sum(-1), torch.tensor([ep.num_generated_tokens for ep in episodes]))
    assert torch.equal(batch.turn_ends.sum(-1), torch.tensor([len(ep.turns) for ep in episodes]))
    assert torch.allclose(batch.turn_rewards.sum(-1), batch.returns)
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1]


def test_groups_share_a_task_and_finished_episodes_leave_the_batch() -> None:
    model, tokenizer = tiny_test_model()
    policy = LLMPolicy(model, tokenizer, max_new_tokens=3)
    calls: list[int] = []
    generate = policy.generate

    def counting(prompts: list[list[int]], **kwargs: object) -> list:
        calls.append(len(prompts))
        return generate(prompts, **kwargs)

    policy.generate = counting  # type: ignore[method-assign]
    envs = [gym.make("creditgym/Sanity-WordBandit-v0") for _ in range(8)]
    episodes = RolloutCollector(envs, policy, group_size=4, max_turns=5, history_turns=2,
                                max_prompt_tokens=4096).collect([1, 2], generator=torch.Generator().manual_seed(1))
    assert [ep.seed for ep in episodes] == [1] * 4 + [2] * 4
    assert calls[0] == 8 and calls == sorted(calls, reverse=True)
    assert len(calls) == max(len(ep.turns) for ep in episodes)
    assert sum(calls) == sum(len(ep.turns) for ep in episodes)


def test_a_shared_prompt_prefix_is_encoded_once_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tiny_test_model(seed=1)
    policy = LLMPolicy(model, tokenizer, max_new_tokens=6)
    instructions = "You play a game. Answer with one word in <answer></answer> tags. " * 3
    prompts = [policy.chat_prompt([{"role": "system", "content": instructions},
                                   {"role": "user", "content": observation}])
               for observation in ("cat", "a much longer observation of the board", "dog", "x")]
    assert policy_module.shared_prefix_length(prompts) >= policy_module.MIN_SHARED_PREFIX
    # Each row keeps at least one token of its own, and a single prompt shares nothing.
    assert policy_module.shared_prefix_length([[1] * 40, [1] * 40]) == 39
    assert policy_module.shared_prefix_length([[1] * 40]) == 0
    runs = {}
    for name, minimum in (("shared", policy_module.MIN_SHARED_PREFIX), ("plain", 10**9)):
        monkeypatch.setattr(policy_module, "MIN_SHARED_PREFIX", minimum)
        for greedy in (True, False):
            runs[name, greedy] = policy.generate(prompts, generator=torch.Generator().manual_seed(3), greedy=greedy)
    for greedy in (True, False):
        for shared, plain in zip(runs["shared", greedy], runs["plain", greedy], strict=True):
            assert shared.token_ids == plain.token_ids
            assert torch.allclose(torch.tensor(shared.logprobs), torch.tensor(plain.logprobs), atol=1e-5, rtol=0)


def test_identical_prompts_are_encoded_once_and_sample_as_if_alone() -> None:
    """A group's episodes start from one prompt: it is encoded once, and each row still samples on its own."""
    model, tokenizer = tiny_test_model(seed=1)
    policy = LLMPolicy(model, tokenizer, max_new_tokens=6)
    first, second = (policy.chat_prompt([{"role": "user", "content": text}]) for text in ("cat", "a longer one"))
    prompts = [first, second, first, first, second]
    encoded_rows: list[int] = []  # rows of every pass over more than one new token (prompt encoding)
    hook = model.get_decoder().register_forward_pre_hook(
        lambda _module, _args, kwargs: encoded_rows.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[1] > 1 else None, with_kwargs=True)
    try:
        together = policy.generate(prompts, generator=[torch.Generator().manual_seed(row) for row in range(5)])
    finally:
        hook.remove()
    assert encoded_rows == [2]  # the two distinct prompts, not five rows
    for row, prompt in enumerate(prompts):
        alone = policy.generate([prompt], generator=[torch.Generator().manual_seed(row)])[0]
        assert together[row].token_ids == alone.token_ids
        assert torch.allclose(torch.tensor(together[row].logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=0)
    assert len({tuple(together[row].token_ids) for row in (0, 2, 3)}) > 1  # one prompt, replies sampled apart


@pytest.mark.parametrize("history_turns", [None, 1])
def test_later_turns_encode_only_their_new_tokens_and_play_as_a_fresh_encoding(history_turns: int | None) -> None:
    """Each episode's keys and values are carried from turn to turn while its prompt extends the last one."""
    runs = {}
    for carried in (True, False):
        model, tokenizer = tiny_test_model(seed=2)
        policy = LLMPolicy(model, tokenizer, max_new_tokens=5)
        policy._can_carry_cache = carried
        _stop_early(policy)
        encoded: list[int] = []  # tokens of every pass over more than one new token (prompt encoding)
        model.get_decoder().register_forward_pre_hook(
            lambda _module, _args, kwargs, encoded=encoded: encoded.append(kwargs["input_ids"].numel())
            if kwargs["input_ids"].shape[1] > 1 else None, with_kwargs=True)
        envs = [gym.make("creditgym/Sanity-WordBandit-v0", num_rounds=4) for _ in range(6)]
        collector = RolloutCollector(envs, policy, group_size=3, max_turns=4, history_turns=history_turns,
                                     max_prompt_tokens=4096)
        episodes = collector.collect([5, 6], generator=[torch.Generator().manual_seed(row) for row in range(6)])
        runs[carried] = episodes, sum(encoded)
    (carried_episodes, carried_tokens), (fresh_episodes, fresh_tokens) = runs[True], runs[False]
    assert max(len(episode.turns) for episode in fresh_episodes) >= 3
    replies = [len(turn.action) for episode in fresh_episodes for turn in episode.turns]
    assert len(set(replies)) > 1  # some replies stopped early: their rows left the batch and were held
    for carried, fresh in zip(carried_episodes, fresh_episodes, strict=True):
        assert [turn.action for turn in carried.turns] == [turn.action for turn in fresh.turns]
        assert [s.token_ids for s in carried.segments] == [s.token_ids for s in fresh.segments]
        for got, want in zip(carried.segments, fresh.segments, strict=True):
            assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-5, rtol=0)
    if history_turns is None:  # every turn extends the last: later turns encode far less
        assert carried_tokens < fresh_tokens / 2
    else:  # turn 3 onwards starts a new segment (history cut): encoded afresh, carrying or not
        assert fresh_tokens > carried_tokens > fresh_tokens / 2


def _stop_early(policy: LLMPolicy) -> None:
    """Raise the stop token's logit, so that the tiny model's replies end at varied lengths."""
    stop = torch.tensor([policy.tokenizer.eos_token_id])
    policy.model.get_output_embeddings().register_forward_hook(
        lambda _module, _args, logits: logits.index_add(-1, stop, torch.full((*logits.shape[:-1], 1), 4.0)))


def test_an_episode_samples_alike_with_or_without_others_that_end_before_it() -> None:
    """Per-episode generators follow their episodes as others leave the batch (an evaluation's guarantee)."""
    model, tokenizer = tiny_test_model(seed=3)
    policy = LLMPolicy(model, tokenizer, max_new_tokens=5)
    _stop_early(policy)
    rounds = (1, 3, 2, 3)

    def play(indices: list[int]) -> list:
        envs = [LetterCountEnv(turns=rounds[i]) for i in indices]
        collector = RolloutCollector(envs, policy, group_size=1, max_turns=3, history_turns=None,
                                     max_prompt_tokens=4096)
        return collector.collect([20 + i for i in indices],
                                 generator=[torch.Generator().manual_seed(i) for i in indices])

    together = play([0, 1, 2, 3])
    assert [len(episode.turns) for episode in together] == list(rounds)
    for i in range(4):
        alone = play([i])[0]
        assert [s.token_ids for s in alone.segments] == [s.token_ids for s in together[i].segments]


def test_a_sliding_window_model_encodes_every_turn_afresh() -> None:
    """Its cache keeps only a window of keys and values, which cannot be carried to another batch."""
    from transformers import MistralConfig, MistralForCausalLM

    _, tokenizer = tiny_test_model(seed=0)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    policy = LLMPolicy(MistralForCausalLM(config).eval(), tokenizer, max_new_tokens=4)
    assert not policy._can_carry_cache
    envs = [gym.make("creditgym/Sanity-WordBandit-v0", num_rounds=3) for _ in range(2)]
    collector = RolloutCollector(envs, policy, group_size=2, max_turns=3, history_turns=None, max_prompt_tokens=4096)
    episodes = collector.collect([1], generator=torch.Generator().manual_seed(0))
    assert [len(episode.turns) for episode in episodes] == [3, 3]


def test_a_conversation_cache_holds_each_key_until_discarded_and_needs_one_key_per_prompt() -> None:
    model, tokenizer = tiny_test_model(seed=1)
    policy = LLMPolicy(model, tokenizer, max_new_tokens=3)
    prompts = [policy.chat_prompt([{"role": "user", "content": text}]) for text in ("cat", "dog")]
    conversations = policy_module.ConversationCache()
    replies = policy.generate(prompts, greedy=True, conversations=conversations, keys=["a", "b"])
    assert len(conversations) == 2
    held = conversations._take("a", [*prompts[0], *replies[0].token_ids, 7])
    assert held is not None and held.tokens == [*prompts[0], *replies[0].token_ids[:-1]]
    assert held.layers[0][0].shape[1] == len(held.tokens)  # one cached column per held token, padding dropped
    assert conversations._take("a", prompts[1]) is None  # a prompt that does not extend it
    conversations.discard("a")
    assert len(conversations) == 1 and conversations._take("a", [*prompts[0], *replies[0].token_ids]) is None
    with pytest.raises(ValueError, match="one key per prompt"):
        policy.generate(prompts, conversations=conversations, keys=["a"])


@pytest.mark.parametrize("with_hidden", [False, True])
def test_scoring_rows_with_a_shared_prefix_gives_the_same_logprobs_and_gradients(with_hidden: bool) -> None:
    policy, episodes = _collect(None, max_new_tokens=6)
    batch = pack_episodes(episodes, policy.pad_id, torch.device("cpu"))
    assert batch.shared_prefix >= policy_module.MIN_SHARED_PREFIX
    results = {}
    for name, shared in (("shared", batch.shared_prefix), ("plain", 0)):
        policy.model.zero_grad()
        logprobs, hidden = policy.sequence_logprobs(batch.input_ids, batch.attention_mask, batch.action_mask,
                                                    with_hidden=with_hidden, shared_prefix=shared)
        loss = logprobs.sum() + (hidden.square().sum() if hidden is not None else 0)
        loss.backward()
        grads = [p.grad.clone() for p in policy.model.parameters() if p.grad is not None]
        results[name] = (logprobs.detach(), None if hidden is None else hidden.detach(), grads)
    (lp_a, h_a, g_a), (lp_b, h_b, g_b) = results["shared"], results["plain"]
    assert torch.allclose(lp_a, lp_b, atol=1e-5, rtol=0)
    if with_hidden:
        assert torch.allclose(h_a, h_b, atol=1e-5, rtol=0)
    assert len(g_a) == len(g_b) > 0
    # Equal up to float32 summation order, relative to each tensor's scale: the kernels' order depends on the CPU
    # (worst 1.7e-5 with the hidden states' loss on an AMD EPYC, under 1e-5 on an Intel one); a prefix scored
    # wrongly differs by far more.
    for a, b in zip(g_a, g_b, strict=True):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-7
    # A row scores the same whichever rows it is scored with, a single row included, given the batch's prefix.
    for size in (1, 3):
        chunks = torch.arange(len(lp_a)).split(size)
        parts = [policy.sequence_logprobs(batch.input_ids[rows], batch.attention_mask[rows], batch.action_mask[rows],
                                          shared_prefix=batch.shared_prefix)[0] for rows in chunks]
        assert torch.equal(torch.cat(parts).detach(), lp_a)
    with pytest.raises(ValueError, match="do not all start with those tokens"):
        policy.sequence_logprobs(batch.input_ids, batch.attention_mask, batch.action_mask,
                                 shared_prefix=batch.input_ids.shape[1] - 1)


def test_reset_options_per_group_choose_each_groups_task() -> None:
    from creditgym.envs.sokoban.bank import load_bank

    model, tokenizer = tiny_test_model()
    policy = LLMPolicy(model, tokenizer, max_new_tokens=2)
    envs = [gym.make("creditgym/Sokoban-6x6-1b-v0", obs_mode="text") for _ in range(4)]
    collector = RolloutCollector(envs, policy, group_size=2, max_turns=1, history_turns=2, max_prompt_tokens=4096)
    bank = load_bank("6x6-1b", "test")
    expected = [envs[0].reset(options={"level": bank[i]})[0] for i in (3, 8)]
    assert expected[0] != expected[1]
    episodes = collector.collect([5, 6], greedy=True, options=[{"level": bank[3]}, {"level": bank[8]}])
    assert [ep.turns[0].observation for ep in episodes] == [expected[0]] * 2 + [expected[1]] * 2
    # Without options each env draws its level from its seed, as before options existed.
    drawn = collector.collect([5, 6], greedy=True)
    assert [ep.turns[0].observation for ep in drawn] == [envs[0].reset(seed=s)[0] for s in (5, 5, 6, 6)]
    with pytest.raises(ValueError, match="one reset options entry per group"):
        collector.collect([5, 6], options=[{"level": bank[3]}])


@pytest.mark.parametrize(("env_kwargs", "hint"), [
    ({"id": "creditgym/Sokoban-6x6-1b-v0"}, "pass obs_mode='text' for its text view"),
    ({"id": "creditgym/Sanity-Bandit-v0"}, "it has no text view, so train PPO on it instead"),
])
def test_an_array_env_is_refused_with_what_to_do(env_kwargs: dict, hint: str) -> None:
    model, tokenizer = tiny_test_model()
    envs = [gym.make(**env_kwargs) for _ in range(2)]
    collector = RolloutCollector(envs, LLMPolicy(model, tokenizer, max_new_tokens=2), group_size=2, max_turns=1,
                                 history_turns=2, max_prompt_tokens=4096)
    with pytest.raises(ValueError, match=f"LLM policies need text envs \\({hint}"):
        collector.collect([0], greedy=True)


@pytest.mark.parametrize("history_turns", [None, 0])
def test_a_cut_episode_keeps_the_prompt_its_next_turn_would_have_had(history_turns: int | None) -> None:
    """PPO bootstraps a cut episode from the value of the state after its last turn: the next turn's prompt."""
    runs = []
    for max_turns in (1, 2):
        model, tokenizer = tiny_test_model(seed=0)
        policy = LLMPolicy(model, tokenizer, max_new_tokens=5)
        envs = [gym.make("creditgym/Sanity-WordBandit-v0", num_rounds=3) for _ in range(4)]
        collector = RolloutCollector(envs, policy, group_size=2, max_turns=max_turns, history_turns=history_turns,
                                     max_prompt_tokens=4096, keep_next_prompts=True)
        runs.append(collector.collect([11, 12], generator=torch.Generator().manual_seed(0)))
    cut, longer = runs
    compared = 0
    for one, two in zip(cut, longer, strict=True):
        assert one.truncated and one.next_prompt is not None
        assert one.turns[0].action == two.turns[0].action  # the same first turn
        if len(two.turns) < 2:
            continue
        segment, n = two.segments[-1], two.turns[1].num_tokens
        assert one.next_prompt == segment.token_ids[:segment.turn_ends[-1] - n + 1]
        compared += 1
    assert compared >= 2
    assert all(ep.next_prompt is None for ep in longer if ep.terminated)


def test_the_value_heads_state_of_a_prompt_is_the_one_that_predicts_its_reply() -> None:
    model, tokenizer = tiny_test_model(seed=0)
    policy = LLMPolicy(model, tokenizer)
    prompts = [[60, 61, 62, 63, 64], [65, 66, 67]]
    ends = policy.prompt_end_hidden(prompts, batch_size=1)
    for prompt, end in zip(prompts, ends, strict=True):
        ids = torch.tensor([prompt + [70]])
        mask = torch.zeros(ids.shape)
        mask[0, -1] = 1.0
        _, hidden = policy.sequence_logprobs(ids, torch.ones_like(ids), mask, with_hidden=True)
        assert hidden is not None
        torch.testing.assert_close(end, hidden[0, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy.prompt_end_hidden(prompts, batch_size=8), ends, atol=1e-5, rtol=1e-5)


def test_a_reply_without_tokens_is_refused_not_credited_to_another_turn() -> None:
    # An OpenAI-compatible server that sends neither token ids nor text gives a turn no token to carry its reward:
    # packed, the next turn's tokens would have taken this turn's reward and the last reward would be lost.
    from creditgym.agents.llm.policy import Generation

    from .helpers import LetterCountEnv

    model, tokenizer = tiny_test_model(seed=0)
    policy = LLMPolicy(model, tokenizer, max_new_tokens=3)
    real = policy.generate
    policy.generate = lambda prompts, **kwargs: [Generation([], [], "", False) for _ in real(prompts, **kwargs)]
    collector = RolloutCollector([LetterCountEnv(turns=2)], policy, group_size=1, max_turns=2, history_turns=None,
                                 max_prompt_tokens=4096)
    with pytest.raises(ValueError, match="returned a reply with no tokens; a turn needs at least one"):
        collector.collect([0], generator=torch.Generator().manual_seed(0))
    policy.generate = real
    episodes = collector.collect([0], generator=torch.Generator().manual_seed(0))
    episodes[0].segments[0].turn_ends.pop(0)  # as the packer saw a turn that ended on a prompt token
    with pytest.raises(ValueError, match="episode 0 has 2 turns but 1 of them end on a generated token"):
        pack_episodes(episodes, policy.pad_id, torch.device("cpu"))
