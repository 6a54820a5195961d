"""PPO's trajectory records: what --record-envs writes, that it sums to what PPO trained on, rescore reproduces live
shaping on it, a resume neither doubles nor loses records, and eval --record."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import creditgym
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.cli import main
from creditgym.envs.sokoban.boxoban import write_boxoban
from creditgym.envs.sokoban.level import Level
from creditgym.trajectories import RUN_TRAJECTORIES, Episode, load_trajectories
from tests.recording import crash_mid_write

SOKOBAN = "creditgym/Sokoban-6x6-1b-v0"
# One push from solved, so random play both solves it (terminated) and runs out of steps (truncated).
EASY = ["######",
        "#    #",
        "# @$.#",
        "#    #",
        "#    #",
        "######"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def easy_levels(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("levels") / "easy.txt"
    write_boxoban(path, [Level.from_rows(EASY)])
    return str(path)


def _config(runs: Path, **overrides: Any) -> PPOConfig:
    values = dict(env_id=SOKOBAN, num_envs=8, num_steps=16, total_steps=768, hidden=32, progress=False,
                  tensorboard=False, runs_dir=str(runs), run_name="run", checkpoint_every=0)
    return PPOConfig(**{**values, **overrides})


class WatchedPPO(PPO):
    """PPO that keeps each update's rewards as it trained on them (the env's, shaping and learned reward included)."""

    def __init__(self, config: PPOConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.paid: list[torch.Tensor] = []

    def _add_learned_rewards(self, obs: torch.Tensor, masks: torch.Tensor | None, actions: torch.Tensor,
                             rewards: torch.Tensor, *rest: torch.Tensor) -> Any:
        out = super()._add_learned_rewards(obs, masks, actions, rewards, *rest)
        self.paid.append(rewards.clone())
        return out


def _by_env(records: list[Episode], env: int) -> list[Episode]:
    return [r for r in records if r.metadata["env_index"] == env]


def _check_rewards(trainer: WatchedPPO, records: list[Episode]) -> None:
    """Each recorded env's episodes, end to end, hold every step it took, with the reward PPO trained on."""
    for env in range(trainer.config.record_envs):
        recorded = [step.reward for episode in _by_env(records, env) for step in episode.steps]
        paid = torch.cat([rewards[:, env] for rewards in trainer.paid])[:len(recorded)].double()
        assert recorded and recorded == pytest.approx(paid.tolist(), abs=1e-5)


@pytest.fixture(scope="module")
def shaped_run(tmp_path_factory: pytest.TempPathFactory, easy_levels: str) -> tuple[WatchedPPO, Path]:
    """Egocentric views with action masks, live PBRS and the PRIME implicit PRM, 3 of 8 envs recorded."""
    runs = tmp_path_factory.mktemp("runs")
    config = _config(runs, record_envs=3, shaping="solver_distance_tight", shaping_scale=0.5, gamma=0.9,
                     shaping_gamma=1.0, learned_reward="prime",
                     env_kwargs={"levels": easy_levels, "max_episode_steps": 12, "obs_mode": "egocentric",
                                 "action_mask": True})
    trainer = WatchedPPO(config)
    trainer.learn()
    return trainer, runs / "run" / RUN_TRAJECTORIES


def test_records_hold_each_recorded_envs_episodes_with_rewards_masks_and_boards(shaped_run) -> None:
    trainer, path = shaped_run
    records = load_trajectories(path)
    assert {r.metadata["env_index"] for r in records} == {0, 1, 2}
    updates = [r.metadata["update"] for r in records]
    assert updates == sorted(updates) and 1 <= updates[0] and updates[-1] <= trainer.update == 6
    assert {(r.env_id, r.seed, r.version) for r in records} == {(SOKOBAN, 1, creditgym.__version__)}
    assert any(r.steps[-1].terminated for r in records) and any(r.steps[-1].truncated for r in records)
    for record in records:
        assert record.observation.shape == (7, 7, 7) and record.observation.dtype == np.uint8
        assert "action_mask" in record.info and record.state["num_boxes"] == 1
        assert [s.terminated or s.truncated for s in record.steps] == [False] * (len(record.steps) - 1) + [True]
        assert len(record.steps) == 12 or record.steps[-1].terminated
        for step in record.steps:
            assert set(step.reward_components) == {"task", "format", "shaping", "implicit_prm"}
            assert isinstance(step.action, int) and step.info["success"] == step.terminated
            assert step.state["board"] and step.observation.shape == (7, 7, 7)
        assert all(s.info["action_mask"].dtype == bool for s in record.steps[:-1])
        assert "action_mask" not in record.steps[-1].info  # an ended episode's mask would be the next one's
        last = record.steps[-1]
        # The last observation is the episode's own (info["final_obs"]), not the next episode's first.
        assert (last.state["boxes_on_target"] == 1) == last.terminated
    assert any(s.reward_components["implicit_prm"] != 0 for r in records for s in r.steps)
    _check_rewards(trainer, records)


def test_rescore_on_a_ppo_recording_reproduces_the_live_shaping(shaped_run) -> None:
    trainer, path = shaped_run
    out = path.with_name("rescored.jsonl")
    cfg = trainer.config
    assert main(["rescore", str(path), "--potential", cfg.shaping, "--gamma", str(cfg.potential_gamma),
                 "--scale", str(cfg.shaping_scale), "--channel", "offline", "--out", str(out)]) == 0
    episodes = load_trajectories(out)
    live = [s.reward_components["shaping"] for e in episodes for s in e.steps]
    offline = [s.reward_components["offline"] for e in episodes for s in e.steps]
    assert offline == pytest.approx(live, abs=1e-6) and len(set(live)) > 2


def test_gymnasium_vector_envs_are_recorded_too(tmp_path: Path) -> None:
    # The bandit runs in a SyncVectorEnv: every step ends an episode, whose last observation is all zeros.
    trainer = WatchedPPO(_config(tmp_path, env_id="creditgym/Sanity-Bandit-v0", num_envs=4, num_steps=8,
                                 total_steps=64, record_envs=2))
    trainer.learn()
    records = load_trajectories(tmp_path / "run" / RUN_TRAJECTORIES)
    assert len(records) == 2 * 64 // 4
    assert [r.metadata for r in records[:4]] == [{"env_index": 0, "update": 1}, {"env_index": 1, "update": 1}] * 2
    for record in records:
        (step,) = record.steps
        assert record.state is None and record.observation.sum() == 1 and step.terminated
        assert not step.observation.any() and step.info["success"] == (step.reward_components == {"task": 1.0})
        assert step.info["success"] == (record.observation.argmax() == step.action)
    _check_rewards(trainer, records)


def test_recording_changes_nothing_that_is_learned(tmp_path: Path, easy_levels: str) -> None:
    kwargs = {"levels": easy_levels, "max_episode_steps": 12}
    plain = PPO(_config(tmp_path, run_name="plain", total_steps=256, env_kwargs=kwargs))
    plain.learn()
    recorded = PPO(_config(tmp_path, run_name="recorded", total_steps=256, env_kwargs=kwargs, record_envs=8))
    recorded.learn()
    assert load_trajectories(tmp_path / "recorded" / RUN_TRAJECTORIES)
    assert not (tmp_path / "plain" / RUN_TRAJECTORIES).exists()
    for a, b in zip(plain.agent.parameters(), recorded.agent.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("legacy", [False, True], ids=["gz", "legacy-plain"])
def test_a_resumed_run_neither_doubles_nor_loses_records(tmp_path: Path, easy_levels: str, legacy: bool) -> None:
    # Episodes still running at a checkpoint travel in it, so the resumed run finishes them as the first run would.
    settings = dict(record_envs=2, env_kwargs={"levels": easy_levels, "max_episode_steps": 40})
    PPO(_config(tmp_path / "a", **settings)).learn()
    expected = [r.to_dict() for r in load_trajectories(tmp_path / "a" / "run" / RUN_TRAJECTORIES)]
    first = PPO(_config(tmp_path / "b", checkpoint_every=2, keep_checkpoints=True, **settings))
    first.learn(until_steps=256)
    first.learn()  # the same trainer continues: nothing is trimmed or repeated
    run = tmp_path / "b" / "run"
    path = run / RUN_TRAJECTORIES
    assert [r.to_dict() for r in load_trajectories(path)] == expected
    assert first.recorder.state_dict()["episodes"][0]["steps"]  # an episode was in progress at the end
    # A crash mid-write after the last checkpoint; with `legacy`, in a run recorded before compression.
    path = crash_mid_write(run, expected[-1], legacy=legacy)
    resumed = PPO(_config(tmp_path / "b", **settings), resume=run / "checkpoint-256.pt")
    assert resumed.update == 2 and any(e.steps for e in resumed.recorder.episodes)
    resumed.learn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the resume cut the damaged end away before appending
        assert [r.to_dict() for r in load_trajectories(path)] == expected and max(
            r["metadata"]["update"] for r in expected) > 2
    assert (run / RUN_TRAJECTORIES).exists() != legacy


def test_eval_records_the_played_episodes_from_the_command_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    train = ["train", "--total-steps", "256", "--num-envs", "8", "--num-steps", "16", "--hidden", "16",
             "--no-progress", "--no-tensorboard", "--runs-dir", str(tmp_path), "--record-envs", "2"]
    assert main([*train, "--run-name", "sokoban", "--env-kwargs", '{"max_episode_steps": 10}']) == 0
    assert all(r.metadata["env_index"] < 2 for r in load_trajectories(tmp_path / "sokoban" / RUN_TRAJECTORIES))
    played = tmp_path / "played.jsonl"
    played.write_text("an earlier file, replaced\n")
    assert main(["eval", str(tmp_path / "sokoban"), "--episodes", "3", "--sample", "--record", str(played)]) == 0
    records = load_trajectories(played)
    assert [r.metadata for r in records] == [{"episode": i, "level_index": i} for i in range(3)]
    result = json.loads((tmp_path / "sokoban" / "eval-sampled.json").read_text())
    assert result["recorded"] == str(played) and result["episodes"] == 3
    assert result["mean_steps"] == pytest.approx(np.mean([len(r.steps) for r in records]))
    assert result["mean_return"] == pytest.approx(np.mean([r.total_reward for r in records]), abs=1e-5)
    assert all(r.steps[-1].state["board"] and r.seed == 0 for r in records)
    assert main(["rescore", str(played), "--potential", "box_distance", "--estimator", "gae"]) == 0

    # Envs without a batched env are played one at a time, each record with its reset seed; .gz compresses.
    assert main([*train, "--run-name", "bandit", "--env", "creditgym/Sanity-Bandit-v0"]) == 0
    played = tmp_path / "played.jsonl.gz"
    assert main(["eval", str(tmp_path / "bandit"), "--episodes", "4", "--seed", "5", "--record", str(played)]) == 0
    assert gzip.decompress(played.read_bytes()).count(b"\n") == 4
    records = load_trajectories(played)
    assert [(r.seed, r.metadata["episode"]) for r in records] == [(5 + i, i) for i in range(4)]
    success = json.loads((tmp_path / "bandit" / "eval.json").read_text())["success_rate"]
    assert success == np.mean([r.success for r in records])
    # An evaluation that fails (here on its arguments) leaves an earlier recording as it was.
    before = played.read_bytes()
    assert main(["eval", str(tmp_path / "bandit"), "--levels", "x.txt", "--record", str(played)]) == 2
    assert played.read_bytes() == before and not list(tmp_path.glob("*.tmp*"))
    # A path that is not a trajectory file, or is the run's own log, is refused before anything is played.
    checkpoint = tmp_path / "bandit" / "checkpoint.pt"
    kept = checkpoint.read_bytes()
    for target, says in ((checkpoint, "ending in .jsonl"), (tmp_path / "bandit" / "metrics.jsonl", "own metrics")):
        assert main(["eval", str(tmp_path / "bandit"), "--record", str(target)]) == 2
        assert says in capsys.readouterr().out
    assert checkpoint.read_bytes() == kept


def test_a_resume_must_record_the_envs_the_checkpoint_recorded(tmp_path: Path) -> None:
    PPO(_config(tmp_path, total_steps=256, record_envs=2)).learn()
    with pytest.raises(ValueError, match="made with record_envs=2, this config has 3"):
        PPO(_config(tmp_path, total_steps=512, record_envs=3), resume=tmp_path / "run")


@pytest.mark.parametrize("obs_mode", ["array", "egocentric"])
def test_board_states_read_off_observations_match_the_env(obs_mode: str) -> None:
    import gymnasium as gym

    from creditgym.trajectories import offline_potential, sokoban_states
    from creditgym.wrappers.potentials import box_distance

    env = gym.make("creditgym/Sokoban-8x8-2b-v0", obs_mode=obs_mode)
    rng = np.random.default_rng(0)
    observations, states = [], []
    for seed in range(10):
        env.reset(seed=seed)
        for _ in range(15):
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
            observations.append(obs)
            states.append({k: v for k, v in env.unwrapped.state().items() if k != "deadlock"})
            if terminated or truncated:
                break
    read = sokoban_states(np.stack(observations), walled=obs_mode == "egocentric")
    if obs_mode == "array":
        assert read == states
    else:  # the window around the player, walled in: one shape for every board, as the solver caches by shape
        assert {len(s["board"]) for s in read} == {13}  # 8x8: a radius-5 window and the wall ring
        potential = offline_potential("box_distance")
        live = box_distance(torch.as_tensor(np.stack(observations))).tolist()
        assert [potential(None, s) for s in read] == live
        assert [(s["boxes_on_target"], s["num_boxes"]) for s in read] == [
            (s["boxes_on_target"], s["num_boxes"]) for s in states]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"record_envs": -1}, "use 0 (record nothing) to num_envs (8), got -1"),
    ({"record_envs": 9}, "use 0 (record nothing) to num_envs (8), got 9"),
    ({"record_envs": 2.5}, "record_envs must be a whole number, got 2.5"),
])
def test_bad_record_envs_say_what_to_change(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config(tmp_path, **overrides)


def test_the_flags_say_which_trainer_records_how(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--record-envs" in capsys.readouterr().out
    assert main(["train", "--record-trajectories", "--runs-dir", str(tmp_path)]) == 2
    assert "PPO records the episodes of its first N envs with --record-envs N" in capsys.readouterr().out.replace(
        "\n", "")
    assert main(["train", "--algo", "grpo", "--record-envs", "2", "--runs-dir", str(tmp_path)]) == 2
    assert "--record-envs only applies to --algo ppo" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
