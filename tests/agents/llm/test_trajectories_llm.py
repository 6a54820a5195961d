"""LLM rollouts as trajectory records: the converter, the trainer's trajectories.jsonl.gz, resume, and rescore on
it."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from creditgym.agents.llm import LLMTrainConfig, LLMTrainer
from creditgym.agents.llm.rollout import RolloutCollector
from creditgym.cli import main
from creditgym.envs.sokoban.text import ACTION_NAMES
from creditgym.llm import tiny_test_model
from creditgym.trajectories import (
    LEGACY_RUN_TRAJECTORIES,
    RUN_TRAJECTORIES,
    TrajectoryWriter,
    llm_episode_records,
    load_trajectories,
)
from creditgym.wrappers.shaping import PotentialShaping
from tests.recording import crash_mid_write

from .helpers import LetterCountEnv, make_trainer

SOKOBAN = "creditgym/Sokoban-6x6-1b-v0"
MOVES = list(ACTION_NAMES.values())


class StatefulLetterCount(LetterCountEnv):
    """LetterCountEnv with a `state()` that counts its calls, to see when the collector reads it."""

    calls = 0

    def state(self) -> dict[str, Any]:
        StatefulLetterCount.calls += 1
        return {"t": self._t}


class AnyTextMoves(gym.ActionWrapper):
    """Turns every reply into a Sokoban move (every fifth passes unchanged, mostly invalid), so the random tiny
    model pushes boxes and the potential changes."""

    def action(self, action: Any) -> str:
        text = str(action)
        code = sum(map(ord, text))
        return text if code % 5 == 0 else MOVES[code % 4]


def _shaped_sokoban() -> gym.Env:
    return PotentialShaping(AnyTextMoves(gym.make(SOKOBAN, obs_mode="text")), "box_distance", 0.99)


@pytest.fixture(scope="module")
def sokoban_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recorded GRPO run on Sokoban's text view with live PBRS: 2 groups x 2 rollouts, 3 turns."""
    runs = tmp_path_factory.mktemp("runs")
    model, tokenizer = tiny_test_model(seed=0)
    config = LLMTrainConfig(model="tiny", env_id=SOKOBAN, iterations=1, num_groups=2, group_size=2, max_turns=3,
                            max_new_tokens=4, runs_dir=str(runs), run_name="pbrs", progress=False,
                            tensorboard=False, checkpoint_every=0, device="cpu", record_trajectories=True)
    LLMTrainer(config, model=model, tokenizer=tokenizer, make_env=_shaped_sokoban).learn()
    return runs / "pbrs" / RUN_TRAJECTORIES


def test_records_round_trip_the_rollouts_tokens_text_and_rewards(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    envs = [StatefulLetterCount(turns=3) for _ in range(4)]
    # history_turns=1: the second turn extends the first segment, the third starts a new one.
    collector = RolloutCollector(envs, trainer.policy, group_size=2, max_turns=3, history_turns=1,
                                 max_prompt_tokens=2048, record=True)
    episodes = collector.collect([7, 8], generator=torch.Generator().manual_seed(0))
    assert any(len(ep.segments) > 1 for ep in episodes) and any(len(s.turn_ends) > 1 for s in episodes[0].segments)
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as writer:
        for record in llm_episode_records(episodes, "letters-v0", metadata={"iteration": 3}):
            writer.write(record)
    records = load_trajectories(path)
    assert len(records) == len(episodes)
    for episode, record in zip(episodes, records, strict=True):
        assert (record.env_id, record.seed, record.metadata) == ("letters-v0", episode.seed,
                                                                 {"group": episode.group, "iteration": 3})
        assert record.observation == episode.turns[0].observation == "turn 0"
        assert record.info["instructions"] == "write letters" and record.state == {"t": 0}
        generated = [(tok, lp) for seg in episode.segments
                     for tok, lp, mask in zip(seg.token_ids, seg.logprobs, seg.action_mask, strict=True) if mask]
        assert [(tok, lp) for step in record.steps for tok, lp in zip(step.response_ids, step.logprobs,
                                                                      strict=True)] == generated
        ends = [(seg, end) for seg in episode.segments for end in seg.turn_ends]
        for t, (step, turn, (seg, end)) in enumerate(zip(record.steps, episode.turns, ends, strict=True)):
            assert step.prompt_ids + step.response_ids == seg.token_ids[:end + 1]
            assert seg.action_mask[len(step.prompt_ids) - 1] is False  # the prompt ends where the reply starts
            assert step.action == turn.action and step.reward == pytest.approx(turn.reward)
            assert step.reward_components == turn.reward_components
            assert step.observation == f"turn {t + 1} of 3" and step.state == {"t": t + 1}
            assert step.info["success"] == turn.info["success"] and "reward_components" not in step.info
        assert [s.terminated for s in record.steps] == [False, False, True]
        assert record.success == episode.success and record.total_reward == pytest.approx(episode.total_reward)

    # Without recording the collector never calls state(), and the records still hold the tokens and text.
    StatefulLetterCount.calls = 0
    collector.record = False
    plain = collector.collect([7, 8], generator=torch.Generator().manual_seed(0))
    assert StatefulLetterCount.calls == 0 and all(t.info is None and t.state is None for t in plain[0].turns)
    record = llm_episode_records(plain, "letters-v0")[0]
    assert record.state is None and record.steps[-1].state is None
    assert record.steps[0].info == {"invalid_action": False} and "success" in record.steps[-1].info
    assert [s.response_ids for s in record.steps] == [s.response_ids for s in records[0].steps]  # same sampling


def test_the_trainer_writes_one_record_per_episode_per_iteration(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    trainer = make_trainer(tmp_path, iterations=2, record_trajectories=True)
    trainer.learn()
    path = tmp_path / "run" / RUN_TRAJECTORIES
    records = load_trajectories(path)
    cfg = trainer.config
    assert [r.metadata["iteration"] for r in records] == [1] * 8 + [2] * 8
    assert [r.seed for r in records] == [cfg.seed * 1_000_003 + i * 2 + g for i in range(2) for g in (0, 0, 0, 0, 1,
                                                                                                      1, 1, 1)]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["charts/episodic_return"] == pytest.approx(sum(r.total_reward for r in records[:8]) / 8)
    # --overwrite starts the file again (and drops a plain one from before recordings were compressed); a run that
    # does not record leaves none behind.
    (tmp_path / "run" / LEGACY_RUN_TRAJECTORIES).write_text("an older run's records\n")
    make_trainer(tmp_path, iterations=1, record_trajectories=True, overwrite=True).learn()
    assert len(load_trajectories(path)) == 8 and not (tmp_path / "run" / LEGACY_RUN_TRAJECTORIES).exists()
    make_trainer(tmp_path, iterations=1, overwrite=True).learn()
    assert not path.exists()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--record-trajectories" in capsys.readouterr().out


def test_records_hold_the_learned_rewards_the_trainer_paid(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, iterations=1, record_trajectories=True, learned_reward="spa", advantage="turn")
    metrics = trainer.learn()
    records = load_trajectories(tmp_path / "run" / RUN_TRAJECTORIES)
    trained = int(metrics["charts/trained_episodes"])
    # SPA's channel on the episodes it paid, as in PPO's records (it was left out, so records disagreed with logs).
    assert trained and sum(all("progress" in step.reward_components for step in record.steps)
                           for record in records) == trained
    # The records' returns are the ones the trainer logged, learned reward included.
    assert metrics["charts/episodic_return"] == pytest.approx(np.mean([r.total_reward for r in records]))
    assert metrics["reward/progress"] == pytest.approx(np.mean([r.channel_sums().get("progress", 0.0)
                                                                for r in records]))


@pytest.mark.parametrize("legacy", [False, True], ids=["gz", "legacy-plain"])
def test_a_resumed_run_neither_doubles_nor_loses_records(tmp_path: Path, legacy: bool) -> None:
    straight = make_trainer(tmp_path / "a", iterations=3, record_trajectories=True)
    straight.learn()
    expected = [r.to_dict() for r in load_trajectories(tmp_path / "a" / "run" / RUN_TRAJECTORIES)]
    # A run that wrote iteration 3's records (and half a line) after its last checkpoint, at iteration 2.
    first = make_trainer(tmp_path / "b", iterations=3, record_trajectories=True, checkpoint_every=1,
                         keep_checkpoints=True)
    first.learn(until_iteration=1)
    run = tmp_path / "b" / "run"
    path = run / RUN_TRAJECTORIES
    assert len(load_trajectories(path)) == 8
    first.learn()  # the same trainer continues: nothing is trimmed or repeated
    # A crash mid-write after the last checkpoint; with `legacy`, in a run recorded before compression.
    path = crash_mid_write(run, expected[-1], legacy=legacy)
    resumed = make_trainer(tmp_path / "c", iterations=3, record_trajectories=True,
                           resume=run / "checkpoint-2.pt")
    assert resumed.iteration == 2
    resumed.learn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the resume cut the damaged end away before appending
        assert [r.to_dict() for r in load_trajectories(path)] == expected
    assert (run / RUN_TRAJECTORIES).exists() != legacy


def test_rescore_reproduces_the_live_shaping_of_a_recorded_run(sokoban_run: Path) -> None:
    out = sokoban_run.with_name("rescored.jsonl")
    assert main(["rescore", str(sokoban_run), "--potential", "box_distance", "--gamma", "0.99", "--channel",
                 "offline", "--estimator", "grpo", "--out", str(out)]) == 0
    episodes = load_trajectories(out)
    assert len(episodes) == 4 and all(e.state is not None and e.steps[-1].state is not None for e in episodes)
    live = [s.reward_components["shaping"] for e in episodes for s in e.steps]
    offline = [s.reward_components["offline"] for e in episodes for s in e.steps]
    assert offline == pytest.approx(live, abs=1e-12) and len(set(live)) > 1
    for seed in {e.seed for e in episodes}:
        group = [e.steps[0].advantage for e in episodes if e.seed == seed]
        assert len(group) == 2 and sum(group) == pytest.approx(0, abs=1e-6)


def test_rescore_says_when_the_state_is_missing_or_bad(sokoban_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    make_trainer(tmp_path, iterations=1, record_trajectories=True).learn()  # LetterCountEnv has no state()
    letters = tmp_path / "run" / RUN_TRAJECTORIES
    capsys.readouterr()
    assert main(["rescore", str(letters), "--potential", "box_distance"]) == 2
    message = capsys.readouterr().out
    assert "potential failed on the reset observation" in message and "holds no env state" in message
    lines = gzip.decompress(sokoban_run.read_bytes()).decode().splitlines()
    record = json.loads(lines[0])
    record["steps"][0]["state"]["board"] = ["not a board"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    assert main(["rescore", str(bad), "--potential", "box_distance", "--replace", "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    message = capsys.readouterr().out
    assert "potential failed on steps[0]" in message and "holds no env state" not in message
