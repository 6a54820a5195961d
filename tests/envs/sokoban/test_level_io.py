"""Level validation and the Boxoban reader/writer."""

from __future__ import annotations

import functools
import gzip
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from creditgym.envs.sokoban import bank as bank_module
from creditgym.envs.sokoban import boxoban as boxoban_module
from creditgym.envs.sokoban.bank import BANK_DIR, LevelBank, level_facts, load_bank, resolve_bank
from creditgym.envs.sokoban.boxoban import BoxobanFormatError, read_boxoban, read_boxoban_puzzles, write_boxoban
from creditgym.envs.sokoban.level import (
    BOX_TILES,
    NUM_TILES,
    PLAYER_TILES,
    TARGET_TILES,
    Level,
    LevelError,
    Tile,
)

ROOM = ["#####", "#@$.#", "#####"]
TWO = ["######", "#@$ .#", "# $ .#", "######"]
SHARED_BOXOBAN = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "boxoban-levels"


def test_level_round_trip_and_queries() -> None:
    level = Level.from_rows(TWO)
    assert level.to_rows() == TWO
    assert level.player == (1, 1)
    assert level.boxes == [(1, 2), (2, 2)]
    assert level.targets == [(1, 4), (2, 4)]
    assert level.num_boxes == 2 and level.boxes_on_target == 0 and not level.is_solved
    assert Level.from_rows(["#####", "#+$*#", "#####"]).tiles[1, 1] == Tile.PLAYER_ON_TARGET
    assert Level.from_rows(TWO) == level and hash(Level.from_rows(TWO)) == hash(level)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["#####", "#$$.#", "#####"], "one player"),
        (["#####", "#@$ #", "#####"], "as many boxes as targets"),
        (["#####", "#@  #", "#####"], "at least one"),
        (["#####", " @$.#", "#####"], "enclosed"),
        (["##$##", "#@ .#", "#####"], "enclosed"),  # a box on the edge could be pushed off the grid
        (["#####", "#@$x#", "#####"], "unknown symbol 'x'"),
    ],
)
def test_invalid_levels_say_what_is_wrong(rows: list[str], message: str) -> None:
    with pytest.raises(LevelError, match=message):
        Level.from_rows(rows)


def test_level_tiles_are_read_only() -> None:
    level = Level.from_rows(ROOM)
    with pytest.raises(ValueError):
        level.tiles[1, 1] = Tile.FLOOR


def test_write_then_read_file_and_directory(tmp_path: Path) -> None:
    levels = [Level.from_rows(ROOM), Level.from_rows(["#####", "#.$@#", "#####"])]
    write_boxoban(tmp_path / "a.txt", levels)
    write_boxoban(tmp_path / "b.txt", levels[:1])
    assert read_boxoban(tmp_path / "a.txt") == levels
    assert read_boxoban(tmp_path) == levels + levels[:1]


def test_reads_boxoban_layout_with_trailing_spaces(tmp_path: Path) -> None:
    # DeepMind's files: "; N" headers, blank lines between puzzles, rows that may lose trailing floor.
    text = "; 0\n#####\n#@$.#\n#####\n\n; 1\n#####\n#.$@#\n#####\n"
    (tmp_path / "000.txt").write_text(text)
    assert [lvl.to_rows() for lvl in read_boxoban(tmp_path / "000.txt")] == [ROOM, ["#####", "#.$@#", "#####"]]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("#####\n#@$.#\n#####\n", "line 1: expected a '; N' puzzle header"),
        ("; 0\n#####\n#@$.#\n#####\n; 7\n", "puzzle '7' (line 5) has no rows"),
        ("; 0\n#####\n#@$.#\n#####\n\n; 3\n#####\n#@$?#\n#####\n", "puzzle '3' (line 6): unknown symbol '?'"),
        ("; 0\n#####\n#@$$#\n#####\n", "puzzle '0' (line 1): a level needs as many boxes"),
        # every box on a target: each episode would count as a success without a move
        ("; 0\n######\n#@*  #\n######\n", "puzzle '0' (line 1) is solved already"),
        ("", "no puzzles found"),
    ],
)
def test_malformed_files_name_file_puzzle_and_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(BoxobanFormatError) as err:
        read_boxoban(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_binary_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BoxobanFormatError, match="not UTF-8"):
        read_boxoban(tmp_path / "bin.txt")
    with pytest.raises(FileNotFoundError, match="no such Boxoban file"):
        read_boxoban(tmp_path / "missing.txt")
    (tmp_path / "packed.txt").write_bytes(gzip.compress(b"; 0\n#####\n#@$.#\n#####\n"))
    for read in (read_boxoban, functools.partial(resolve_bank, split="train")):
        with pytest.raises(BoxobanFormatError, match="gzip-compressed: gunzip it first"):
            read(str(tmp_path / "packed.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BoxobanFormatError, match="no \\*.txt"):
        read_boxoban(tmp_path / "empty")


def test_a_byte_order_mark_and_folders_named_txt_are_read_past(tmp_path: Path) -> None:
    # Windows editors start UTF-8 files with a BOM, which used to hide the first "; 0" header.
    (tmp_path / "levels" / "000.txt").parent.mkdir()
    (tmp_path / "levels" / "000.txt").write_text("\ufeff; 0\n" + "\n".join(ROOM) + "\n", encoding="utf-8")
    (tmp_path / "levels" / "old.txt").mkdir()  # a folder named *.txt used to raise IsADirectoryError
    assert [level.to_rows() for level in read_boxoban(tmp_path / "levels")] == [ROOM]


def test_bank_from_mixed_sizes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="share a size"):
        LevelBank.from_levels([Level.from_rows(ROOM), Level.from_rows(TWO)])
    # From a file, the error names the file and the puzzle that differs, and says what to change.
    write_boxoban(tmp_path / "mixed.txt", [Level.from_rows(ROOM), Level.from_rows(ROOM), Level.from_rows(TWO)])
    with pytest.raises(BoxobanFormatError, match=r"mixed.txt: puzzle '2' \(line 11\) is 4x6, but .*mixed.txt: "
                                                 r"puzzle '0' \(line 1\) is 3x5.*pad the rooms"):
        resolve_bank(tmp_path / "mixed.txt", "train")


@pytest.mark.parametrize("levels", [None, 3, "", "  "])
def test_levels_that_name_no_bank_or_path_are_refused(levels: object) -> None:
    # "" is the working directory to Path, which used to be searched for level files.
    with pytest.raises(ValueError, match="levels must be a shipped bank name .*6x6-1b.*got"):
        resolve_bank(levels, "train")  # type: ignore[arg-type]


def test_resolve_bank_errors_list_shipped_banks() -> None:
    with pytest.raises(ValueError, match="6x6-1b"):
        resolve_bank("no-such-bank", "train")


def test_boxoban_split_folders_keep_training_and_held_out_levels_apart(tmp_path: Path) -> None:
    train, valid = Level.from_rows(ROOM), Level.from_rows(["#####", "#.$@#", "#####"])
    write_boxoban(tmp_path / "unfiltered" / "train" / "000.txt", [train])
    write_boxoban(tmp_path / "unfiltered" / "valid" / "000.txt", [valid])
    assert list(resolve_bank(tmp_path / "unfiltered", "train")) == [train]
    assert list(resolve_bank(tmp_path / "unfiltered", "test")) == [valid]  # valid/ stands in for a missing test/
    write_boxoban(tmp_path / "unfiltered" / "test" / "000.txt", [train, valid])
    assert len(resolve_bank(tmp_path / "unfiltered", "test")) == 2
    write_boxoban(tmp_path / "medium" / "train" / "000.txt", [train])
    with pytest.raises(ValueError, match="no test/ or valid/ folder"):
        resolve_bank(tmp_path / "medium", "test")
    # A single file, or a folder of level files, is one level set whatever the split; asking it for held-out
    # levels says so, as it would otherwise score a policy on its training levels unawares.
    with pytest.warns(UserWarning, match="no held-out split.*same levels as split='train'"):
        assert list(resolve_bank(tmp_path / "medium" / "train" / "000.txt", "test")) == [train]
    with pytest.warns(UserWarning, match="no held-out split"):
        gym.make("creditgym/Sokoban-6x6-1b-v0", levels=str(tmp_path / "medium" / "train"), split="test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_bank(tmp_path / "medium" / "train", "train")
        resolve_bank(tmp_path / "unfiltered", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        resolve_bank(tmp_path / "unfiltered", "validation")
    # The folder above them would read unfiltered/valid/ and test/ among the training levels.
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=r"held-out splits further down .*levels='.*unfiltered'"):
            resolve_bank(tmp_path, split)


@pytest.mark.skipif(not SHARED_BOXOBAN.exists(), reason="../shared/data/boxoban-levels is absent in this checkout")
def test_reads_real_boxoban_files() -> None:
    levels = read_boxoban(SHARED_BOXOBAN / "hard" / "000.txt")
    assert len(levels) == 1000
    assert all(level.shape == (10, 10) and level.num_boxes == 4 for level in levels)
    assert np.all([not level.is_solved for level in levels])


# -- the whole-file reader, against the per-level one --------------------------------------------------------------

# Each is read by both readers, which must agree on the levels or on the error, word for word.
EDGE_CASES = [
    "; 0\n#####\n#@$.#\n#####\n\n; 1\n#####\n#.$@#\n#####\n",
    "; 0\r\n#####\r\n#@$.#\r\n#####\r\n",  # Windows line ends
    "; 0\r#####\r#@$.#\r#####\r",  # old Mac line ends
    "\ufeff; 0\n#####\n#@$.#\n#####",  # a byte-order mark, and no newline at the end
    "\n  \n; 0\n\n\n#####\n#@$.#\n#####\n\n   \n",  # blank lines around the rows
    "; 0\n#####\n#@$.#\n#####    \n",  # trailing floor widens the room
    "; 0\n######\n#@$.#\n#####\n",  # ragged rows, padded with floor
    "; 0\n#####\n#@$.#\n\n#####\n",  # a blank line inside the rows is a row of floor
    "; 0\n  ####\n###@ #\n#.$  #\n######\n",  # floor outside the walls: the player's area is enclosed
    "; 0\n  #####\n  #@$.#\n  #####\n; 1\n#####\n#@-.#\n#_$ #\n#####\n",  # '-' and '_' are floor
    "; level one\n#####\n#+$*#\n#####\n;\n#####\n#@$.#\n#####\n",  # header text, and an empty header
    "; caf\u00e9\n#####\n#@$.#\n#####\n",  # non-ASCII in a header
    "; 0\n#####\n#@$.#\n#####\n; 1\n######\n#@$ .#\n######\n",  # two sizes in one file
    "; 0\n#####\n#@\t.#\n#####\n",
    "; 0\n#####\n#@$.#\n#####\n;1\n#####\n#@$\u00e9#\n#####\n",
    "; 0\n#####\n#@$.#\n#####\n; 1\n#####\n # ;$\n#####\n",
    "; 0\n#####\n#@$.#\n#####\n; 1\n####\n#@.#\n####\n",  # no box
    "; 0\n#####\n#@$.#\n#####\n; 1\n#####\n#@@$.#\n#####\n",  # two players
    "; 0\n#####\n#$$.#\n#####\n",  # no player
    "; 0\n#####\n#@$.#\n#####\n; 1\n#####\n#@$..#\n#####\n",  # boxes != targets
    "; 0\n#####\n#@$.#\n#####\n; 1\n#####\n #@$.#\n#####\n",  # open to the left edge
    "; 0\n  ###\n###@##\n#.$  #\n######\n",  # open through the top row
    "; 0\n#@$.#\n",  # one row
    "; 0\n##\n@$\n.#\n",  # two columns
    "#####\n; 0\n#####\n#@$.#\n#####\n",  # rows before the first header
    "; 0\n#####\n#@$.#\n#####\n; 1\n\n",  # a header without rows
    "",
    "   \n\n",
    "; 0\n#####\n#@$.#\n#####\n\x0c\n",  # a form feed is whitespace to str.strip
]


def _per_level(path: Path) -> list[Level] | str:
    try:
        return [level for _, level in read_boxoban_puzzles(path)]
    except (BoxobanFormatError, LevelError) as err:
        return str(err)


def _whole_file(path: Path) -> list[Level] | str:
    try:
        return read_boxoban(path)
    except (BoxobanFormatError, LevelError) as err:
        return str(err)


@pytest.mark.parametrize("text", EDGE_CASES)
def test_whole_file_reader_agrees_with_the_per_level_reader(tmp_path: Path, text: str) -> None:
    path = tmp_path / "levels.txt"
    path.write_bytes(text.encode())
    assert _whole_file(path) == _per_level(path)


def test_large_files_are_read_in_pieces_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boxoban_module, "_PIECE_BYTES", 30)  # a cut after nearly every puzzle
    for i, text in enumerate(EDGE_CASES):
        path = tmp_path / f"{i}.txt"
        path.write_bytes(text.encode())
        assert _whole_file(path) == _per_level(path), text
    shipped = BANK_DIR / "6x6-2b-test.txt"
    assert boxoban_module._parse_plain(shipped.read_bytes()) is not None
    assert read_boxoban(shipped) == _per_level(shipped)


def test_whole_file_reader_agrees_on_damaged_files(tmp_path: Path) -> None:
    # Random edits of a valid file: every insertion, deletion or change must leave both readers agreeing.
    base = "; 0\n#######\n#@ $ .#\n#  $ .#\n#######\n\n; 1\n#######\n#. $ @#\n#.$   #\n#######\n"
    alphabet = list("#  .$*@+-_;\n\n\r\t0x") + ["\u00e9", "\ufeff"]
    rng = np.random.default_rng(0)
    path = tmp_path / "levels.txt"
    outcomes = set()
    for _ in range(300):
        text = list(base)
        for _ in range(rng.integers(1, 4)):
            at = int(rng.integers(len(text) + 1))
            kind = rng.integers(3)
            if kind == 0:
                text.insert(at, str(rng.choice(alphabet)))
            elif text and at < len(text):
                if kind == 1:
                    del text[at]
                else:
                    text[at] = str(rng.choice(alphabet))
        path.write_bytes("".join(text).encode())
        expected = _per_level(path)
        assert _whole_file(path) == expected, "".join(text)
        outcomes.add(expected if isinstance(expected, str) else "ok")
    assert "ok" in outcomes and len(outcomes) > 10  # the edits reached both valid files and many kinds of error


def test_whole_file_reader_takes_the_fast_path_on_boxoban_files() -> None:
    files = [BANK_DIR / f"{name}-test.txt" for name in ("6x6-1b", "6x6-2b", "8x8-2b", "10x10-3b")]
    if SHARED_BOXOBAN.exists():
        files += [SHARED_BOXOBAN / "hard" / "000.txt", SHARED_BOXOBAN / "unfiltered" / "train" / "000.txt"]
    for file in files:
        fast = boxoban_module._parse_plain(file.read_bytes())
        assert fast is not None, file
        assert np.array_equal(fast, np.stack([level.tiles for level in _per_level(file)])), file  # type: ignore[union-attr]
    levels = read_boxoban(files[0])
    with pytest.raises(ValueError):
        levels[0].tiles[1, 1] = Tile.FLOOR


@pytest.mark.skipif(not SHARED_BOXOBAN.exists(), reason="../shared/data/boxoban-levels is absent in this checkout")
def test_bank_of_a_boxoban_folder_matches_the_per_level_reader(tmp_path: Path) -> None:
    folder = SHARED_BOXOBAN / "unfiltered" / "train"
    bank = resolve_bank(SHARED_BOXOBAN / "unfiltered", "train")
    files = sorted(folder.glob("*.txt"))[:2]
    expected = [level for file in files for level in _per_level(file)]  # type: ignore[union-attr]
    assert bank.shape == (10, 10) and len(bank) == 1000 * len(sorted(folder.glob("*.txt")))
    assert np.array_equal(bank.tiles[: len(expected)], np.stack([level.tiles for level in expected]))


def test_level_facts_match_their_definition() -> None:
    rng = np.random.default_rng(1)
    shapes = [(300, 3, 3), (300, 5, 8), (40, 1, 4)]
    boards = [rng.integers(0, NUM_TILES, size=shape).astype(np.int8) for shape in shapes]
    boards.append(load_bank("8x8-2b", "test").tiles)
    for tiles in boards:
        facts = level_facts(tiles)
        wall = np.pad(tiles == Tile.WALL, ((0, 0), (1, 1), (1, 1)), constant_values=True)
        corner = (wall[:, :-2, 1:-1] | wall[:, 2:, 1:-1]) & (wall[:, 1:-1, :-2] | wall[:, 1:-1, 2:])
        assert np.array_equal(facts["dead_corners"], corner & (tiles != Tile.WALL) & ~np.isin(tiles, TARGET_TILES))
        assert np.array_equal(facts["num_boxes"], np.isin(tiles, BOX_TILES).sum(axis=(1, 2)))
        assert np.array_equal(facts["boxes_on_target"], (tiles == Tile.BOX_ON_TARGET).sum(axis=(1, 2)))
        player = np.isin(tiles, PLAYER_TILES).reshape(len(tiles), -1).argmax(axis=1)
        assert np.array_equal(facts["players"], np.stack(np.unravel_index(player, tiles.shape[1:]), axis=1))


def test_bank_from_a_folder_of_mixed_sizes_names_both_puzzles(tmp_path: Path) -> None:
    write_boxoban(tmp_path / "a.txt", [Level.from_rows(ROOM)])
    write_boxoban(tmp_path / "b.txt", [Level.from_rows(ROOM), Level.from_rows(TWO)])
    with pytest.raises(BoxobanFormatError, match=r"b.txt: puzzle '1' \(line 6\) is 4x6, but .*a.txt: puzzle '0' "
                                                 r"\(line 1\) is 3x5"):
        resolve_bank(tmp_path, "train")
    (tmp_path / "c.txt").write_text("; 0\n#####\n#@$$#\n#####\n")  # every file is read before sizes are compared
    with pytest.raises(BoxobanFormatError, match="c.txt: puzzle '0' .*as many boxes"):
        resolve_bank(tmp_path, "train")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_named_txt_is_skipped(tmp_path: Path) -> None:
    write_boxoban(tmp_path / "000.txt", [Level.from_rows(ROOM)])
    os.mkfifo(tmp_path / "pipe.txt")  # reading it would never return
    assert read_boxoban(tmp_path) == [Level.from_rows(ROOM)]
    assert len(resolve_bank(tmp_path, "train")) == 1


# -- the on-disk cache of large level sets -----------------------------------------------------------------------


@pytest.fixture
def level_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private cache folder, used for level sets of any size."""
    monkeypatch.setenv("CREDITGYM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bank_module, "CACHE_MIN_BYTES", 0)
    bank_module._load_path_bank.cache_clear()
    yield tmp_path / "cache" / "sokoban"
    bank_module._load_path_bank.cache_clear()


def _load(path: Path) -> LevelBank:
    bank_module._load_path_bank.cache_clear()  # as a fresh worker process would
    return resolve_bank(path, "train")


def _levels_file(path: Path, count: int = 3) -> list[Level]:
    levels = [Level.from_rows(rows) for rows in (ROOM, ["#####", "#.$@#", "#####"], ["#####", "#+$*#", "#####"])]
    write_boxoban(path, levels[:count])
    return levels[:count]


def _parse_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(files: list[Path]) -> np.ndarray:
        raise AssertionError("parsed the level files although the cache is fresh")

    monkeypatch.setattr(bank_module, "_tiles_of", fail)


def test_cache_serves_a_fresh_copy_without_parsing(tmp_path: Path, level_cache: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "levels"
    levels = _levels_file(folder / "000.txt")
    first = _load(folder)
    assert sorted(p.suffix for p in level_cache.iterdir()) == [".bin", ".json"]
    with monkeypatch.context() as patch:
        _parse_fails(patch)
        cached = _load(folder)
    assert list(cached) == levels and cached.name == first.name
    for name in ("tiles", "players", "num_boxes", "boxes_on_target", "dead_corners"):
        value = getattr(cached, name)
        assert value.dtype == getattr(first, name).dtype and np.array_equal(value, getattr(first, name)), name
        assert not value.flags.writeable


def test_cache_is_rebuilt_when_a_file_changes(tmp_path: Path, level_cache: Path) -> None:
    folder = tmp_path / "levels"
    levels = _levels_file(folder / "000.txt")
    assert list(_load(folder)) == levels
    # Same size, new content and modification time.
    stat = (folder / "000.txt").stat()
    (folder / "000.txt").write_text((folder / "000.txt").read_text().replace("#.$@#", "#@$.#"))
    os.utime(folder / "000.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert (folder / "000.txt").stat().st_size == stat.st_size
    assert list(_load(folder)) == [levels[0], levels[0], levels[2]]
    _levels_file(folder / "000.txt", count=2)  # another size
    assert list(_load(folder)) == levels[:2]
    _levels_file(folder / "001.txt", count=1)  # another file
    assert list(_load(folder)) == [*levels[:2], levels[0]]
    assert len(list(level_cache.glob("*.bin"))) == 1  # entries for earlier versions are removed


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage json", "missing json", "wrong facts"])
def test_damaged_cache_is_ignored_and_rewritten(tmp_path: Path, level_cache: Path, damage: str) -> None:
    folder = tmp_path / "levels"
    levels = _levels_file(folder / "000.txt")
    _load(folder)
    (data,) = level_cache.glob("*.bin")
    meta = data.with_suffix(".json")
    raw = data.read_bytes()
    if damage == "truncate":
        data.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        data.write_bytes(raw[:10] + bytes([raw[10] ^ 1]) + raw[11:])
    elif damage == "empty":
        data.write_bytes(b"")
    elif damage == "garbage json":
        meta.write_text("{not json")
    elif damage == "missing json":
        meta.unlink()
    else:  # valid checksums over facts that level_facts would not give
        arrays = bank_module._read_cached(data, json.loads(meta.read_text())["key"])
        assert arrays is not None
        arrays["num_boxes"] = arrays["num_boxes"] + 1
        bank_module._write_cached(data, json.loads(meta.read_text())["key"], arrays)
    if damage == "missing json":
        assert list(_load(folder)) == levels  # an entry without its .json is incomplete, not damaged
    else:
        with pytest.warns(UserWarning, match="Boxoban level cache .* is damaged"):
            assert list(_load(folder)) == levels
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            bank = _load(folder)  # rewritten: read without a warning
        assert list(bank) == levels and np.array_equal(bank.num_boxes, [1, 1, 2])


def test_unwritable_cache_only_warns(tmp_path: Path, level_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("CREDITGYM_CACHE", str(blocker))
    folder = tmp_path / "levels"
    levels = _levels_file(folder / "000.txt")
    with pytest.warns(UserWarning, match="cannot write the Boxoban level cache .*CREDITGYM_CACHE"):
        assert list(_load(folder)) == levels


def test_small_level_sets_are_not_cached(tmp_path: Path, level_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bank_module, "CACHE_MIN_BYTES", 1 << 20)
    _levels_file(tmp_path / "levels" / "000.txt")
    assert len(_load(tmp_path / "levels")) == 3
    assert not level_cache.exists()


_TILE_OF = {"#": Tile.WALL, " ": Tile.FLOOR, ".": Tile.TARGET, "*": Tile.BOX_ON_TARGET, "$": Tile.BOX, "@": Tile.PLAYER}


@pytest.mark.parametrize(("rows", "message"), [
    (["     ", " @$. ", "     "], "enclosed"),         # open: the player walked into the next board of a batch
    (["#####", "#@$ #", "#####"], "targets"),          # gym-sokoban's player on a target, read as a plain player
    (["#####", "#@* #", "#####"], "already on a target"),  # solved: the batched env paid +9.9 every episode
])
def test_a_bank_from_an_array_is_checked_like_a_level(rows: list[str], message: str) -> None:
    tiles = np.array([[_TILE_OF[ch] for ch in row] for row in rows], dtype=np.int8)
    with pytest.raises(LevelError, match=message):
        LevelBank(tiles[None])


@pytest.mark.parametrize("tiles", [np.full((1, 5, 5), 1.5), np.full((1, 5, 5), 99), np.zeros((1, 2, 2), np.int8)])
def test_a_bank_of_values_that_are_no_tiles_is_refused(tiles: np.ndarray) -> None:
    with pytest.raises(LevelError, match="Tile values|at least 3x3"):
        LevelBank(tiles)
