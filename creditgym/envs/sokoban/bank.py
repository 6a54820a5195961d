"""Level banks: stacks of same-sized levels loaded once, so reset never runs the generator."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from creditgym.envs.sokoban.boxoban import BoxobanFormatError, read_boxoban_puzzles
from creditgym.envs.sokoban.level import BOX_TILES, PLAYER_TILES, TARGET_TILES, Level, Tile

BANK_DIR = Path(__file__).parent / "banks"
SPLITS = ("train", "test")
#: Boxoban's own split folders: training, then held-out in order of preference.
BOXOBAN_SPLIT_FOLDERS = ("train", "test", "valid")


@dataclass(frozen=True, eq=False)
class LevelBank:
    """Levels of one size as an (N, H, W) int8 tile array, with per-level facts precomputed for fast resets."""

    tiles: np.ndarray
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.tiles.ndim != 3 or len(self.tiles) == 0:
            raise ValueError(f"a level bank needs an (N, H, W) array with N >= 1, got {self.tiles.shape}")
        self.tiles.setflags(write=False)
        facts = level_facts(self.tiles)
        for name, value in facts.items():
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    # Set in __post_init__ from level_facts().
    players: np.ndarray = field(init=False, repr=False)
    num_boxes: np.ndarray = field(init=False, repr=False)
    boxes_on_target: np.ndarray = field(init=False, repr=False)
    dead_corners: np.ndarray = field(init=False, repr=False)

    @classmethod
    def from_levels(cls, levels: list[Level], name: str = "custom") -> LevelBank:
        shapes = {level.shape for level in levels}
        if len(shapes) != 1:
            raise ValueError(f"levels in one bank must share a size; got sizes {sorted(shapes)}")
        return cls(np.stack([level.tiles for level in levels]), name)

    @classmethod
    def from_path(cls, path: str | Path) -> LevelBank:
        """Any Boxoban-format file or directory."""
        puzzles = read_boxoban_puzzles(path)
        first_place, first = puzzles[0]
        for place, level in puzzles:
            if level.shape != first.shape:
                raise BoxobanFormatError(
                    f"{place} is {level.shape[0]}x{level.shape[1]}, but {first_place} is "
                    f"{first.shape[0]}x{first.shape[1]}: the levels of one bank must share a size; pad the rooms "
                    "with walls to one size, or keep each size in its own file")
        return cls.from_levels([level for _, level in puzzles], name=str(path))

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> Level:
        return Level(self.tiles[index])

    @property
    def shape(self) -> tuple[int, int]:
        return self.tiles.shape[1:]  # type: ignore[return-value]


def level_facts(tiles: np.ndarray) -> dict[str, np.ndarray]:
    """For (N, H, W) boards: player (row, col), box count, boxes on target, and non-target corners.

    A box in a non-target corner (walls on one vertical and one horizontal side) can never move again.
    """
    flat_player = np.isin(tiles, PLAYER_TILES).reshape(len(tiles), -1).argmax(axis=1)
    wall = np.pad(tiles == Tile.WALL, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    vertical = wall[:, :-2, 1:-1] | wall[:, 2:, 1:-1]
    horizontal = wall[:, 1:-1, :-2] | wall[:, 1:-1, 2:]
    return {
        "players": np.stack(np.unravel_index(flat_player, tiles.shape[1:]), axis=1),
        "num_boxes": np.isin(tiles, BOX_TILES).sum(axis=(1, 2)),
        "boxes_on_target": (tiles == Tile.BOX_ON_TARGET).sum(axis=(1, 2)),
        "dead_corners": vertical & horizontal & (tiles != Tile.WALL) & ~np.isin(tiles, TARGET_TILES),
    }


def bank_names() -> list[str]:
    """Variants shipped with the package, e.g. '6x6-1b'."""
    return sorted({p.name.rsplit("-", 1)[0] for p in BANK_DIR.glob("*-train.txt")})


@functools.cache
def load_bank(variant: str, split: str = "train") -> LevelBank:
    """A bank shipped with the package (`creditgym make-banks` regenerates them)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = BANK_DIR / f"{variant}-{split}.txt"
    if not path.exists():
        raise ValueError(f"no level bank {variant!r}; shipped banks: {bank_names()}")
    return LevelBank(LevelBank.from_path(path).tiles, name=f"{variant}-{split}")


def resolve_bank(levels: str | Path | LevelBank, split: str) -> LevelBank:
    """A shipped variant name ('6x6-1b'), a Boxoban path, or a bank.

    A Boxoban folder with split subfolders (``unfiltered/`` has ``train/ valid/ test/``, ``medium/`` has ``train/
    valid/``) gives ``train/`` for split "train" and ``test/`` (or ``valid/`` where there is no ``test/``) for
    "test", so training and held-out play never share levels. A file, or a folder without split subfolders, is
    one level set whatever the split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(levels, LevelBank):
        return levels
    if not isinstance(levels, str | os.PathLike) or not str(levels).strip():
        # Path("") is the working directory, which would be searched for level files.
        raise ValueError(f"levels must be a shipped bank name ({', '.join(bank_names())}), the path of a Boxoban "
                         f"file or folder, or a LevelBank; got {levels!r}")
    if isinstance(levels, str) and (BANK_DIR / f"{levels}-{split}.txt").exists():
        return load_bank(levels, split)
    path = Path(levels).expanduser()
    if not path.exists():
        raise ValueError(
            f"levels={levels!r} is neither a shipped bank ({bank_names()}) nor an existing Boxoban file/directory"
        )
    return _load_path_bank(str(_split_folder(path.resolve(), split)))


def has_held_out_split(levels: str | Path | LevelBank) -> bool:
    """Whether split "test" plays other levels than "train": true for the shipped banks and Boxoban folders with
    split subfolders, false for a file, a folder without them, or a bank."""
    if isinstance(levels, LevelBank):
        return False
    if isinstance(levels, str) and (BANK_DIR / f"{levels}-test.txt").exists():
        return True
    path = Path(levels).expanduser().resolve()
    return _split_folder(path, "train") != path


def _split_folder(path: Path, split: str) -> Path:
    if not path.is_dir() or not any((path / name).is_dir() for name in BOXOBAN_SPLIT_FOLDERS):
        return path
    candidates = BOXOBAN_SPLIT_FOLDERS[:1] if split == "train" else BOXOBAN_SPLIT_FOLDERS[1:]
    for name in candidates:
        if (path / name).is_dir():
            return path / name
    raise ValueError(f"{path} has no {' or '.join(c + '/' for c in candidates)} folder for split {split!r}; "
                     f"pass that split's folder or file as levels")


@functools.lru_cache(maxsize=16)
def _load_path_bank(path: str) -> LevelBank:
    return LevelBank.from_path(path)
