"""The implicit PRM keeps each step's frozen reference log-prob from the rollout instead of running the reference
again in every training step: its loss, gradients and rewards must not change, and `EpisodeAssembler`, which cuts the
log-probs with the episodes, must return the episodes, in the order, that a step-by-step loop over each env returns,
across rollouts and checkpoints.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.wrappers.implicit_prm import GridImplicitPRM
from creditgym.wrappers.learned import EpisodeAssembler, StepEpisode


class StepByStepAssembler:
    """The reference: walk every env's steps in time, appending to its running episode, cutting where one ends."""

    def __init__(self, num_envs: int, *, keep_truncated: bool) -> None:
        self.keep_truncated = keep_truncated
        self.running: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in range(num_envs)]

    def add_rollout(self, buffers: list[torch.Tensor], terminated: torch.Tensor, truncated: torch.Tensor,
                    success: torch.Tensor) -> list[tuple[list[torch.Tensor], bool]]:
        finished = []
        for n, running in enumerate(self.running):
            for t in range(terminated.shape[0]):
                running.append(tuple(buffer[t, n].clone() for buffer in buffers))
                if terminated[t, n] or truncated[t, n]:
                    won = bool(success[t, n])
                    if won or not truncated[t, n] or self.keep_truncated:
                        finished.append(([torch.stack(steps) for steps in zip(*running, strict=True)], won))
                    running.clear()
        return finished


def random_rollout(generator: torch.Generator, steps: int, num_envs: int, end_probability: float
                   ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """(obs, actions, valid, reference log-probs) and the end flags of one rollout; env 0 never ends."""
    obs = torch.randint(0, 256, (steps, num_envs, 3, 2), generator=generator, dtype=torch.uint8)
    actions = torch.randint(0, 4, (steps, num_envs), generator=generator)
    valid = torch.rand(steps, num_envs, generator=generator) < 0.8
    reference = torch.randn(steps, num_envs, generator=generator)
    ends = torch.rand(steps, num_envs, generator=generator) < end_probability
    cut = torch.rand(steps, num_envs, generator=generator) < 0.5
    ends[:, 0] = False  # a never-ending episode: its pending chunks pile up
    terminated, truncated = ends & ~cut, ends & cut
    success = ends & (torch.rand(steps, num_envs, generator=generator) < 0.4)  # also on truncation (kept anyway)
    return [obs, actions, valid, reference], terminated, truncated, success


@pytest.mark.parametrize("keep_truncated", [True, False])
@pytest.mark.parametrize("end_probability", [0.02, 0.3])  # episodes spanning many rollouts, and several per rollout
def test_assembler_cuts_every_episode_as_a_step_by_step_loop_does(keep_truncated: bool,
                                                                   end_probability: float) -> None:
    generator = torch.Generator().manual_seed(0)
    num_envs, steps = 9, 5
    assembler = EpisodeAssembler(num_envs, keep_truncated=keep_truncated)
    reference = StepByStepAssembler(num_envs, keep_truncated=keep_truncated)
    buffers = [torch.zeros(0)] * 4
    checked = 0
    for rollout in range(24):
        # The trainer's buffers are overwritten in place: nothing pending or returned may alias them.
        new_buffers, terminated, truncated, success = random_rollout(generator, steps, num_envs, end_probability)
        buffers = new_buffers if rollout == 0 else [b.copy_(n) for b, n in zip(buffers, new_buffers, strict=True)]
        if rollout == 6:  # resume from a checkpoint, as PPO's checkpoint writes and reads it
            saved = io.BytesIO()
            torch.save(assembler.state_dict(), saved)
            assembler = EpisodeAssembler(num_envs, keep_truncated=keep_truncated)
            assembler.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=False))
        got = assembler.add_rollout(*buffers[:3], terminated, truncated, success, reference_logprobs=buffers[3])
        expected = reference.add_rollout(buffers, terminated, truncated, success)
        assert len(got) == len(expected)
        for episode, ((obs, actions, valid, logprobs), won) in zip(got, expected, strict=True):
            assert torch.equal(episode.obs, obs) and torch.equal(episode.actions, actions)
            assert torch.equal(episode.valid, valid) and torch.equal(episode.reference_logprobs, logprobs)
            assert episode.success == won and episode.outcome == float(won)
            # its own copy: a view of the rollout's would keep (and checkpoint) the whole rollout with it
            assert all(t.untyped_storage().nbytes() == t.nbytes for t in (episode.obs, episode.valid))
        checked += len(got)
        for buffer in buffers:
            buffer.fill_(0)
    assert checked > 10
    # env 0 never ended: its steps are all pending
    assert sum(len(chunk[1]) for chunk in assembler.pending[0]) == 24 * steps


def test_assembler_resumes_from_a_checkpoint_without_reference_log_probs() -> None:
    """Pending chunks saved before the reference was kept are (obs, actions, valid): their episodes carry none."""
    assembler = EpisodeAssembler(2)
    old_pending = [[(torch.tensor([[7.0]]), torch.tensor([1]), torch.tensor([True]))], []]
    assembler.load_state_dict({"pending": old_pending})
    obs = torch.tensor([[[1.0], [2.0]]])  # (T=1, N=2, 1)
    ends = torch.ones(1, 2, dtype=torch.bool)
    finished = assembler.add_rollout(obs, torch.zeros(1, 2, dtype=torch.long), ends, ends, ~ends, ends,
                                     reference_logprobs=torch.tensor([[-0.5, -0.25]]))
    assert [e.obs.squeeze(1).tolist() for e in finished] == [[7.0, 1.0], [2.0]]
    assert finished[0].reference_logprobs is None and finished[1].reference_logprobs.tolist() == [-0.25]


def _prm_and_episodes(loss: str) -> tuple[GridImplicitPRM, list[StepEpisode]]:
    generator = torch.Generator().manual_seed(1)
    prm = GridImplicitPRM((3, 4), 5, hidden=32, loss=loss, learning_rate=1e-2, batch_episodes=4, seed=0)
    obs = torch.randint(0, 2, (6, 10, 3, 4), generator=generator, dtype=torch.uint8)
    actions = torch.randint(0, 5, (6, 10), generator=generator)
    done = torch.rand(6, 10, generator=generator) < 0.3
    assembler = EpisodeAssembler(10)
    episodes = assembler.add_rollout(obs, actions, torch.ones_like(done), done, torch.zeros_like(done), done & (
        torch.rand(6, 10, generator=generator) < 0.5), reference_logprobs=prm.reference_logprobs(obs, actions))
    return prm, episodes


@pytest.mark.parametrize("loss", ["ce", "dpo"])
def test_prm_trains_on_kept_reference_log_probs_exactly_as_on_recomputed_ones(loss: str) -> None:
    prm, episodes = _prm_and_episodes(loss)
    assert len(episodes) >= 8 and any(e.success for e in episodes) and not all(e.success for e in episodes)
    without = [copy.copy(e) for e in episodes]
    for e in without:
        e.reference_logprobs = None
    other = copy.deepcopy(prm)
    references = []  # count the frozen reference's passes in training
    prm.reference.register_forward_hook(lambda *_: references.append(1))
    for _ in range(3):  # the weights move, so later steps compare a trained π_φ too
        assert prm.update(episodes) == other.update(without)
    assert references == []  # the kept log-probs replaced every pass of the reference
    for mine, theirs in zip(prm.network.parameters(), other.network.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    obs = torch.stack([e.obs[0] for e in episodes])
    actions = torch.stack([e.actions[0] for e in episodes])
    valid = torch.ones_like(actions, dtype=torch.bool)
    kept = prm.dense_rewards(obs, actions, valid, reference_logprobs=prm.reference_logprobs(obs, actions))
    assert kept.abs().max() > 0 and torch.equal(kept, prm.dense_rewards(obs, actions, valid))


def test_ppo_keeps_each_steps_reference_log_prob_with_its_episode(tmp_path) -> None:
    config = PPOConfig(env_id="creditgym/Sokoban-6x6-1b-v0", env_kwargs={"obs_mode": "egocentric", "action_mask": True},
                       learned_reward="prime", num_envs=8, num_steps=16, total_steps=8 * 16 * 9, hidden=16,
                       progress=False, tensorboard=False, runs_dir=str(tmp_path), run_name="prm", checkpoint_every=0)
    trainer = PPO(config)
    references = []  # the frozen reference's passes: one per rollout, none in the PRM's training or its rewards
    trainer.learned_reward.reference.register_forward_hook(lambda *_: references.append(1))
    trainer.learn()
    assert len(references) == 9
    prm = trainer.learned_reward
    assert isinstance(prm, GridImplicitPRM) and len(prm.replay) > 0
    for episode in prm.replay.episodes:
        assert torch.allclose(episode.reference_logprobs, prm.reference_logprobs(episode.obs, episode.actions),
                              atol=1e-6)


def test_bfloat16_reward_networks_give_float32_outputs_close_to_float32() -> None:
    """`learned_reward_precision="bfloat16"` runs the networks under autocast: outputs stay float32 and close to the
    float32 networks' (same weights), gradients reach every weight, the PRM's reward is still 0 before an update
    (π_φ and π_ref compute alike) and its log-ratios after one are close to float32's."""
    from creditgym.wrappers.progress import GridProgressEstimator

    generator = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 2, (64, 7, 5, 5), generator=generator, dtype=torch.uint8)
    actions = torch.randint(0, 4, (64,), generator=generator)
    exact = GridProgressEstimator((7, 5, 5), 4, hidden=64, seed=3)
    fast = GridProgressEstimator((7, 5, 5), 4, hidden=64, seed=3, precision="bfloat16")
    for model in (exact, fast):  # a last layer that is not all zeros, as after training
        torch.nn.init.normal_(model.net[-1].weight, generator=torch.Generator().manual_seed(1))
    got, expected = fast(obs, actions), exact(obs, actions)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=5e-2, atol=5e-2)
    assert not torch.equal(got, expected)  # it did run in bfloat16
    got.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fast.parameters())

    prm = GridImplicitPRM((7, 5, 5), 4, hidden=32, seed=0, precision="bfloat16")
    rewards = prm.dense_rewards(obs, actions, torch.ones_like(actions, dtype=torch.bool))
    assert rewards.dtype == torch.float32 and torch.equal(rewards, torch.zeros_like(rewards))
    exact_prm = GridImplicitPRM((7, 5, 5), 4, hidden=32, seed=0)
    for model in (exact_prm, prm):  # π_φ moved away from π_ref, as after training
        torch.nn.init.normal_(model.network[-1].weight, generator=torch.Generator().manual_seed(1))
    got, expected = prm.log_ratios(obs, actions), exact_prm.log_ratios(obs, actions)
    assert got.dtype == torch.float32 and not torch.equal(got, expected)  # the PRM ran in bfloat16 too
    assert torch.allclose(got, expected, atol=0.1)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        GridImplicitPRM((7, 5, 5), 4, precision="float16")
    with pytest.raises(ValueError, match="learned_reward_precision must be float32 or bfloat16"):
        PPOConfig(env_id="creditgym/Sokoban-6x6-1b-v0", learned_reward="spa", learned_reward_precision="half")


def test_the_config_precision_reaches_every_learned_reward_model() -> None:
    from creditgym.agents.ppo import make_learned_reward

    for algo in ("spa", "prime", "oprl"):
        for precision in ("float32", "bfloat16"):
            config = PPOConfig(env_id="creditgym/Sokoban-6x6-1b-v0", learned_reward=algo,
                               learned_reward_precision=precision)
            model = make_learned_reward(config, (7, 5, 5), 4, torch.device("cpu"))
            assert getattr(model, "estimator", model).bfloat16 == (precision == "bfloat16"), (algo, precision)



def test_a_minibatch_mixing_kept_and_missing_reference_log_probs_trains_as_recomputed() -> None:
    """Episodes replayed from a checkpoint written before the log-probs were kept have none: the loss computes theirs,
    beside the kept ones of newer episodes, in one minibatch."""
    generator = torch.Generator().manual_seed(1)
    prm = GridImplicitPRM((3, 4), 5, hidden=32, seed=0)
    obs = torch.randint(0, 2, (6, 10, 3, 4), generator=generator, dtype=torch.uint8)
    actions = torch.randint(0, 5, (6, 10), generator=generator)
    done = torch.rand(6, 10, generator=generator) < 0.3
    success = done & (torch.rand(6, 10, generator=generator) < 0.5)
    episodes = EpisodeAssembler(10).add_rollout(obs, actions, torch.ones_like(done), done, torch.zeros_like(done),
                                                success, reference_logprobs=prm.reference_logprobs(obs, actions))
    assert len(episodes) > 2
    mixed = [copy.copy(episode) for episode in episodes]
    mixed[0].reference_logprobs = None
    recomputed = [copy.copy(episode) for episode in episodes]
    for episode in recomputed:
        episode.reference_logprobs = None
    assert torch.equal(prm.loss(mixed), prm.loss(recomputed))
