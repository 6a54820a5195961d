"""Trajectory records: round trip, malformed files, safe appends, and offline re-scoring (`creditgym rescore`)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import creditgym
import creditgym.trajectories as trajectories
from creditgym.cli import main
from creditgym.envs.sokoban.rules import Action
from creditgym.envs.sokoban.solver import solve
from creditgym.envs.sokoban.text import ACTION_NAMES
from creditgym.trajectories import (
    Episode,
    PolicyOutput,
    TrajectoryFormatError,
    TrajectoryWarning,
    TrajectoryWriter,
    add_shaping,
    load_trajectories,
    read_trajectories,
    record_episodes,
    replacing_writer,
    step_advantages,
    trim_trajectories,
)
from creditgym.trajectories import records as trajectory_records
from creditgym.wrappers.potentials import get_potential
from creditgym.wrappers.shaping import PotentialShaping

SOKOBAN = "creditgym/Sokoban-6x6-2b-v0"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _random(env: gym.Env):
    return lambda obs, info: env.action_space.sample()


def _solver_after_detours(env: gym.Env, detours: int, rng: np.random.Generator | None = None):
    """Random moves for the first `detours` steps of each episode, then the solver's plan (episodes terminate
    unless a detour deadlocked the level). The moves come from `env.np_random`, which every reset reseeds, so
    rollouts of one seed repeat each other exactly; pass an `rng` of the policy's own to make them differ."""
    plan: list[int] = []
    count = [0]
    text = isinstance(env.action_space, gym.spaces.Text)

    def policy(obs, info) -> int | str:
        if "instructions" in info:  # a fresh episode
            count[0], plan[:] = 0, []
        count[0] += 1
        if count[0] <= detours:
            move = int((env.np_random if rng is None else rng).integers(4))
        else:
            if not plan:
                plan.extend(solve(env.unwrapped.level) or [0])
            move = int(plan.pop(0))
        return ACTION_NAMES[Action(move)] if text else move

    return policy


def test_round_trip_array_observations(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=8)
    path = tmp_path / "traj.jsonl"
    recorded = record_episodes(env, _random(env), 3, seed=7, path=path, metadata={"policy": "random"})
    loaded = load_trajectories(path)
    assert len(loaded) == 3
    for a, b in zip(recorded, loaded, strict=True):
        assert (b.env_id, b.seed, b.version) == (SOKOBAN, a.seed, creditgym.__version__)
        assert b.metadata == {"policy": "random"}
        assert isinstance(b.observation, np.ndarray) and b.observation.dtype == np.uint8
        assert np.array_equal(a.observation, b.observation) and a.state == b.state and a.info == b.info
        assert len(b.steps) == 8
        for x, y in zip(a.steps, b.steps, strict=True):
            assert np.array_equal(x.observation, y.observation)
            assert (int(x.action), x.reward_components, x.terminated, x.truncated, x.state, x.info) == (
                y.action, y.reward_components, y.terminated, y.truncated, y.state, y.info)
    assert [e.seed for e in loaded] == [7, 8, 9]
    # Same seeds, same actions: the recording replays exactly.
    replay = gym.make(SOKOBAN, max_episode_steps=8)
    replay.reset(seed=loaded[1].seed)
    for step in loaded[1].steps:
        obs, reward, *_ = replay.step(step.action)
        assert np.array_equal(obs, step.observation) and reward == step.reward


def test_round_trip_text_and_llm_fields(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, obs_mode="text", max_episode_steps=3)
    counter = iter(range(100))

    def llm(obs: str, info: dict) -> PolicyOutput:
        k = next(counter)
        return PolicyOutput("<answer>Left</answer>" if k % 2 else "hmm", prompt_ids=[1, 2, k],
                            response_ids=[k, 5], logprobs=[-0.5, -0.25 * k])

    path = tmp_path / "llm.jsonl"
    recorded = record_episodes(env, llm, 2, seed=0, group_size=2, path=path)
    loaded = load_trajectories(path)
    assert [e.seed for e in loaded] == [0, 0]
    assert loaded[0].observation == recorded[0].observation and isinstance(loaded[0].observation, str)
    step = loaded[0].steps[1]
    assert (step.action, step.prompt_ids, step.response_ids, step.logprobs) == (
        "<answer>Left</answer>", [1, 2, 1], [1, 5], [-0.5, -0.25])
    assert loaded[0].steps[0].reward_components["format"] == -0.1
    assert loaded[0].steps[0].info["invalid_action"] is True


def test_trim_trajectories_cuts_from_the_first_record_past_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    assert trim_trajectories(path, 1) == 0 and not path.exists()
    iterations = [1, 1, None, 2, 3, 2]  # None: a record without the key, kept where it comes before the cut
    with TrajectoryWriter(path) as writer:
        for i, iteration in enumerate(iterations):
            metadata = {} if iteration is None else {"iteration": iteration}
            writer.write(Episode(env_id="e", seed=i, observation="o", steps=[], metadata=metadata))
    with path.open("a") as file:
        file.write('{"format": "creditgym.traj')  # a write cut short
    assert trim_trajectories(path, 3) == 1 and len(load_trajectories(path)) == 6
    assert trim_trajectories(path, 1) == 3
    assert [e.seed for e in load_trajectories(path)] == [0, 1, 2]
    assert trim_trajectories(path, 0) == 3 and path.read_bytes() == b""


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=2)
    good = json.dumps(record_episodes(env, _random(env), 1, seed=0)[0].to_dict())
    path = tmp_path / "bad.jsonl"

    _write_lines(path, [good, "", good, '{"format": "creditgym.trajectory/1", "env_id": '])
    reader = read_trajectories(path)
    assert next(reader).env_id == SOKOBAN and next(reader).env_id == SOKOBAN  # earlier episodes still come out
    with pytest.raises(TrajectoryFormatError, match=r"bad\.jsonl:4: not valid JSON"):
        next(reader)

    path.write_text(good + "\n" + good[:50])  # a crash mid-write: the complete episode still comes out
    with pytest.warns(TrajectoryWarning, match=r"bad\.jsonl:2: skipped the last line, which is cut short"):
        assert [e.env_id for e in load_trajectories(path)] == [SOKOBAN]
    path.write_text(good + "\n" + good[:50] + "\n" + good + "\n")  # but not in the middle of the file
    with pytest.raises(TrajectoryFormatError, match=r":2: not valid JSON"):
        load_trajectories(path)

    no_action = json.loads(good)
    del no_action["steps"][1]["action"]
    _write_lines(path, [good, json.dumps(no_action)])
    with pytest.raises(TrajectoryFormatError, match=r":2: steps\[1\] has no 'action'"):
        load_trajectories(path)

    _write_lines(path, [json.dumps({**json.loads(good), "format": "other/9"})])
    with pytest.raises(TrajectoryFormatError, match=":1: format is 'other/9'"):
        load_trajectories(path)
    _write_lines(path, ['{"global_step": 8192, "charts/success_rate": 0.5}'])  # a run's metrics.jsonl, say
    with pytest.raises(TrajectoryFormatError, match=":1: it has no 'format' field, so it is not a trajectory record"):
        load_trajectories(path)
    with pytest.raises(FileNotFoundError, match="record one with `creditgym train ... --record-envs N`"):
        load_trajectories(tmp_path / "missing.jsonl")

    path.write_bytes(good.encode() + b"\n\xff\xfe\n")
    with pytest.raises(TrajectoryFormatError, match=":2: not UTF-8"):
        load_trajectories(path)


def test_failed_writes_keep_earlier_episodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=3)
    episodes = record_episodes(env, _random(env), 3, seed=0)
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as writer:
        writer.write(episodes[0])
        size = path.stat().st_size
        unstorable = Episode(**{**episodes[1].__dict__, "metadata": {"policy": object()}})
        with pytest.raises(TypeError, match=r"episode\.metadata\.policy \(object\)"):
            writer.write(unstorable)
        assert path.stat().st_size == size

        real_write = os.write

        def write_half_then_fail(fd: int, data) -> int:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", write_half_then_fail)
        with pytest.raises(OSError, match="No space"):
            writer.write(episodes[1])
        monkeypatch.undo()
        assert path.stat().st_size == size
        writer.write(episodes[2])
    assert [e.seed for e in load_trajectories(path)] == [0, 2]
    with TrajectoryWriter(path) as writer:  # appends by default
        writer.write(episodes[1])
    assert [e.seed for e in load_trajectories(path)] == [0, 2, 1]


@pytest.mark.parametrize(("gamma", "scale"), [(1.0, 1.0), (0.9, 1.0), (0.9, 0.25)])
def test_rescore_cli_matches_the_live_wrapper(tmp_path: Path, gamma: float, scale: float) -> None:
    live = PotentialShaping(gym.make(SOKOBAN, max_episode_steps=14, obs_mode="text"), "box_distance", gamma,
                            scale=scale)
    path = tmp_path / "live.jsonl"
    recorded = record_episodes(live, _solver_after_detours(live, 6), 4, seed=3, path=path)
    assert {s.terminated for e in recorded for s in e.steps} == {False, True}
    assert any(e.steps[-1].truncated for e in recorded)
    out = tmp_path / "rescored.jsonl"
    assert main(["rescore", str(path), "--potential", "box_distance", "--gamma", str(gamma), "--scale", str(scale),
                 "--channel", "offline", "--out", str(out)]) == 0
    rescored = load_trajectories(out)
    values = [(s.reward_components["shaping"], s.reward_components["offline"]) for e in rescored for s in e.steps]
    assert all(a == b for a, b in values) and any(a != 0 for a, _ in values)


def test_add_shaping_on_an_unshaped_recording_equals_live_shaping() -> None:
    plain = gym.make(SOKOBAN, max_episode_steps=15)
    shaped = PotentialShaping(gym.make(SOKOBAN, max_episode_steps=15), "solver_distance", 0.95)
    recorded = record_episodes(plain, _solver_after_detours(plain, 4), 2, seed=11)
    offline = [add_shaping(e, get_potential("solver_distance").offline, 0.95) for e in recorded]
    for episode in offline:
        shaped.reset(seed=episode.seed)
        for step in episode.steps:
            _, reward, *_, info = shaped.step(step.action)
            assert step.reward_components == info["reward_components"]
    with pytest.raises(ValueError, match="already has a 'shaping' channel"):
        add_shaping(offline[0], get_potential("box_distance").offline, 0.95)


def test_group_estimators_ignore_shaping_with_a_shared_start(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=60)
    # The policy's own RNG: with env.np_random every rollout of a seed repeated the others, so every advantage was
    # 0 and the checks below held for any estimator.
    episodes = record_episodes(env, _solver_after_detours(env, 5, np.random.default_rng(3)), 6, seed=1, group_size=3)
    assert all(e.steps[-1].terminated for e in episodes)
    shaped = [add_shaping(e, get_potential("box_distance").offline, 1.0) for e in episodes]
    returns = [e.total_reward for e in episodes]
    assert len(set(returns[:3])) == len(set(returns[3:])) == 3
    assert [e.total_reward for e in shaped] != pytest.approx(returns)
    for estimator in ("grpo", "rloo", "dr_grpo"):
        plain_adv = [a[0] for a in step_advantages(episodes, estimator)]
        shaped_adv = [a[0] for a in step_advantages(shaped, estimator)]
        assert shaped_adv == pytest.approx(plain_adv, abs=1e-9)
    # RLOO by hand, groups (seed 1) and (seed 2).
    expected = []
    for group in (returns[:3], returns[3:]):
        expected += [r - (sum(group) - r) / 2 for r in group]
    assert [a[0] for a in step_advantages(episodes, "rloo")] == pytest.approx(expected, abs=1e-9)


def test_group_estimators_group_only_episodes_that_start_alike() -> None:
    env = gym.make(SOKOBAN, max_episode_steps=60)
    episodes = record_episodes(env, _solver_after_detours(env, 5, np.random.default_rng(3)), 6, seed=1, group_size=3)
    # PPO and evaluation recordings hold one seed for many levels: the same seed, other starts, are not a group.
    relabelled = [dataclasses.replace(e, seed=0) for e in episodes]
    assert step_advantages(relabelled, "rloo") == step_advantages(episodes, "rloo")
    one_each = [dataclasses.replace(e, seed=0) for e in (episodes[0], episodes[3])]
    with pytest.warns(UserWarning, match="no two of the 2 episodes start alike"):
        assert all(a == 0 for row in step_advantages(one_each, "grpo") for a in row)
    # a PPO recording whose bank levels recur now and then: one pair shares a start, two episodes are alone
    mostly_alone = [*(dataclasses.replace(e, seed=0) for e in episodes[:2]), dataclasses.replace(episodes[3], seed=0),
                    dataclasses.replace(episodes[5], seed=7)]
    with pytest.warns(UserWarning, match="2 of the 4 episodes start unlike any other .* only the 2 that share a start"):
        advantages = step_advantages(mostly_alone, "grpo")
    assert all(a == 0 for row in advantages[2:] for a in row)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every episode in a group of three: nothing to warn about
        step_advantages(episodes, "grpo")


def test_advantages_of_non_finite_rewards_are_refused() -> None:
    env = gym.make(SOKOBAN, max_episode_steps=3)
    episode = record_episodes(env, _random(env), 1, seed=0)[0]
    episode.steps[1].reward_components["task"] = float("nan")
    with pytest.raises(ValueError, match=r"episode 0 \(0-based\), step 1: .*'task': nan.* not finite"):
        step_advantages([episode], "gae")


def test_group_estimators_and_reinforce_pp_offline_by_hand() -> None:
    # The invariance test above holds for any estimator that ignores its input (or swaps grpo and dr_grpo); here
    # each one is written out: the group outcome is the γ-discounted return, grpo divides by the sample std.
    import statistics

    env = gym.make(SOKOBAN, max_episode_steps=60)
    episodes = record_episodes(env, _solver_after_detours(env, 5, np.random.default_rng(3)), 6, seed=1, group_size=3)
    gamma = 0.9
    outcomes = [sum(gamma**t * s.reward for t, s in enumerate(e.steps)) for e in episodes]
    groups = (outcomes[:3], outcomes[3:])
    assert all(statistics.pstdev(group) > 1e-3 for group in groups)  # the by-hand values tell the estimators apart
    grpo, dr_grpo = [], []
    for group in groups:
        mean, std = statistics.fmean(group), statistics.stdev(group)
        grpo += [(o - mean) / (std + 1e-6) for o in group]
        dr_grpo += [o - mean for o in group]
    for estimator, expected in (("grpo", grpo), ("dr_grpo", dr_grpo)):
        got = step_advantages(episodes, estimator, gamma=gamma)
        for advantage, episode, value in zip(got, episodes, expected, strict=True):
            assert advantage == pytest.approx([value] * len(episode.steps), abs=1e-9), estimator
    to_go = [[sum(gamma**k * s.reward for k, s in enumerate(e.steps[t:])) for t in range(len(e.steps))]
             for e in episodes]
    flat = [x for row in to_go for x in row]
    mean, std = statistics.fmean(flat), statistics.pstdev(flat)
    got = step_advantages(episodes, "reinforce_pp", gamma=gamma)
    assert got == [pytest.approx([(x - mean) / (std + 1e-8) for x in row], abs=1e-9) for row in to_go]


def test_gae_and_reward_to_go_offline_by_hand(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=6)
    path = tmp_path / "t.jsonl"
    episodes = record_episodes(env, _solver_after_detours(env, 0), 2, seed=4, path=path)
    gamma, lam = 0.9, 0.8
    out = tmp_path / "gae.jsonl"
    assert main(["rescore", str(path), "--estimator", "gae", "--gamma", str(gamma), "--lam", str(lam),
                 "--out", str(out)]) == 0
    for episode, rescored in zip(episodes, load_trajectories(out), strict=True):
        rewards = [s.reward for s in episode.steps]
        expected = [sum((gamma * lam) ** k * r for k, r in enumerate(rewards[t:])) for t in range(len(rewards))]
        assert [s.advantage for s in rescored.steps] == pytest.approx(expected, abs=1e-6)
        to_go = step_advantages([episode], "reward_to_go", gamma=gamma)[0]
        assert to_go == pytest.approx([sum(gamma**k * r for k, r in enumerate(rewards[t:]))
                                       for t in range(len(rewards))], abs=1e-9)


def test_rescore_cli_errors_say_what_to_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=2)
    path = tmp_path / "t.jsonl"
    record_episodes(env, _random(env), 1, seed=0, path=path)
    assert main(["rescore", str(path)]) == 2
    assert "--potential" in capsys.readouterr().out
    assert main(["rescore", str(path), "--potential", "shop_progress"]) == 2
    assert "offline potentials: boxes_on_target" in capsys.readouterr().out
    assert main(["rescore", str(path), "--potential", "nope"]) == 2
    assert "valid names" in capsys.readouterr().out
    assert main(["rescore", str(path), "--estimator", "gae", "--out", str(path)]) == 2
    assert "choose another path" in capsys.readouterr().out
    (tmp_path / "config.json").write_text("{}")  # the folder is now a run's: its logs are not outputs
    for out, says in (("config.json", "ending in .jsonl"), ("metrics.jsonl", "own metrics.jsonl")):
        assert main(["rescore", str(path), "--estimator", "gae", "--out", str(tmp_path / out)]) == 2
        assert says in capsys.readouterr().out
    assert (tmp_path / "config.json").read_text() == "{}"
    assert main(["rescore", str(path), "--estimator", "gae", "--lam", "5"]) == 2
    assert "--gamma and --lam must be in [0, 1]" in capsys.readouterr().out
    path.write_text("{not json\n")
    assert main(["rescore", str(path), "--estimator", "gae"]) == 2
    assert "t.jsonl:1: not valid JSON" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["rescore", str(path), "--estimator", "ppo"])


def boxes_times_two(observation: object, state: dict) -> float:
    """A user potential over recorded states, loaded by `--potential tests.test_trajectories:boxes_times_two`."""
    return 2.0 * state["boxes_on_target"]


def test_rescore_with_a_user_potential(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=40)
    path, out = tmp_path / "t.jsonl", tmp_path / "out.jsonl"
    episodes = record_episodes(env, _solver_after_detours(env, 0), 2, seed=6, path=path)
    assert main(["rescore", str(path), "--potential", f"{__name__}:boxes_times_two", "--gamma", "0.5",
                 "--out", str(out)]) == 0
    for episode, rescored in zip(episodes, load_trajectories(out), strict=True):
        boxes = [episode.state["boxes_on_target"]] + [s.state["boxes_on_target"] for s in episode.steps]
        expected = [0.5 * 2.0 * (0 if s.terminated else boxes[t + 1]) - 2.0 * boxes[t]
                    for t, s in enumerate(episode.steps)]
        assert [s.reward_components["shaping"] for s in rescored.steps] == expected
        assert episode.steps[-1].terminated and min(expected) < 0
    assert main(["rescore", str(path), "--potential", "no_such_module:phi"]) == 2
    assert "module:function importable" in capsys.readouterr().out
    # A module that fails as it is imported is the user's code too: a clear error, not a traceback.
    (tmp_path / "broken_potential.py").write_text("def phi(observation, state):\n    return 1 +\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["rescore", str(path), "--potential", "broken_potential:phi"]) == 2
    assert "SyntaxError" in capsys.readouterr().out


# -- hostile files, crashes and unusual values ----------------------------------------------------------------
def _good_record() -> dict:
    env = gym.make(SOKOBAN, max_episode_steps=2)
    return record_episodes(env, _random(env), 1, seed=0)[0].to_dict()


def _edit(record: dict, path: tuple, value) -> dict:
    data = json.loads(json.dumps(record))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("seed",), True, r"episode\.seed must be int or null, got bool"),
        (("seed",), 1.5, r"episode\.seed must be int or null, got float"),
        (("info",), 5, r"episode\.info must be dict, got int"),
        (("metadata",), [1], r"episode\.metadata must be dict, got list"),
        (("state",), "board", r"episode\.state must be dict or null, got str"),
        (("steps", 0, "info"), None, r"steps\[0\]\.info must be dict, got NoneType"),
        (("steps", 0, "advantage"), "high", r"steps\[0\]\.advantage must be float or null, got str"),
        (("steps", 1, "logprobs"), [-0.5, "x"], r"steps\[1\]\.logprobs must be a list of numbers"),
        (("steps", 1, "prompt_ids"), [1, 2.5], r"steps\[1\]\.prompt_ids must be a list of integers"),
        (("steps", 0, "reward_components", "task"), True, r"reward_components\['task'\] must be a number"),
        (("steps", 0, "reward_components", "task"), 10**400, r"reward_components\['task'\] must be a number that "
                                                              "fits a float"),
        (("observation",), {"__ndarray__": [1, 2]}, r"episode\.observation is not a valid stored numpy array"),
        (("observation",), {"__ndarray__": [1000], "dtype": "uint8"}, r"out of bounds for uint8"),
        (("observation",), {"__ndarray__": [[1], [2, 3]], "dtype": "uint8"}, r"not a valid stored numpy array"),
        (("steps", 0, "observation"), {"__ndarray__": [1], "dtype": "complex128"}, r"steps\[0\]\.observation .*"
                                                                                    "unsupported dtype"),
    ],
    ids=lambda value: str(value)[:20],
)
def test_wrong_field_types_name_file_line_and_field(tmp_path: Path, path: tuple, value, message: str) -> None:
    good = _good_record()
    file = tmp_path / "t.jsonl"
    _write_lines(file, [json.dumps(good), json.dumps(_edit(good, path, value))])
    with pytest.raises(TrajectoryFormatError, match=r"t\.jsonl:2: .*" + message):
        load_trajectories(file)


def test_odd_but_valid_files_load(tmp_path: Path) -> None:
    good = _good_record()
    file = tmp_path / "t.jsonl"
    nan = _edit(good, ("steps", 0, "reward_components", "task"), float("nan"))
    file.write_bytes(b"\xef\xbb\xbf" + json.dumps(good).encode() + b"\r\n\n  \n" + json.dumps(nan).encode() + b"\n")
    first, second = load_trajectories(file)  # a BOM, CRLF, blank lines and NaN (which the writer stores) are fine
    assert first.to_dict() == Episode.from_dict(good).to_dict() and np.isnan(second.steps[0].reward)
    file.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(TrajectoryFormatError, match=":1: the JSON is nested too deeply"):
        load_trajectories(file)
    with pytest.raises(FileNotFoundError, match="is a folder, not a trajectory file"):
        load_trajectories(tmp_path)
    # json parses nesting that Python's recursion cannot then walk; that raised a bare RecursionError.
    deep = _edit(good, ("info",), json.loads('{"a": ' * 900 + "1" + "}" * 900))
    _write_lines(file, [json.dumps(good), json.dumps(deep)])
    with pytest.raises(TrajectoryFormatError, match=":2: the JSON is nested too deeply"):
        load_trajectories(file)


def test_string_arrays_wider_than_their_text_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stored dtype such as <U100000000 made 80 bytes of JSON into a 4 GB allocation (MemoryError or swap).
    monkeypatch.setattr(trajectory_records, "MAX_TEXT_ARRAY_BYTES", 1 << 20)
    good = _good_record()
    file = tmp_path / "t.jsonl"
    wide = _edit(good, ("steps", 0, "observation"), {"__ndarray__": ["a"] * 4, "dtype": "<U100000"})
    _write_lines(file, [json.dumps(good), json.dumps(wide)])
    with pytest.raises(TrajectoryFormatError, match=r"t\.jsonl:2: its numpy string arrays would take .* GiB"):
        load_trajectories(file)
    # Without a width numpy takes the longest string's for every element, which is the same trap.
    long = _edit(good, ("info",), {"__ndarray__": ["x" * 1000] + [""] * 1000, "dtype": "<U"})
    _write_lines(file, [json.dumps(long)])
    with pytest.raises(TrajectoryFormatError, match=":1: its numpy string arrays"):
        load_trajectories(file)
    fine = _edit(good, ("info",), {"__ndarray__": [["ab", "c"]], "dtype": "<U7"})
    _write_lines(file, [json.dumps(fine)])
    (episode,) = load_trajectories(file)
    assert episode.info.dtype == np.dtype("<U7") and episode.info.tolist() == [["ab", "c"]]


def test_appending_after_a_crash_mid_write_keeps_every_complete_episode(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=3)
    episodes = record_episodes(env, _random(env), 4, seed=0)
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as writer:
        writer.write(episodes[0])
        writer.write(episodes[1])
    line = (json.dumps(episodes[2].to_dict(), ensure_ascii=False) + "\n").encode()
    with path.open("ab") as file:  # what a process killed in the middle of `write` leaves
        file.write(line[: len(line) // 2])
    with pytest.warns(TrajectoryWarning, match="skipped the last line"):
        assert [e.seed for e in load_trajectories(path)] == [0, 1]
    with pytest.warns(TrajectoryWarning, match=r"moved it to .*t\.jsonl\.partial"):
        writer = TrajectoryWriter(path)
    with writer:
        writer.write(episodes[3])
    assert [e.seed for e in load_trajectories(path)] == [0, 1, 3]
    assert (tmp_path / "t.jsonl.partial").read_bytes() == line[: len(line) // 2] + b"\n"
    # A complete record that only lacks its newline (written by another tool) is kept.
    with path.open("ab") as file:
        file.write(line.rstrip(b"\n"))
    with TrajectoryWriter(path) as writer:
        writer.write(episodes[0])
    assert [e.seed for e in load_trajectories(path)] == [0, 1, 3, 2, 0]


_KILLED_MID_WRITE = """
import os, signal, sys
import gymnasium as gym
import creditgym, creditgym.trajectories as trajectories
from creditgym.trajectories import files

env = gym.make("creditgym/Sokoban-6x6-2b-v0", max_episode_steps=3)
real_write, calls = os.write, []

def write(fd, data):
    calls.append(fd)
    if len(calls) == 3:  # the third episode: half of it reaches the file, then the process dies
        real_write(fd, bytes(data[: len(data) // 2]))
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data)

os.write = write
files.GZIP_MEMBER_BYTES = 1  # a .gz file gets each episode as a member of its own, written as it ends
trajectories.record_episodes(env, lambda obs, info: env.action_space.sample(), 5, seed=0, path=sys.argv[1])
"""


@pytest.mark.parametrize("name", ["killed.jsonl", "killed.jsonl.gz"])
def test_a_killed_recording_keeps_the_finished_episodes(tmp_path: Path, name: str) -> None:
    import subprocess
    import sys

    path = tmp_path / name
    result = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(path)], timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    if name.endswith(".gz"):  # two whole gzip members, then half of the third
        with pytest.raises(EOFError):
            gzip.decompress(path.read_bytes())
    else:
        assert not path.read_bytes().endswith(b"\n")  # the cut-short third episode
    cut_short = r"killed\.jsonl:3: skipped the last line" if name.endswith(".jsonl") else r"\.gz.*cut short"
    with pytest.warns(TrajectoryWarning, match=cut_short):
        assert [e.seed for e in load_trajectories(path)] == [0, 1]
    env = gym.make(SOKOBAN, max_episode_steps=3)
    with pytest.warns(TrajectoryWarning, match="cut short"):
        record_episodes(env, _random(env), 2, seed=2, path=path)  # resume: append the rest
    assert [e.seed for e in load_trajectories(path)] == [0, 1, 2, 3]


def test_numpy_and_torch_values_in_info_round_trip(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=2)
    episode = record_episodes(env, _random(env), 1, seed=0)[0]
    values = {
        "f32": np.float32(1.5), "i64": np.int64(3), "flag": np.bool_(True), "name": np.str_("hi"),
        "array": np.arange(6, dtype=np.int16).reshape(2, 3), "words": np.array(["ab", "c"]),
        "objects": np.array([None, "x"], dtype=object), "tensor": torch.tensor([0.25, 0.5]),
        "grad": torch.ones(2, requires_grad=True), "bf16": torch.tensor([1.5], dtype=torch.bfloat16),
        "ids": torch.tensor([[1, 2]]), "nested": {"deep": [np.float64(0.5), (1, 2)]},
    }
    episode.steps[0].info.update(values)
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as writer:
        writer.write(episode)
    info = load_trajectories(path)[0].steps[0].info
    assert (info["f32"], info["i64"], info["flag"], info["name"]) == (1.5, 3, True, "hi")
    assert info["array"].dtype == np.int16 and info["array"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert info["words"].tolist() == ["ab", "c"] and info["objects"].tolist() == [None, "x"]
    assert info["tensor"].tolist() == [0.25, 0.5] and info["grad"].tolist() == [1.0, 1.0]
    assert info["bf16"].tolist() == [1.5] and info["ids"].dtype == np.int64
    assert info["nested"] == {"deep": [0.5, [1, 2]]}
    size = path.stat().st_size
    for bad, kind in [(np.array([1j]), "complex128"), (np.datetime64("2020-01-01"), "datetime64"),
                      (np.longdouble(1.5), "float128"), ({"__ndarray__": 1}, "reserved"), ({1: 2}, "not a string")]:
        episode.steps[1].info["bad"] = bad
        with TrajectoryWriter(path) as writer, pytest.raises(TypeError, match=r"steps\[1\]\.info\.bad.*" + kind
                                                             if kind not in ("reserved", "not a string") else kind):
            writer.write(episode)
    assert path.stat().st_size == size


def test_writer_refuses_bad_paths_and_use_after_close(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match=r"cannot write trajectories to .*: Is a directory"):
        TrajectoryWriter(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=r"cannot write trajectories to .*file/t\.jsonl"):
        record_episodes(gym.make(SOKOBAN), lambda obs, info: 0, 1, seed=0, path=tmp_path / "file" / "t.jsonl")
    writer = TrajectoryWriter(tmp_path / "t.jsonl")
    writer.close()
    writer.close()
    assert writer.closed
    env = gym.make(SOKOBAN, max_episode_steps=1)
    with pytest.raises(ValueError, match="is closed"):
        writer.write(record_episodes(env, _random(env), 1, seed=0)[0])


def _tagged(who: str, i: int) -> Episode:
    return Episode(env_id="x", seed=i, observation="o", steps=[], metadata={"who": who})


@pytest.mark.parametrize("name", ["eval.jsonl", "eval.jsonl.gz"])
def test_two_recordings_to_one_path_each_write_their_own_temporary_file(tmp_path: Path, name: str) -> None:
    # Both wrote eval.tmp.jsonl: the first to finish moved the other's half-written file into place, and the second
    # then failed (FileNotFoundError) after playing its whole evaluation.
    path = tmp_path / name
    with replacing_writer(path) as first:
        first.write(_tagged("first", 0))
        with replacing_writer(path) as second:
            second.write(_tagged("second", 0))
            first.write(_tagged("first", 1))
            second.write(_tagged("second", 1))
        assert [e.metadata["who"] for e in load_trajectories(path)] == ["second", "second"]
        first.write(_tagged("first", 2))
    assert [(e.metadata["who"], e.seed) for e in load_trajectories(path)] == [("first", 0), ("first", 1),
                                                                             ("first", 2)]
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind
    assert path.read_bytes().startswith(b"\x1f\x8b") == name.endswith(".gz")


def test_replacing_a_recording_leaves_other_files_and_a_failed_one_alone(tmp_path: Path) -> None:
    mine = tmp_path / "a.tmp.jsonl"  # the name the temporary file had: truncated, then deleted
    mine.write_text("my notes\n")
    path = tmp_path / "a.jsonl"
    with replacing_writer(path) as writer:
        writer.write(_tagged("kept", 0))
    assert mine.read_text() == "my notes\n"
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644 & ~umask  # as a new file gets (a temporary file's 0600 would not)
    with pytest.raises(RuntimeError), replacing_writer(path) as writer:
        writer.write(_tagged("lost", 0))
        raise RuntimeError
    assert [e.metadata["who"] for e in load_trajectories(path)] == ["kept"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "a.tmp.jsonl"]
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=r"cannot write trajectories to .*file/t\.jsonl: .*writable folder"):
        with replacing_writer(tmp_path / "file" / "t.jsonl"):
            pass


def test_recordings_are_reproducible_and_leave_the_global_rngs_alone(tmp_path: Path) -> None:
    import random

    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    expected = (np.random.random(), random.random(), torch.rand(1).item())
    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    for obs_mode in ("array", "text"):
        env = gym.make(SOKOBAN, max_episode_steps=4, obs_mode=obs_mode)
        first = record_episodes(env, _random(env), 3, seed=9, path=tmp_path / f"{obs_mode}-1.jsonl")
        again = record_episodes(env, _random(env), 3, seed=9, path=tmp_path / f"{obs_mode}-2.jsonl")
        assert [e.to_dict() for e in first] == [e.to_dict() for e in again]
        assert (tmp_path / f"{obs_mode}-1.jsonl").read_bytes() == (tmp_path / f"{obs_mode}-2.jsonl").read_bytes()
    assert (np.random.random(), random.random(), torch.rand(1).item()) == expected
    for seed in (None, -1, 1.5, True):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            record_episodes(env, _random(env), 1, seed=seed)


def test_envs_without_reward_components_record_one_channel() -> None:
    env = gym.make("CartPole-v1", max_episode_steps=5)
    episode = record_episodes(env, lambda obs, info: 0, 1, seed=0)[0]
    assert [s.reward_components for s in episode.steps] == [{"reward": 1.0}] * len(episode.steps)
    assert isinstance(episode.observation, np.ndarray) and episode.state is None


def test_add_shaping_with_scale_matches_the_live_wrapper_and_names_failing_steps() -> None:
    plain = gym.make(SOKOBAN, max_episode_steps=12)
    shaped = PotentialShaping(gym.make(SOKOBAN, max_episode_steps=12), "box_distance", 0.9, scale=2.5)
    recorded = record_episodes(plain, _solver_after_detours(plain, 3), 3, seed=21)
    for episode in recorded:
        offline = add_shaping(episode, get_potential("box_distance").offline, 0.9, scale=2.5)
        shaped.reset(seed=episode.seed)
        live = [shaped.step(step.action)[4]["reward_components"]["shaping"] for step in offline.steps]
        assert [s.reward_components["shaping"] for s in offline.steps] == live and any(live)
    with pytest.raises(ValueError, match=r"potential failed on steps\[0\] .*seed 21 \(KeyError: 'nope'\)"):
        add_shaping(recorded[0], lambda obs, state: 0.0 if obs is recorded[0].observation else state["nope"], 0.9)
    with pytest.raises(ValueError, match="the potential is nan on the reset observation"):
        add_shaping(recorded[0], lambda obs, state: float("nan"), 0.9)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        add_shaping(recorded[0], get_potential("box_distance").offline, 0.9, scale=0.0)
    unrecorded = record_episodes(plain, _random(plain), 1, seed=0, record_state=False)[0]
    with pytest.raises(ValueError, match="record with record_state=True"):
        add_shaping(unrecorded, get_potential("box_distance").offline, 0.9)


@pytest.mark.parametrize(("gamma", "lam"), [(1.5, 1.0), (float("nan"), 1.0), (1.0, -0.1)])
def test_step_advantages_refuse_gamma_or_lam_outside_0_1(gamma: float, lam: float) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=2)
    episodes = record_episodes(env, _random(env), 1, seed=0)
    with pytest.raises(ValueError, match=r"gamma and lam must be in \[0, 1\]"):
        trajectories.with_advantages(episodes, "gae", gamma=gamma, lam=lam)
