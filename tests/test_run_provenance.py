"""What produced an output is recorded with it: the demo's summary.json and compare's comparison.json name the
creditgym (and torch) version and the precision the runs used; re-scored records say how they were re-scored."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import creditgym
import creditgym.demo as demo
from creditgym.agents.ppo import PPO, PPOConfig, resolve_precision
from creditgym.cli import main
from creditgym.render import render_file
from creditgym.trajectories import (
    add_shaping,
    load_trajectories,
    record_episodes,
    rescore_file,
    with_advantages,
)

SOKOBAN = "creditgym/Sokoban-6x6-1b-v0"
VERSION = creditgym.__version__


class _InProcess(ThreadPoolExecutor):
    """The demo's process pool, in threads: two tiny runs finish in seconds instead of two interpreters' start-up."""

    def __init__(self, max_workers: int | None = None, mp_context: object = None) -> None:
        super().__init__(max_workers=max_workers)


def test_the_demo_summary_names_the_versions_and_the_precision_each_run_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = demo.demo_config
    monkeypatch.setattr(demo, "ProcessPoolExecutor", _InProcess)
    monkeypatch.setattr(demo, "demo_config", lambda total_steps, seed, runs_dir: replace(
        tiny(8192, seed, runs_dir), num_envs=8, total_steps=total_steps))
    demo.run_demo(total_steps=128, seed=2, runs_dir=str(tmp_path), eval_episodes=1)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["creditgym"] == VERSION and summary["torch"] == torch.__version__
    assert set(summary["runs"]) == set(demo.VARIANTS)
    for record in summary["runs"].values():
        run = json.loads((Path(record["run_dir"]) / "config.json").read_text())
        assert run["config"]["precision"] == "auto"  # the summary has what auto became, as the run's record does
        assert record["precision"] == run["precision"] == resolve_precision("auto", torch.device(run["device"]))
        assert record["device"] == run["device"]


def test_comparison_json_names_the_creditgym_version(tmp_path: Path) -> None:
    PPO(PPOConfig(env_id=SOKOBAN, num_envs=8, num_steps=16, total_steps=256, seed=1, progress=False,
                  tensorboard=False, runs_dir=str(tmp_path / "runs"), run_name="r", checkpoint_every=0)).learn()
    assert main(["compare", str(tmp_path / "runs" / "r"), "--out-dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "comparison.json").read_text())["creditgym"] == VERSION


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four random Sokoban episodes with their boards, two per level, with metadata of their own."""
    path = tmp_path_factory.mktemp("records") / "played.jsonl.gz"
    env = gym.make(SOKOBAN, max_episode_steps=6)
    record_episodes(env, lambda obs, info: env.action_space.sample(), 4, seed=5, group_size=2, path=path,
                    metadata={"policy": "random"})
    return path


SHAPED = {"potential": "box_distance", "gamma": 0.9, "scale": 2.0, "channel": "pbrs", "replace": False,
          "creditgym": VERSION}


def test_rescore_records_how_each_episode_was_rescored_and_appends_when_rescored_again(
        recorded: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "once.jsonl.gz", tmp_path / "twice.jsonl"
    assert main(["rescore", str(recorded), "--potential", "box_distance", "--gamma", "0.9", "--scale", "2",
                 "--channel", "pbrs", "--estimator", "gae", "--lam", "0.8", "--out", str(first),
                 "--no-progress"]) == 0
    once = load_trajectories(first)
    assert len(once) == 4
    for episode in once:
        assert episode.metadata == {"policy": "random", "rescored": [
            SHAPED, {"estimator": "gae", "gamma": 0.9, "lam": 0.8, "creditgym": VERSION}]}
    # The re-scored file reads back, re-scores again (its history kept, the new entry last) and renders.
    assert main(["rescore", str(first), "--estimator", "rloo", "--gamma", "0.5", "--out", str(second),
                 "--no-progress"]) == 0
    twice = load_trajectories(second)
    for before, after in zip(once, twice, strict=True):
        assert after.metadata["rescored"] == [*before.metadata["rescored"],
                                              {"estimator": "rloo", "gamma": 0.5, "creditgym": VERSION}]
        assert [s.reward_components for s in after.steps] == [s.reward_components for s in before.steps]
    rendered = render_file(second, tmp_path / "render", episodes=4)
    assert len(rendered) == 4 and all(item.animation is not None for item in rendered)
    assert "pbrs" in rendered[0].transcript.read_text()


def test_the_python_api_records_the_same_as_rescore_file(recorded: Path, tmp_path: Path) -> None:
    episodes = load_trajectories(recorded)
    by_name = with_advantages([add_shaping(e, "box_distance", 0.9, channel="pbrs", scale=2.0) for e in episodes],
                              "grpo", gamma=0.9, lam=0.8)
    assert by_name[0].metadata["rescored"] == [SHAPED, {"estimator": "grpo", "gamma": 0.9, "creditgym": VERSION}]
    out = tmp_path / "out.jsonl"
    rescore_file(recorded, out, potential="box_distance", estimator="grpo", gamma=0.9, lam=0.8, scale=2.0,
                 channel="pbrs")
    assert [e.to_dict() for e in load_trajectories(out)] == [e.to_dict() for e in by_name]
    # A function is named by where it lives; an unrelated value already under "rescored" is kept, not lost.
    own = replace(episodes[0], metadata={"rescored": "by hand"})
    shaped = add_shaping(own, _phi, 1.0)
    assert shaped.metadata["rescored"] == ["by hand", {**SHAPED, "potential": f"{__name__}:_phi", "gamma": 1.0,
                                                       "scale": 1.0, "channel": "shaping"}]
    assert episodes[0].metadata == {"policy": "random"}  # the input episodes are left as they were


def _phi(observation: object, state: dict | None) -> float:
    return 0.0
