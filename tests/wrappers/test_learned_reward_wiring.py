"""The learned rewards' wiring: replay minibatches reach older episodes, seeds fix the learned models' weights, the
LLM trainer hooks pass their settings (coefficients, PRIME's reference, step granularity, learn-then-score order)
to the maths, IGPO does not pay the outcome twice, gradients are clipped, and wrappers leave the inner info alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from creditgym.wrappers.implicit_prm import GridImplicitPRM, LLMImplicitPRM
from creditgym.wrappers.learned import ReplayBuffer, StepEpisode
from creditgym.wrappers.progress import GridProgressEstimator, ProgressAttribution


def _episodes(n: int, seed: int) -> list[StepEpisode]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 2 + i % 3
        actions = torch.randint(0, 2, (length,), generator=g)
        out.append(StepEpisode(torch.rand(length, 4, generator=g), actions, torch.ones(length, dtype=torch.bool),
                               bool(i % 2), float(i % 2)))
    return out


# -- replay: minibatches draw from the whole buffer, not only from the newest episodes
def test_replay_buffer_train_samples_older_episodes_too() -> None:
    buffer = ReplayBuffer(capacity=100)
    old = [("old", i) for i in range(60)]
    buffer.add(old)
    seen: list = []
    buffer.train([("new", i) for i in range(8)], batch_size=8, epochs=4,
                 generator=torch.Generator().manual_seed(0), step=lambda b: seen.extend(b) or 0.0)
    assert any(e[0] == "old" for e in seen)


@pytest.mark.parametrize("kind", ["spa", "prm"])
def test_learned_reward_update_trains_on_replayed_episodes(kind: str) -> None:
    if kind == "spa":
        model = ProgressAttribution(GridProgressEstimator((4,), 2, hidden=8, seed=0), batch_episodes=8, seed=0)
        attr = "train_step"
    else:
        model = GridImplicitPRM((4,), 2, hidden=8, batch_episodes=8, seed=0)
        attr = "_step"
    first, second = _episodes(64, 0), _episodes(8, 1)
    model.update(first)
    seen: list = []
    real = getattr(model, attr)
    setattr(model, attr, lambda batch: (seen.extend(batch), real(batch))[1])
    model.update(second)
    assert any(any(e is f for f in first) for e in seen), "update trained on the new episodes only"


# -- seeds fix the learned models' initial weights
def test_grid_prm_initial_weights_come_from_its_seed() -> None:
    torch.manual_seed(1)
    a = GridImplicitPRM((4,), 2, hidden=8, seed=0)
    torch.manual_seed(2)
    b = GridImplicitPRM((4,), 2, hidden=8, seed=0)
    c = GridImplicitPRM((4,), 2, hidden=8, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.network.parameters(), b.network.parameters(), strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(a.network.parameters(), c.network.parameters(), strict=True))


def test_llm_prm_lora_weights_come_from_its_seed() -> None:
    from creditgym.agents.llm import LLMPolicy
    from creditgym.llm import tiny_test_model

    model, tokenizer = tiny_test_model(seed=0)
    policy = LLMPolicy(model, tokenizer)
    prms = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        prms.append(LLMImplicitPRM(policy, lora_rank=4, seed=0))
    a, b = ({n: p for n, p in prm.scorer.model.named_parameters() if "lora_A" in n} for prm in prms)
    assert a and all(torch.equal(a[n], b[n]) for n in a)


# -- the LLM PRM's DPO "mean" score averages over turns in update() too
def test_llm_prm_mean_score_update_uses_turn_counts() -> None:
    from tests.agents.llm.helpers import LetterCountEnv
    from tests.wrappers.llm_episodes import collect

    policy, _, batch = collect(lambda: LetterCountEnv(turns=3))
    with torch.no_grad():
        ref = policy.sequence_logprobs(batch.input_ids, batch.attention_mask, batch.action_mask)[0]
    ref = ref - 0.1 * batch.action_mask
    labels = torch.arange(batch.group_ids.shape[0]) % 2 == 0
    prm = LLMImplicitPRM(policy, loss="dpo", score="mean", reference="old", micro_batch_size=100)
    prm.update(batch, labels, batch.group_ids, ref)
    got = torch.cat([p.grad.flatten() for p in prm.params])
    whole = LLMImplicitPRM(policy, loss="dpo", score="mean", reference="old")
    logprobs, _ = whole.scorer.sequence_logprobs(batch.input_ids, batch.attention_mask, batch.action_mask)
    sums = batch.to_view((logprobs - ref) * batch.action_mask).sum(-1)
    whole.loss(sums, labels, batch.group_ids, batch.turn_mask.sum(-1)).backward()
    torch.nn.utils.clip_grad_norm_(whole.params, whole.max_grad_norm)
    expected = torch.cat([p.grad.flatten() for p in whole.params])
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)


# -- LLM trainer hooks: the settings reach the maths
def _trainer(tmp_path: Path, **overrides):
    from tests.agents.llm.test_learned_reward_trainer import make_trainer

    return make_trainer(tmp_path, iterations=1, **overrides)


def _batch(trainer, seeds=(0, 1)):
    from creditgym.agents.llm.batch import pack_episodes

    episodes = trainer.collector.collect(list(seeds), generator=trainer.generator)
    return episodes, pack_episodes(episodes, trainer.policy.pad_id, trainer.device)


@pytest.mark.parametrize("granularity", ["token", "step"])
def test_prime_hook_matches_prime_advantages_with_the_configured_coefficient(tmp_path: Path, granularity: str) -> None:
    from creditgym.credit import place_turn_rewards, prime_advantages

    trainer = _trainer(tmp_path, learned_reward="prime", learned_reward_coef=0.3, prime_granularity=granularity,
                       learned_reward_lr=1e-2)
    hook = trainer.learned_reward
    assert hook.prm.reference == "initial"  # PRIME's default reference: the frozen starting policy
    episodes, batch = _batch(trainer)
    outcomes = batch.returns.clone()
    hook.apply(episodes, batch)  # updates the PRM, then scores the batch with it
    ref, logprobs = hook.prm.reference_logprobs(batch), hook.prm.logprobs(batch)
    assert hook.prm.token_rewards(batch, ref, logprobs).abs().max() > 1e-4  # process rewards are not all 0
    if granularity == "token":
        rewards, positions = hook.prm.token_rewards(batch, ref, logprobs), batch.view_mask
    else:
        rewards = place_turn_rewards(hook.prm.step_rewards(batch, ref, logprobs), batch.turn_ends, batch.turn_mask)
        positions = batch.turn_ends
    expected = prime_advantages(rewards, positions, outcomes, batch.view_mask, batch.group_ids,
                                process_coef=5.0 * 0.3, outcome_coef=5.0)
    assert torch.allclose(batch.learned_advantages, expected, atol=1e-5)


def test_oprl_hook_uses_the_configured_step_weight(tmp_path: Path) -> None:
    from creditgym.credit import broadcast_turn_values, oprl_advantages

    trainer = _trainer(tmp_path, learned_reward="oprl", learned_reward_coef=0.3, learned_reward_lr=1e-2)
    hook = trainer.learned_reward
    episodes, batch = _batch(trainer)
    outcomes = batch.returns.clone()
    hook.apply(episodes, batch)
    steps = hook.prm.step_rewards(batch, batch.old_scores.logprobs)
    assert steps.abs().max() > 1e-4
    per_turn, _, _ = oprl_advantages(steps, batch.turn_mask, outcomes, batch.group_ids, step_weight=0.3)
    assert torch.allclose(batch.learned_advantages, broadcast_turn_values(per_turn, batch.turn_ends, batch.view_mask),
                          atol=1e-5)


def test_igpo_hook_adds_gains_only_not_the_outcome_again(tmp_path: Path) -> None:
    from tests.agents.llm.helpers import igpo_dialogue_trainer

    trainer = igpo_dialogue_trainer(tmp_path)
    episodes, batch = _batch(trainer, seeds=(0,))
    for ep in episodes:  # a non-zero outcome, so paying it a second time shows
        ep.turns[-1].reward_components["task"] = 0.7
    env_last = [ep.turns[-1].reward for ep in episodes]
    trainer.learned_reward.apply(episodes, batch)
    for ep, before in zip(episodes, env_last, strict=True):
        assert ep.turns[-1].reward_components["info_gain"] == 0.0
        assert ep.turns[-1].reward == before


def test_spa_hook_pays_alpha_times_contribution_from_the_updated_head(tmp_path: Path) -> None:
    from creditgym.wrappers.llm_progress import turn_features

    trainer = _trainer(tmp_path, learned_reward="spa", advantage="turn", learned_reward_coef=0.5,
                       learned_reward_lr=1e-2)
    hook = trainer.learned_reward
    episodes, batch = _batch(trainer)
    records = turn_features(trainer.policy, episodes)
    hook.apply(episodes, batch)
    contributions = hook.spa.contributions(records)  # the head after this batch's update
    assert any(float(c.abs().sum()) > 0 for c in contributions)
    for ep, c in zip(episodes, contributions, strict=True):
        logged = torch.tensor([t.reward_components["progress"] for t in ep.turns])
        assert torch.allclose(logged, 0.5 * c, atol=1e-6)


def test_prm_updates_before_scoring_by_default() -> None:
    from creditgym.agents.llm import LLMTrainConfig

    assert LLMTrainConfig(model="tiny", learned_reward="prime").prm_update_first is True


# -- gradient clipping holds in every learned model
def test_spa_and_grid_prm_clip_their_gradients() -> None:
    episodes = _episodes(32, 0)
    for episode in episodes:
        episode.outcome *= 100.0  # a huge loss, so the raw gradient norm is far above max_grad_norm
    spa = ProgressAttribution(GridProgressEstimator((4,), 2, hidden=8, seed=0), max_grad_norm=0.5, seed=0)
    spa.estimator.net[-1].weight.data.fill_(0.1)
    spa.train_step(episodes)
    assert float(torch.nn.utils.get_total_norm([p.grad for p in spa.params])) <= 0.5 + 1e-5
    prm = GridImplicitPRM((4,), 2, hidden=8, beta=50.0, max_grad_norm=0.5, seed=0)
    with torch.no_grad():
        prm.network[-1].bias.add_(torch.tensor([3.0, -3.0]))
    prm._step(episodes)
    assert float(torch.nn.utils.get_total_norm([p.grad for p in prm.network.parameters()])) <= 0.5 + 1e-5


# -- a wrapper adds its channel to a copy of the inner info, never to the inner env's own dict
def test_shaping_leaves_the_inner_info_dict_alone() -> None:
    import gymnasium as gym

    import creditgym  # noqa: F401
    from creditgym.wrappers.shaping import PotentialShaping

    class Spy(gym.Wrapper):
        def step(self, action):  # noqa: ANN001, ANN202
            out = self.env.step(action)
            self.last_info = out[4]
            return out

    spy = Spy(gym.make("creditgym/Sokoban-6x6-2b-v0"))
    env = PotentialShaping(spy, "box_distance", gamma=1.0)
    env.reset(seed=0)
    env.step(0)
    assert "shaping" not in spy.last_info["reward_components"]
