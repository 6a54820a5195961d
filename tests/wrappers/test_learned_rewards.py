"""SPA progress attribution and the small-network implicit PRM: reward-methods.md properties and learning.

The synthetic task: episodes of 2-6 steps over random 4-d observations; the outcome is 1 exactly when the first
action was 1. Only an estimator that assigns the credit to that first action can fit it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from creditgym.wrappers.implicit_prm import (
    GridImplicitPRM,
    outcome_ce_loss,
    success_failure_pairs,
    trajectory_dpo_loss,
)
from creditgym.wrappers.learned import EpisodeAssembler, ReplayBuffer, StepEpisode
from creditgym.wrappers.progress import GridProgressEstimator, ProgressAttribution


def first_action_episodes(n: int, seed: int = 0) -> list[StepEpisode]:
    generator = torch.Generator().manual_seed(seed)
    episodes = []
    for _ in range(n):
        length = int(torch.randint(2, 7, (1,), generator=generator))
        obs = torch.rand(length, 4, generator=generator)
        obs[0] = 0.5  # every episode starts in the same state
        actions = torch.randint(0, 2, (length,), generator=generator)
        valid = torch.rand(length, generator=generator) < 0.7
        won = bool(actions[0] == 1)
        episodes.append(StepEpisode(obs, actions, valid, won, float(won)))
    return episodes


def spa(**kwargs) -> ProgressAttribution:
    torch.manual_seed(0)
    return ProgressAttribution(GridProgressEstimator((4,), 2, hidden=32), seed=0, **kwargs)


def first_step_rewards(model, action: int) -> float:
    obs, actions = torch.full((1, 4), 0.5), torch.tensor([action])
    return float(model.dense_rewards(obs, actions, torch.ones(1, dtype=torch.bool))[0])


# -- SPA ---------------------------------------------------------------------------------------------------------
def test_spa_prediction_is_the_sum_of_contributions() -> None:
    model, episodes = spa(), first_action_episodes(32)
    model.update(episodes)
    predicted = model.predict(episodes)
    for episode, total, contributions in zip(episodes, predicted, model.contributions(episodes), strict=True):
        assert len(contributions) == len(episode)
        assert abs(float(contributions.sum()) - float(total)) < 1e-6


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (1.0, 0.5), (2.5, 0.3)])
def test_spa_step_rewards_sum_to_contributions_plus_grounding(alpha: float, beta: float) -> None:
    model, episodes = spa(alpha=alpha, beta=beta), first_action_episodes(16)
    model.update(episodes)
    for episode, rewards, contributions in zip(episodes, model.step_rewards(episodes), model.contributions(episodes),
                                               strict=True):
        expected = alpha * float(contributions.sum()) + beta * int(episode.valid.sum())
        assert float(rewards.sum()) == pytest.approx(expected, abs=1e-5)
    # the batched form PPO uses gives the same rewards
    episode = episodes[0]
    batched = model.dense_rewards(episode.obs, episode.actions, episode.valid)
    assert torch.allclose(batched, model.step_rewards([episode])[0], atol=1e-6)


def test_spa_mse_decreases_and_credit_goes_to_the_deciding_action() -> None:
    model, episodes = spa(learning_rate=1e-2, epochs=4), first_action_episodes(256)
    before = float(model.loss(episodes).detach())
    for _ in range(60):
        model.update(episodes[:64])
    after = float(model.loss(episodes).detach())
    assert after < 0.5 * before
    assert first_step_rewards(model, 1) - first_step_rewards(model, 0) > 0.6


def test_spa_reports_its_fit_on_new_episodes_before_training_on_them() -> None:
    model, episodes = spa(learning_rate=1e-2, epochs=4), first_action_episodes(256)
    outcomes = torch.tensor([e.outcome for e in episodes[192:]])
    # the zero-initialised head predicts 0 for every episode: MSE = mean(R²), and worse than the mean outcome
    first = model.update(episodes[192:])
    assert first["progress/new_episode_mse"] == pytest.approx(float((outcomes ** 2).mean()), abs=1e-6)
    assert first["progress/explained_variance"] == pytest.approx(
        1 - float((outcomes ** 2).mean() / outcomes.var(unbiased=False)), abs=1e-5)
    for _ in range(60):
        model.update(episodes[:64])
    # episodes 64-191 were never trained on: the outcome is the first action, which the estimator has learnt
    held_out = model.update(episodes[64:192])
    assert held_out["progress/explained_variance"] > 0.3  # 0 = no better than the mean outcome


def test_spa_centred_outcome_flag_regresses_onto_the_leave_one_out_centred_outcome() -> None:
    """Off by default the target is R; the flag's target is R_i − mean_{j≠i} R_j (the released data script's)."""
    episodes = first_action_episodes(8)
    outcomes = [e.outcome for e in episodes]
    assert 0 < sum(outcomes) < len(outcomes)
    loo = [r - (sum(outcomes) - r) / (len(outcomes) - 1) for r in outcomes]
    plain, centred = spa(), spa(centered_outcome=True)
    like = torch.zeros(1, dtype=torch.float64)
    assert plain.targets(episodes, like).tolist() == pytest.approx(outcomes, abs=1e-12)
    assert centred.targets(episodes, like).tolist() == pytest.approx(loo, abs=1e-12)
    # the zero-initialised head predicts 0, so each loss is the mean square of its target
    assert float(plain.loss(episodes).detach()) == pytest.approx(float(np.mean(np.square(outcomes))), abs=1e-6)
    assert float(centred.loss(episodes).detach()) == pytest.approx(float(np.mean(np.square(loo))), abs=1e-6)


def test_spa_state_round_trip_continues_identically() -> None:
    episodes = first_action_episodes(64)
    straight = spa()
    for chunk in (episodes[:32], episodes[32:]):
        straight.update(chunk)
    interrupted = spa()
    interrupted.update(episodes[:32])
    state = interrupted.state_dict()
    resumed = spa()
    resumed.load_state_dict(state)
    resumed.update(episodes[32:])
    for a, b in zip(straight.estimator.parameters(), resumed.estimator.parameters(), strict=True):
        assert torch.equal(a, b)


def test_spa_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="finite"):
        spa(alpha=float("nan"))
    with pytest.raises(ValueError, match="batch_episodes"):
        spa(batch_episodes=0)


# -- implicit PRM --------------------------------------------------------------------------------------------------
def prm(**kwargs) -> GridImplicitPRM:
    return GridImplicitPRM((4,), 2, hidden=32, seed=0, **kwargs)


def test_prm_rewards_are_zero_and_losses_log2_before_training() -> None:
    model, episodes = prm(loss="dpo"), first_action_episodes(32)
    assert all(torch.equal(r, torch.zeros_like(r)) for r in model.step_rewards(episodes))
    assert float(model.loss(episodes).detach()) == pytest.approx(math.log(2), abs=1e-6)
    assert float(prm(loss="ce").loss(episodes).detach()) == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("coef", [1.0, 3.0])
def test_prm_step_rewards_sum_to_coef_beta_times_the_trajectory_log_ratio(coef: float) -> None:
    model, episodes = prm(beta=0.1, coef=coef), first_action_episodes(64)
    for _ in range(5):
        model.update(episodes)
    for episode, rewards in zip(episodes, model.step_rewards(episodes), strict=True):
        with torch.no_grad():
            log_pi = torch.log_softmax(model.network(episode.obs), -1).gather(1, episode.actions[:, None]).sum()
            log_ref = torch.log_softmax(model.reference(episode.obs), -1).gather(1, episode.actions[:, None]).sum()
        assert float(rewards.sum()) == pytest.approx(coef * 0.1 * float(log_pi - log_ref), abs=1e-5)


@pytest.mark.parametrize("loss", ["ce", "dpo"])
def test_prm_learns_which_action_wins_from_outcomes_only(loss: str) -> None:
    model, episodes = prm(loss=loss, beta=0.5, learning_rate=3e-3), first_action_episodes(256)
    before = float(model.loss(episodes).detach())
    for _ in range(30):
        model.update(episodes[:64])
    assert float(model.loss(episodes).detach()) < before
    assert first_step_rewards(model, 1) > first_step_rewards(model, 0) + 0.05


@pytest.mark.parametrize("score", ["sum", "mean"])
def test_prm_dpo_scores_each_trajectory_by_its_summed_or_mean_log_ratio(score: str) -> None:
    model, episodes = prm(loss="dpo", score=score, beta=0.5), first_action_episodes(32)
    model.update(episodes)  # a log-ratio away from 0, so sum and mean differ
    beta_sums = [float(r.sum()) for r in model.step_rewards(episodes)]  # β Σ log π_φ/π_ref, with coef 1
    scores = torch.tensor([s / 0.5 / (len(e) if score == "mean" else 1) for s, e in zip(beta_sums, episodes,
                                                                                       strict=True)])
    success = torch.tensor([e.success for e in episodes])
    chosen, rejected = success_failure_pairs(success, torch.zeros(len(episodes)))
    expected = trajectory_dpo_loss(scores[chosen], scores[rejected], beta=0.5)
    assert float(model.loss(episodes).detach()) == pytest.approx(float(expected), abs=1e-5)


def test_prm_state_round_trip_and_validation() -> None:
    episodes = first_action_episodes(32)
    trained = prm()
    trained.update(episodes)
    copy = prm()
    copy.load_state_dict(trained.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(trained.step_rewards(episodes), copy.step_rewards(episodes),
                                                  strict=True))
    with pytest.raises(ValueError, match="loss must be one of"):
        prm(loss="kto")
    with pytest.raises(ValueError, match="beta"):
        prm(beta=0.0)


def test_shared_losses_and_pairs() -> None:
    success = torch.tensor([1, 0, 1, 0, 1])
    groups = torch.tensor([0, 0, 1, 1, 2])
    chosen, rejected = success_failure_pairs(success, groups)
    assert sorted(zip(chosen.tolist(), rejected.tolist(), strict=True)) == [(0, 1), (2, 3)]
    zeros = torch.zeros(3)
    assert float(trajectory_dpo_loss(zeros, zeros, beta=0.05)) == pytest.approx(math.log(2))
    assert float(outcome_ce_loss(zeros, torch.tensor([1, 0, 1]), beta=0.05)) == pytest.approx(math.log(2))
    # a PRM that already ranks the success above the failure has a lower DPO loss
    assert float(trajectory_dpo_loss(torch.ones(1), -torch.ones(1), beta=1.0)) < math.log(2)


# -- the plumbing PPO uses --------------------------------------------------------------------------------------------
def test_assembler_cuts_episodes_across_rollouts_and_copies_its_buffers() -> None:
    assembler = EpisodeAssembler(num_envs=2)
    obs = torch.arange(8, dtype=torch.float32).reshape(4, 2, 1)  # (T, N, 1): value = 2t + n
    actions = torch.zeros(4, 2, dtype=torch.long)
    valid = torch.ones(4, 2, dtype=torch.bool)
    terminated = torch.zeros(4, 2, dtype=torch.bool)
    truncated = torch.zeros(4, 2, dtype=torch.bool)
    success = torch.zeros(4, 2, dtype=torch.bool)
    terminated[1, 0] = success[1, 0] = True  # env 0: an episode of steps 0-1 that succeeds
    finished = assembler.add_rollout(obs, actions, valid, terminated, truncated, success)
    assert [e.obs.squeeze(1).tolist() for e in finished] == [[0.0, 2.0]] and finished[0].outcome == 1.0
    obs += 100  # the trainer overwrites its buffers in place; pending steps must not change
    terminated[:] = False
    success[:] = False
    truncated[0, 1] = True  # env 1: steps 0-3 of rollout 1 plus step 0 of rollout 2, cut by the time limit
    finished = assembler.add_rollout(obs, actions, valid, terminated, truncated, success)
    assert [e.obs.squeeze(1).tolist() for e in finished] == [[1.0, 3.0, 5.0, 7.0, 101.0]]
    assert finished[0].outcome == 0.0 and not finished[0].success


def _single_env_rollout(length: int) -> tuple[torch.Tensor, ...]:
    """(obs, actions, valid, terminated, truncated, success) of one env over `length` steps, obs[t] = t."""
    obs = torch.arange(length, dtype=torch.float32).reshape(length, 1, 1)
    flags = [torch.zeros(length, 1, dtype=torch.bool) for _ in range(4)]
    return obs, torch.zeros(length, 1, dtype=torch.long), torch.ones(length, 1, dtype=torch.bool), *flags[1:]


def test_assembler_starts_each_episode_after_the_last_one_ended_and_labels_failures_0() -> None:
    assembler = EpisodeAssembler(num_envs=1)
    obs, actions, valid, terminated, truncated, success = _single_env_rollout(6)
    terminated[1] = success[1] = True  # steps 0-1: a success
    terminated[3] = True  # steps 2-3: ends (a dead end, say) without success
    truncated[5] = True  # steps 4-5: the time limit
    finished = assembler.add_rollout(obs, actions, valid, terminated, truncated, success)
    assert [e.obs.squeeze(1).tolist() for e in finished] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert [(e.success, e.outcome) for e in finished] == [(True, 1.0), (False, 0.0), (False, 0.0)]
    # nothing was left pending: the next rollout's first episode starts at its own step 0
    obs, actions, valid, terminated, truncated, success = _single_env_rollout(2)
    terminated[1] = True
    assert [e.obs.squeeze(1).tolist() for e in assembler.add_rollout(obs, actions, valid, terminated, truncated,
                                                                      success)] == [[0.0, 1.0]]


def test_assembler_without_truncated_episodes_still_keeps_truncated_successes() -> None:
    assembler = EpisodeAssembler(num_envs=1, keep_truncated=False)
    obs, actions, valid, terminated, truncated, success = _single_env_rollout(5)
    truncated[1] = success[1] = True  # a success on the time limit's last step: a positive label to keep
    truncated[3] = True  # a failure cut by the time limit: dropped
    terminated[4] = True  # step 4 alone, after the dropped one
    finished = assembler.add_rollout(obs, actions, valid, terminated, truncated, success)
    assert [(e.obs.squeeze(1).tolist(), e.outcome) for e in finished] == [([0.0, 1.0], 1.0), ([4.0], 0.0)]


def test_replay_buffer_keeps_the_most_recent_and_trains_on_the_new_amount() -> None:
    buffer = ReplayBuffer(capacity=5)
    buffer.add(list(range(1, 9)))
    assert buffer.episodes == [4, 5, 6, 7, 8]
    seen: list[list[int]] = []
    buffer.train([[1]] * 6, batch_size=4, epochs=2, generator=torch.Generator().manual_seed(0),
                 step=lambda batch: seen.append(batch) or 0.0)
    assert len(seen) == 4 and all(len(batch) == 4 for batch in seen)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)


def _spa_estimator_fit_example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "spa_estimator_fit.py"
    spec = importlib.util.spec_from_file_location("spa_estimator_fit", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_spa_estimator_fit_example_ranks_moves_by_the_solvers_regret() -> None:
    from creditgym.envs.sokoban.level import Level
    from creditgym.wrappers.potentials import one_hot

    example = _spa_estimator_fit_example()
    # Four moves solve it (left, up, then two pushes right). Up pushes the box against the top wall, away from
    # the target's row: a dead-lock. Down is a wall.
    level = Level.from_rows(["#######", "#     #", "#  $ .#", "#  @  #", "#######"])
    outcomes = example.move_outcomes(one_hot(level.tiles))
    regrets = outcomes.regrets
    up, down, left, right = 0, 1, 2, 3
    assert np.isinf(regrets[0, up]) and np.isnan(regrets[0, down])
    assert regrets[0, left] == 0 and regrets[0, right] == 2
    assert outcomes.box_scores[0, up] == -3 and outcomes.box_scores[0, left] == outcomes.box_scores[0, right] == -2
    assert outcomes.pushes[0].tolist() == [True, False, False, False]
    by_move = example.mean_score_by_move(np.array([[5.0, 0.0, 1.0, 2.0]]), outcomes)
    assert by_move == {"optimal_walk": 1.0, "wasteful_walk": 2.0, "optimal_push": None, "wasteful_live_push": None,
                       "dead_locking_push": 5.0}

    favours_left = example.regret_ranking(np.array([[0.0, 0.0, 1.0, 0.0]]), regrets)
    assert favours_left == {"states": 1, "greedy_optimal": 1.0, "chance_optimal": round(1 / 3, 4),
                            "optimal_over_wasteful_auc": 1.0, "live_over_dead_lock_auc": 0.75}
    favours_up = example.regret_ranking(np.array([[1.0, 0.0, 0.0, 0.0]]), regrets)
    assert favours_up["greedy_optimal"] == 0 and favours_up["live_over_dead_lock_auc"] == 0
    indifferent = example.regret_ranking(np.zeros((1, 4)), regrets)
    assert indifferent["greedy_optimal"] == round(1 / 3, 4) and indifferent["optimal_over_wasteful_auc"] == 0.5


def test_spa_estimator_fit_example_reports_both_heads_on_held_out_random_play() -> None:
    example = _spa_estimator_fit_example()
    result = example.main(["--num-envs", "32", "--rollouts", "20", "--epochs", "2", "--hidden", "16",
                           "--regret-states", "2000"])
    episodes = result["episodes"]
    assert episodes["train"] > episodes["held_out"] > 0 and 0 < episodes["solved"] < 1
    for head in ("per-action", "action-input"):
        report = result["heads"][head]
        assert [row["epoch"] for row in report["epochs"]] == [1, 2]
        assert all(row["held_out_explained_variance"] <= 1 for row in report["epochs"])
        assert set(report["credit_on_held_out"]) == {"solving_move", "other_moves_of_solved", "moves_of_failed"}
        assert report["regret_ranking"]["states"] > 0 and set(report["mean_score_by_move"]) == {
            "optimal_walk", "wasteful_walk", "optimal_push", "wasteful_live_push", "dead_locking_push"}
    # Pushing boxes towards targets is mostly good play, so box distance ranks moves better than chance.
    assert result["box_distance"]["regret_ranking"]["optimal_over_wasteful_auc"] > 0.5


def test_spa_estimator_fit_example_scores_the_estimators_of_ppo_checkpoints(tmp_path) -> None:
    from creditgym.agents.ppo import PPO, PPOConfig

    torch.set_num_threads(1)
    example = _spa_estimator_fit_example()
    PPO(PPOConfig(env_id="creditgym/Sokoban-6x6-2b-v0", num_envs=8, num_steps=16, total_steps=256,
                  env_kwargs={"obs_mode": "egocentric", "action_mask": True, "rewards": "outcome"},
                  learned_reward="spa", hidden=16, checkpoint_every=1, keep_checkpoints=True, progress=False,
                  tensorboard=False, runs_dir=str(tmp_path), run_name="spa")).learn()
    run = tmp_path / "spa"
    plot = tmp_path / "ranking.png"
    result = example.main(["--num-envs", "16", "--rollouts", "10", "--regret-states", "500", "--heads",
                           "--policy-states", "64", "--checkpoints", str(run), str(run / "checkpoint-128.pt"),
                           "--plot", str(plot)])
    assert [row["env_steps"] for row in result["checkpoints"]] == [128, 256]
    for row in result["checkpoints"]:
        assert row["gamma"] == 0.99 and row["regret_ranking"]["states"] > 0
        assert row["on_policy_states"]["regret_ranking"]["states"] > 0
    assert plot.stat().st_size > 10_000
    PPO(PPOConfig(env_id="creditgym/Sokoban-6x6-2b-v0", num_envs=8, num_steps=16, total_steps=128,
                  env_kwargs={"obs_mode": "egocentric", "action_mask": True}, hidden=16, checkpoint_every=0,
                  progress=False, tensorboard=False, runs_dir=str(tmp_path), run_name="sparse")).learn()
    with pytest.raises(SystemExit, match="learned_reward is None"):
        example.checkpoint_estimator(str(tmp_path / "sparse"), (7, 7, 7))
    with pytest.raises(SystemExit, match=r"shape \(7, 7, 7\), not \(7, 6, 6\)"):
        example.checkpoint_estimator(str(run), (7, 6, 6))
