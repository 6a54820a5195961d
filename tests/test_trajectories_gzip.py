"""Gzip-compressed trajectory files (paths ending in .gz): the same records as plain JSONL, appended one gzip member
per writer block, and crash damage at the end read past, repaired on append and cut away by a resume's trim."""

from __future__ import annotations

import gzip
import json
import os
import warnings
import zlib
from pathlib import Path

import gymnasium as gym
import pytest

from creditgym.cli import main
from creditgym.trajectories import (
    Episode,
    TrajectoryFormatError,
    TrajectoryWarning,
    TrajectoryWriter,
    load_trajectories,
    record_episodes,
    trim_trajectories,
)
from creditgym.trajectories import files as trajectory_files

SOKOBAN = "creditgym/Sokoban-6x6-2b-v0"


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    env = gym.make(SOKOBAN, max_episode_steps=4)
    return record_episodes(env, lambda obs, info: env.action_space.sample(), 6, seed=0)


def _members(data: bytes) -> list[bytes]:
    """The decompressed gzip members of `data`, read with zlib alone (which fails on any damage)."""
    members = []
    while data:
        decompressor = zlib.decompressobj(wbits=31)
        members.append(decompressor.decompress(data))
        assert decompressor.eof
        data = decompressor.unused_data
    return members


def _append_blocks(path: Path, *blocks: list[Episode]) -> list[int]:
    """Each block through a writer of its own (so one gzip member each); returns where each block's member starts."""
    starts = []
    for block in blocks:
        starts.append(path.stat().st_size if path.exists() else 0)
        with TrajectoryWriter(path) as writer:
            for episode in block:
                writer.write(episode)
    return starts


def _seeds(path: Path) -> list[int | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file: no warning
        return [e.seed for e in load_trajectories(path)]


def test_gz_holds_the_same_jsonl_as_plain(tmp_path: Path, episodes: list[Episode]) -> None:
    plain, packed = tmp_path / "t.jsonl", tmp_path / "t.jsonl.gz"
    for path in (plain, packed):
        with TrajectoryWriter(path) as writer:
            for episode in episodes:
                writer.write(episode)
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    assert packed.stat().st_size * 10 < plain.stat().st_size
    assert [e.to_dict() for e in load_trajectories(packed)] == [e.to_dict() for e in load_trajectories(plain)]
    # An episode that cannot be stored is refused at write, and the block's other episodes are still written.
    with TrajectoryWriter(packed, overwrite=True) as writer:
        writer.write(episodes[0])
        with pytest.raises(TypeError, match=r"episode\.metadata\.bad"):
            writer.write(Episode(**{**episodes[1].__dict__, "metadata": {"bad": object()}}))
        writer.write(episodes[2])
    assert _seeds(packed) == [0, 2]


def test_each_writer_block_appends_one_member(tmp_path: Path, episodes: list[Episode],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl.gz"
    _append_blocks(path, episodes[:3], episodes[3:4], episodes[4:])
    assert [m.count(b"\n") for m in _members(path.read_bytes())] == [3, 1, 2]
    assert _seeds(path) == [0, 1, 2, 3, 4, 5]
    # A long-lived writer (eval --record) writes a member whenever GZIP_MEMBER_BYTES of JSON wait, and at close.
    longest = max(len(json.dumps(e.to_dict())) for e in episodes) + 1  # two episodes reach it, one does not
    monkeypatch.setattr(trajectory_files, "GZIP_MEMBER_BYTES", longest + 1)
    with TrajectoryWriter(path, overwrite=True) as writer:
        for episode in episodes[:5]:
            writer.write(episode)
        assert len(_members(path.read_bytes())) == 2
        writer.flush()
        assert len(_members(path.read_bytes())) == 3
    assert [m.count(b"\n") for m in _members(path.read_bytes())] == [2, 2, 1] and _seeds(path) == [0, 1, 2, 3, 4]


def _cut_points(data: bytes, starts: list[int]) -> list[int]:
    """Offsets that cut the file inside a member: in its header, its deflate data and its trailer."""
    ends = [*starts[1:], len(data)]
    points = {1, 5, len(data) - 1, len(data) - 6}
    for start, end in zip(starts, ends, strict=True):
        points |= {start + 12, start + (end - start) // 3, start + (end - start) * 2 // 3, end - 10}
    return sorted(point for point in points if point not in starts)


def _complete_records(data: bytes, starts: list[int], cut: int) -> int:
    """What a reader can get from the file cut at `cut`: the records of the members before the cut one, and the
    complete lines of what of it decompresses (a last line that parses lacks only its newline)."""
    start = max(s for s in starts if s < cut)
    before = sum(m.count(b"\n") for m in _members(data[:start]))
    text = zlib.decompressobj(wbits=31).decompress(data[start:cut])
    fragment = text.rsplit(b"\n", 1)[-1]
    try:
        json.loads(fragment)
        whole = 1
    except ValueError:
        whole = 0
    return before + text.count(b"\n") + whole


def test_a_cut_short_member_keeps_every_complete_record_and_appends_after_them(tmp_path: Path,
                                                                               episodes: list[Episode]) -> None:
    path = tmp_path / "t.jsonl.gz"
    starts = _append_blocks(path, episodes[:2], episodes[2:3], episodes[3:5])
    data = path.read_bytes()
    counts = set()
    for cut in _cut_points(data, starts):
        damaged = tmp_path / f"cut-{cut}.jsonl.gz"
        damaged.write_bytes(data[:cut])
        count = _complete_records(data, starts, cut)
        counts.add(count)
        with pytest.warns(TrajectoryWarning, match="cut short"):
            assert [e.seed for e in load_trajectories(damaged)] == [0, 1, 2, 3, 4][:count], cut
        # Appending first repairs the end, so the new member follows complete ones.
        with pytest.warns(TrajectoryWarning, match=r"ended in a gzip member cut short.*appending after"):
            writer = TrajectoryWriter(damaged)
        with writer:
            writer.write(episodes[5])
        assert _seeds(damaged) == [*[0, 1, 2, 3, 4][:count], 5], cut
        _members(damaged.read_bytes())  # every member whole: no damaged one left before the new
        partial = Path(f"{damaged}.partial")
        assert not partial.exists() or partial.read_bytes().startswith(b'{"format": "creditgym.trajectory/2"')
    assert counts >= {0, 1, 2, 3, 4}  # cuts in each member, before and after its records


def test_damage_before_the_end_is_an_error_and_appending_checks_only_the_end(tmp_path: Path,
                                                                            episodes: list[Episode]) -> None:
    path = tmp_path / "t.jsonl.gz"
    for episode in episodes[:2]:
        with TrajectoryWriter(path) as writer:
            writer.write(episode)
    first = _members(path.read_bytes())[0]
    data = path.read_bytes()
    member = gzip.compress(first, mtime=0)
    path.write_bytes(member[:len(member) // 2] + data[len(member):])  # the first member cut, the second whole
    with pytest.raises(TrajectoryFormatError, match=r"member at byte 0 is damaged .*truncate -s 0"):
        load_trajectories(path)
    with pytest.raises(TrajectoryFormatError, match="member at byte 0 is damaged"):
        trim_trajectories(path, 0)
    size = path.stat().st_size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrajectoryWriter(path).close()  # the end is fine, and the writer reads no further back
    assert path.stat().st_size == size


def test_a_file_named_for_the_other_format_says_so(tmp_path: Path, episodes: list[Episode]) -> None:
    plain = (json.dumps(episodes[0].to_dict()) + "\n").encode()
    named_gz = tmp_path / "t.jsonl.gz"
    named_gz.write_bytes(plain)
    with pytest.raises(TrajectoryFormatError, match=r"is not gzip-compressed .*rename a plain JSONL file"):
        load_trajectories(named_gz)
    with pytest.raises(TrajectoryFormatError, match="is not gzip-compressed"):
        TrajectoryWriter(named_gz)
    assert named_gz.read_bytes() == plain  # never cut away
    named_plain = tmp_path / "t.jsonl"
    named_plain.write_bytes(gzip.compress(plain))
    with pytest.raises(TrajectoryFormatError, match=r":1: not UTF-8 .*gzip-compressed: name it with \.gz"):
        load_trajectories(named_plain)


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_trim_cuts_gz_as_plain_and_rewrites_a_damaged_end(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert trim_trajectories(path, 1) == 0 and not path.exists()
    iterations = [1, 1, None, 2, 3, 2]  # None: a record without the key, kept where it comes before the cut
    for i, iteration in enumerate(iterations):
        with TrajectoryWriter(path) as writer:
            metadata = {} if iteration is None else {"iteration": iteration}
            writer.write(Episode(env_id="e", seed=i, observation="o", steps=[], metadata=metadata))
    cut_short = b'{"format": "creditgym.traj'
    with path.open("ab") as file:  # a write cut short
        file.write(gzip.compress(cut_short)[:-4] if path.suffix == ".gz" else cut_short)
    assert trim_trajectories(path, 3) == 1 and _seeds(path) == [0, 1, 2, 3, 4, 5]
    assert trim_trajectories(path, 3) == 0
    assert trim_trajectories(path, 1) == 3 and _seeds(path) == [0, 1, 2]
    if path.suffix == ".gz":  # a member cut after its complete record: nothing to drop, but the end is rewritten
        with path.open("ab") as file:
            file.write(gzip.compress(json.dumps(Episode("e", 9, "o", []).to_dict()).encode() + b"\n")[:-3])
        with pytest.warns(TrajectoryWarning, match="cut short"):
            assert [e.seed for e in load_trajectories(path)] == [0, 1, 2, 9]
        assert trim_trajectories(path, 1) == 0 and _seeds(path) == [0, 1, 2, 9]
        assert len(_members(path.read_bytes())) == 1 and not list(tmp_path.glob("*.trim*"))
    assert trim_trajectories(path, 0) == 3 + (path.suffix == ".gz")
    assert _seeds(path) == []


def test_rescore_reads_and_writes_gz(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=6)
    source = tmp_path / "t.jsonl.gz"
    record_episodes(env, lambda obs, info: env.action_space.sample(), 3, seed=1, path=source)
    args = ["rescore", str(source), "--potential", "box_distance", "--estimator", "gae"]
    assert main(args) == 0  # the default output sits next to the input, compressed as it is
    default = tmp_path / "t.rescored.jsonl.gz"
    assert main([*args, "--out", str(tmp_path / "o.jsonl")]) == 0
    assert gzip.decompress(default.read_bytes()) == (tmp_path / "o.jsonl").read_bytes()
    assert main([*args, "--out", str(tmp_path / "o.jsonl.gz")]) == 0
    rescored = load_trajectories(tmp_path / "o.jsonl.gz")
    assert [e.to_dict() for e in rescored] == [e.to_dict() for e in load_trajectories(tmp_path / "o.jsonl")]
    assert all("shaping" in s.reward_components and s.advantage is not None for e in rescored for s in e.steps)
    assert main(["rescore", str(default), "--estimator", "rloo", "--out", str(tmp_path / "o.jsonl")]) == 0
    assert len(load_trajectories(tmp_path / "o.jsonl")) == 3


def _fail_writes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls = []

    def write(fd: int, data: bytes) -> int:
        if not calls:
            calls.append(1)
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_failed_flush_keeps_the_gathered_episodes_for_the_next(tmp_path: Path, episodes: list[Episode],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl.gz"
    writer = TrajectoryWriter(path)
    for episode in episodes[:3]:
        writer.write(episode)
    _fail_writes_once(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        writer.flush()
    assert path.stat().st_size == 0  # the file is as it was
    writer.write(episodes[3])
    writer.close()
    assert _seeds(path) == [e.seed for e in episodes[:4]]


def test_a_repair_that_cannot_write_sets_the_recovered_records_aside(tmp_path: Path, episodes: list[Episode],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl.gz"
    whole = _append_blocks(path, episodes[:1], episodes[1:4])[1]
    path.write_bytes(path.read_bytes()[:-4])  # the second member's trailer cut: its records are on disk
    _fail_writes_once(monkeypatch)
    with pytest.raises(OSError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        TrajectoryWriter(path)
    assert path.stat().st_size == whole
    aside = [json.loads(line)["seed"] for line in Path(f"{path}.partial").read_text().splitlines()]
    assert aside == [e.seed for e in episodes[1:4]]


def test_zeros_after_the_last_member_read_as_a_cut_short_end(tmp_path: Path, episodes: list[Episode]) -> None:
    # A crash can leave a file's end zero-filled (ext4, XFS), as gzip(1) also reads past.
    path = tmp_path / "t.jsonl.gz"
    _append_blocks(path, episodes[:2])
    clean = path.stat().st_size
    path.write_bytes(path.read_bytes() + bytes(100))
    with pytest.warns(TrajectoryWarning):
        assert [e.seed for e in load_trajectories(path)] == [e.seed for e in episodes[:2]]
    assert trim_trajectories(path, 10**9) == 0 and path.stat().st_size == clean
    assert _seeds(path) == [e.seed for e in episodes[:2]]


def test_a_last_member_that_fails_its_checksum_is_kept_aside_not_rewritten(tmp_path: Path,
                                                                          episodes: list[Episode]) -> None:
    path = tmp_path / "t.jsonl.gz"
    whole = _append_blocks(path, episodes[:1], episodes[1:3])[1]
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the last member's CRC-32: its text decompresses but cannot be trusted
    path.write_bytes(bytes(data))
    with pytest.warns(TrajectoryWarning, match="damaged gzip member"):
        TrajectoryWriter(path).close()
    assert path.stat().st_size == whole and _seeds(path) == [episodes[0].seed]
    assert Path(f"{path}.damaged").read_bytes() == bytes(data[whole:])  # kept as it was, never written back as good
