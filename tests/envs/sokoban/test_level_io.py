"""Level validation and the Boxoban reader/writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from creditgym.envs.sokoban.bank import LevelBank, resolve_bank
from creditgym.envs.sokoban.boxoban import BoxobanFormatError, read_boxoban, write_boxoban
from creditgym.envs.sokoban.level import Level, LevelError, Tile

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
    # A single file, or a folder of level files, is one level set whatever the split.
    assert list(resolve_bank(tmp_path / "medium" / "train" / "000.txt", "test")) == [train]
    with pytest.raises(ValueError, match="split must be one of"):
        resolve_bank(tmp_path / "unfiltered", "validation")


@pytest.mark.skipif(not SHARED_BOXOBAN.exists(), reason="../shared/data/boxoban-levels is absent in this checkout")
def test_reads_real_boxoban_files() -> None:
    levels = read_boxoban(SHARED_BOXOBAN / "hard" / "000.txt")
    assert len(levels) == 1000
    assert all(level.shape == (10, 10) and level.num_boxes == 4 for level in levels)
    assert np.all([not level.is_solved for level in levels])
