"""`creditgym rescore` on recordings too large to load: `rescore_file` reads one episode at a time, twice with an
estimator, and writes what the in-memory path (`with_advantages(add_shaping(...))`) writes."""

from __future__ import annotations

import tracemalloc
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import creditgym.trajectories as trajectories
from creditgym.cli import main
from creditgym.trajectories import (
    ESTIMATORS,
    Episode,
    Step,
    TrajectoryWarning,
    TrajectoryWriter,
    add_shaping,
    load_trajectories,
    read_trajectories,
    rescore_file,
    summarize,
    with_advantages,
)
from creditgym.trajectories import rescore as rescoring


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _episode(rng: np.random.Generator, group: int, *, side: int = 5, steps: int = 8) -> Episode:
    """An episode of random boards; the episodes of one `group` share seed and start, as an LLM trainer's do."""
    start = np.random.default_rng(group).integers(0, 5, (side, side), dtype=np.int8)
    length = int(rng.integers(1, steps + 1))
    ends_solved = bool(rng.integers(2))
    played = []
    for t in range(length):
        last = t == length - 1
        played.append(Step(action=int(rng.integers(4)), observation=rng.integers(0, 5, (side, side), dtype=np.int8),
                           reward_components={"task": float(rng.normal()), "step": -0.1},
                           terminated=last and ends_solved, truncated=last and not ends_solved,
                           info={"success": last and ends_solved}))
    return Episode(env_id="creditgym/Boards-v0", seed=group, observation=start, steps=played)


def _record(path: Path, episodes: int, *, group_size: int = 3, seed: int = 0, **shape: int) -> None:
    rng = np.random.default_rng(seed)
    with TrajectoryWriter(path, overwrite=True) as writer:
        for i in range(episodes):
            writer.write(_episode(rng, i // group_size, **shape))


def _board_potential(observation: Any, state: Any) -> float:
    return float(np.asarray(observation).sum() % 7) - 3.0


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_rescore_file_writes_what_the_in_memory_path_computes(tmp_path: Path, estimator: str, suffix: str) -> None:
    source, out = tmp_path / f"t{suffix}", tmp_path / f"out{suffix}"
    _record(source, 12)
    episodes = load_trajectories(source)
    assert len({(e.seed, e.observation.tobytes()) for e in episodes}) == 4  # groups of 3
    shaped = [add_shaping(e, _board_potential, 0.9, scale=0.5) for e in episodes]
    expected = with_advantages(shaped, estimator, gamma=0.9, lam=0.7)
    assert len({a for e in expected for a in (s.advantage for s in e.steps)}) > 2

    before, after, count = rescore_file(source, out, potential=_board_potential, estimator=estimator, gamma=0.9,
                                        lam=0.7, scale=0.5)
    assert [e.to_dict() for e in load_trajectories(out)] == [e.to_dict() for e in expected]  # bit for bit
    assert count == 12 and before == summarize(episodes) and after == summarize(expected)
    assert after["advantage/std"] > 0 and "reward/shaping" in after and "reward/shaping" not in before


def test_rescore_file_without_an_estimator_reads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, out = tmp_path / "t.jsonl", tmp_path / "out.jsonl"
    _record(source, 5)
    reads = []
    monkeypatch.setattr(rescoring, "read_trajectories",
                        lambda path, **kwargs: reads.append(path) or read_trajectories(path, **kwargs))
    rescore_file(source, out, potential=_board_potential, gamma=0.9, channel="offline")
    assert reads == [source]
    expected = [add_shaping(e, _board_potential, 0.9, channel="offline") for e in load_trajectories(source)]
    assert [e.to_dict() for e in load_trajectories(out)] == [e.to_dict() for e in expected]


@pytest.mark.parametrize("estimator", [None, "grpo", "gae"])
def test_rescore_holds_one_decoded_episode_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     estimator: str | None) -> None:
    # Copies of an episode (shaped, with advantages) share its observations; while the next one is read, the
    # observations of at most the one before it may still be alive, never those of the whole recording.
    source = tmp_path / "t.jsonl.gz"
    _record(source, 20)
    read, alive_before = [], []
    from_dict = Episode.from_dict

    def counting_from_dict(cls: type[Episode], data: Any) -> Episode:
        episode = from_dict(data)
        alive_before.append(sum(ref() is not None for ref in read))
        read.append(weakref.ref(episode.observation))
        return episode

    monkeypatch.setattr(Episode, "from_dict", classmethod(counting_from_dict))
    args = ["rescore", str(source), "--potential", f"{__name__}:_board_potential", "--out", str(tmp_path / "o.jsonl")]
    assert main(args + (["--estimator", estimator] if estimator else [])) == 0
    assert len(read) == 20 * (2 if estimator else 1) and max(alive_before) <= 1


def test_rescore_memory_does_not_grow_with_the_observations(tmp_path: Path) -> None:
    # Text observations of 40 KB: the file decodes to 7.3 MiB of strings, of which one episode's (240 KB) is read at
    # a time. Loading the file peaked at 8.7 MiB, reading it an episode at a time at 1 MiB.
    source, out = tmp_path / "text.jsonl", tmp_path / "out.jsonl"
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghij", dtype=np.uint8)
    decoded = 0
    with TrajectoryWriter(source, overwrite=True) as writer:
        for i in range(32):
            start = letters[np.random.default_rng(i // 4).integers(0, 10, 40_000)].tobytes().decode()
            texts = [letters[rng.integers(0, 10, 40_000)].tobytes().decode() for _ in range(5)]
            decoded += len(start) + sum(map(len, texts))
            writer.write(Episode(env_id="creditgym/Text-v0", seed=i // 4, observation=start, steps=[
                Step(action="go", observation=text, reward_components={"task": float(rng.normal())},
                     terminated=False, truncated=False) for text in texts]))
    tracemalloc.start()
    try:
        rescore_file(source, out, potential=lambda text, state: text.count("a") / 4000, estimator="grpo")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len({s.advantage for e in load_trajectories(out) for s in e.steps}) > 2  # groups of 4
    assert peak < decoded / 4, f"peak {peak / 2**20:.1f} MiB re-scoring {decoded / 2**20:.1f} MiB of text"


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_advantages_are_scored_in_bounded_chunks_with_the_same_result(monkeypatch: pytest.MonkeyPatch,
                                                                      estimator: str) -> None:
    # One padded episodes x longest-episode tensor for a 600k-episode PPO recording took GBs; chunks of at most
    # _CHUNK_CELLS padded steps (an episode longer than that alone) give every advantage as one chunk does.
    rng = np.random.default_rng(3)
    episodes = [_episode(rng, i // 3, side=2, steps=12) for i in range(60)]
    episodes[7] = _episode(rng, 2, side=2, steps=40)  # longer than a chunk
    while len(episodes[7].steps) <= 30:
        episodes[7] = _episode(rng, 2, side=2, steps=40)
    one_chunk = trajectories.step_advantages(episodes, estimator, gamma=0.9, lam=0.8)
    shapes = []
    for name in ("reward_to_go", "gae"):
        original = getattr(rescoring.credit, name)

        def spy(rewards: torch.Tensor, *args: Any, original=original, **kwargs: Any) -> Any:
            shapes.append(tuple(rewards.shape))
            return original(rewards, *args, **kwargs)

        monkeypatch.setattr(rescoring.credit, name, spy)
    monkeypatch.setattr(rescoring, "_CHUNK_CELLS", 30)
    chunked = trajectories.step_advantages(episodes, estimator, gamma=0.9, lam=0.8)
    assert len(shapes) > 10
    assert all(rows * width <= 30 or 1 in (rows, width) for rows, width in shapes), shapes  # gae's are (T, N)
    if estimator == "reinforce_pp":  # whitened over the whole batch: only the summation order differs
        np.testing.assert_allclose(np.concatenate(chunked), np.concatenate(one_chunk), rtol=0, atol=1e-12)
    else:
        assert chunked == one_chunk


def _change_before_second_read(monkeypatch: pytest.MonkeyPatch, change) -> None:
    """Make `change(path)` happen to the file just before it is read a second time, as a run still recording
    to it would."""
    reads = []

    def read(path: str | Path, **kwargs):
        reads.append(path)
        if len(reads) == 2:
            change(Path(path))
        return read_trajectories(path, **kwargs)

    monkeypatch.setattr(rescoring, "read_trajectories", read)


def _append_one(path: Path) -> None:
    with TrajectoryWriter(path) as writer:
        writer.write(_episode(np.random.default_rng(9), 0))


def _rewrite_with(path: Path, change) -> None:
    episodes = load_trajectories(path)
    change(episodes)
    with TrajectoryWriter(path, overwrite=True) as writer:
        for episode in episodes:
            writer.write(episode)


def _one_step_less(episodes: list[Episode]) -> None:
    episodes[3].steps.pop()


def _other_rewards(episodes: list[Episode]) -> None:
    episodes[3].steps[0].reward_components["task"] += 1.0


@pytest.mark.parametrize(("change", "says"), [
    (_append_one, "found more than the first read's 6 episodes"),
    (lambda path: _rewrite_with(path, list.pop), "found 5 episodes, the first 6"),
    (lambda path: _rewrite_with(path, _one_step_less), "episode 3 (0-based) has"),
    (lambda path: _rewrite_with(path, _other_rewards), "episode 3 (0-based) has"),
])
def test_a_file_that_changes_between_the_reads_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], change, says: str
                                                          ) -> None:
    source, out = tmp_path / "t.jsonl", tmp_path / "out.jsonl"
    _record(source, 6, steps=3)
    out.write_text("an earlier re-scoring\n")
    _change_before_second_read(monkeypatch, change)
    assert main(["rescore", str(source), "--estimator", "rloo", "--out", str(out)]) == 2
    message = capsys.readouterr().out
    assert "changed while it was re-scored" in message and says in message, message
    assert out.read_text() == "an earlier re-scoring\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "out.jsonl", "t.jsonl"]


def test_a_failure_in_the_second_read_leaves_an_earlier_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    source, out = tmp_path / "t.jsonl.gz", tmp_path / "out.jsonl.gz"
    _record(source, 6)
    out.write_bytes(b"an earlier re-scoring")
    written = []
    write = TrajectoryWriter.write

    def failing_write(self: TrajectoryWriter, episode: Episode) -> None:
        written.append(episode)
        if len(written) == 3:
            raise OSError(28, "No space left on device")
        write(self, episode)

    monkeypatch.setattr(TrajectoryWriter, "write", failing_write)
    reads = []
    monkeypatch.setattr(rescoring, "read_trajectories",
                        lambda path, **kwargs: reads.append(path) or read_trajectories(path, **kwargs))
    with pytest.raises(OSError, match="No space left"):
        rescore_file(source, out, potential=_board_potential, estimator="gae")
    assert reads == [source, source]  # it failed in the second read
    assert out.read_bytes() == b"an earlier re-scoring" and sorted(p.name for p in tmp_path.iterdir()) == [
        "out.jsonl.gz", "t.jsonl.gz"]


def test_warnings_are_given_once_although_the_file_is_read_twice(tmp_path: Path) -> None:
    source = tmp_path / "t.jsonl"
    _record(source, 4, group_size=1)  # every episode a group of its own
    with source.open("ab") as file:
        file.write(b'{"format": "creditgym.traj')  # a record cut short by a crash
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, after, count = rescore_file(source, tmp_path / "out.jsonl", estimator="grpo")
    assert count == 4 and after["advantage/std"] == 0
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert sum(issubclass(w.category, TrajectoryWarning) and "cut short" in str(w.message) for w in caught) == 1
    assert sum("no two of the 4 episodes start alike" in m for m in messages) == 1


def test_rescore_file_refuses_bad_arguments_before_reading(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    for kwargs, says in (({}, "nothing to re-score"), ({"estimator": "ppo"}, "unknown estimator 'ppo'"),
                         ({"estimator": "gae", "lam": 2.0}, r"gamma and lam must be in \[0, 1\]"),
                         ({"potential": "shop_progress"}, "cannot be recomputed from a recording")):
        with pytest.raises(ValueError, match=says):
            rescore_file(missing, tmp_path / "out.jsonl", **kwargs)
    with pytest.raises(FileNotFoundError, match="no trajectory file"):
        rescore_file(missing, tmp_path / "out.jsonl", estimator="gae")
    source = tmp_path / "t.jsonl"
    _record(source, 2)
    with pytest.raises(ValueError, match="is the input file"):
        rescore_file(source, source, estimator="gae")


def _one_step(env_id: str, seed: int | None, start: Any, reward: float) -> Episode:
    return Episode(env_id=env_id, seed=seed, observation=start, steps=[
        Step(action=0, observation=start, reward_components={"task": reward}, terminated=True, truncated=False)])


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_a_group_needs_the_same_env_seed_and_start(estimator: str) -> None:
    # Episodes without a seed are groups of their own however alike; so are the same seed and start in two envs.
    for episodes in ([_one_step("creditgym/A-v0", None, [1], 1.0), _one_step("creditgym/A-v0", None, [1], 0.0)],
                     [_one_step("creditgym/A-v0", 3, [1], 1.0), _one_step("creditgym/B-v0", 3, [1], 0.0)]):
        with pytest.warns(UserWarning, match="each is a group of its own"):
            assert trajectories.step_advantages(episodes, estimator) == [[0.0], [0.0]]
    grouped = trajectories.step_advantages(
        [_one_step("creditgym/A-v0", 3, [1], 1.0), _one_step("creditgym/A-v0", 3, [1], 0.0)], estimator)
    assert grouped[0][0] > 0 > grouped[1][0]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_episodes_without_steps_get_no_advantages(estimator: str) -> None:
    empty = Episode(env_id="creditgym/A-v0", seed=1, observation=[0], steps=[])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert trajectories.step_advantages([empty, empty], estimator) == [[], []]


def test_the_summary_is_the_mean_over_episodes_of_what_each_holds() -> None:
    episodes = [
        Episode(env_id="e", seed=0, observation=0, steps=[
            Step(action=0, observation=0, reward_components={"task": 1.0, "shaping": 0.5}, terminated=False,
                 truncated=False, advantage=1.0),
            Step(action=0, observation=0, reward_components={"task": 2.0, "shaping": 0.25}, terminated=True,
                 truncated=False, info={"success": True}, advantage=3.0)]),
        Episode(env_id="e", seed=1, observation=0, steps=[
            Step(action=0, observation=0, reward_components={"task": -3.0}, terminated=False, truncated=True,
                 info={"success": False}, advantage=-1.0)]),
        Episode(env_id="e", seed=2, observation=0, steps=[
            Step(action=0, observation=0, reward_components={"task": 0.5}, terminated=False, truncated=True,
                 advantage=0.0)]),
    ]
    summary = summarize(episodes)
    assert summary["episodes"] == 3 and summary["length"] == pytest.approx(4 / 3)
    assert summary["success"] == pytest.approx(1 / 3)
    assert summary["return"] == pytest.approx(1.25 / 3) and summary["reward/task"] == pytest.approx(0.5 / 3)
    assert summary["reward/shaping"] == pytest.approx(0.75 / 3)
    assert summary["advantage/mean"] == pytest.approx(0.75)
    assert summary["advantage/std"] == pytest.approx(np.std([1.0, 3.0, -1.0, 0.0]))  # population std, as numpy's


@pytest.mark.parametrize(("estimator", "reads"), [(None, 1), ("gae", 2)])
def test_rescore_progress_follows_the_bytes_read(tmp_path: Path, estimator: str | None, reads: int) -> None:
    source = tmp_path / "t.jsonl.gz"
    _record(source, 6)
    calls: list[tuple[int, int]] = []
    rescore_file(source, tmp_path / "out.jsonl", potential=_board_potential, estimator=estimator,
                 progress=lambda done, total: calls.append((done, total)))
    size = source.stat().st_size
    assert len(calls) == 6 * reads  # once per episode and read
    assert {total for _, total in calls} == {reads * size}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == reads * size
    if reads == 2:
        assert done[5] == size  # the first read ends at the file's end, the second starts from there


def test_rescore_progress_moves_with_each_episode_of_a_plain_file(tmp_path: Path) -> None:
    source = tmp_path / "t.jsonl"
    _record(source, 40)
    done: list[int] = []
    rescore_file(source, tmp_path / "out.jsonl", potential=_board_potential, progress=lambda d, total: done.append(d))
    assert len(done) == 40 and done[0] < source.stat().st_size // 10
    assert all(a < b for a, b in zip(done, done[1:], strict=False)) and done[-1] == source.stat().st_size


@pytest.mark.parametrize(("flags", "shown"), [([], True), (["--no-progress"], False)])
def test_cli_rescore_passes_a_progress_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str],
                                           shown: bool) -> None:
    from creditgym.cli import main

    source = tmp_path / "t.jsonl"
    _record(source, 3)
    given = []

    def rescore(*args, progress=None, **kwargs):
        given.append(progress)
        if progress is not None:
            progress(5, 10)
        return rescore_file(*args, **kwargs)

    monkeypatch.setattr(trajectories, "rescore_file", rescore)
    assert main(["rescore", str(source), "--estimator", "gae", *flags]) == 0
    assert callable(given[0]) is shown
