"""Level banks: stacks of same-sized levels loaded once, so reset never runs the generator."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from creditgym.cache import cache_root
from creditgym.envs.sokoban.boxoban import (
    BoxobanFormatError,
    boxoban_files,
    read_boxoban_file_tiles,
    read_boxoban_puzzles,
    valid_levels,
)
from creditgym.envs.sokoban.level import BOX_TILES, NUM_TILES, PLAYER_TILES, TARGET_TILES, Level, LevelError, Tile

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
        # Unchecked arrays let a player walk off an open board into the next one of the batched env, wrap round
        # through numpy's negative indices, or never win (gym-sokoban writes a player on a target as a player).
        tiles = self.tiles
        if not np.issubdtype(tiles.dtype, np.integer) or tiles.min() < 0 or tiles.max() >= NUM_TILES:
            raise LevelError(f"a level bank holds integer Tile values 0..{NUM_TILES - 1}, got {tiles.dtype} "
                             f"values {tiles.min()}..{tiles.max()}")
        if min(tiles.shape[1:]) < 3:
            raise LevelError(f"levels must be at least 3x3, got {tiles.shape[1:]}")
        tiles = np.ascontiguousarray(tiles, dtype=np.int8)
        bad = np.flatnonzero(~valid_levels(tiles))
        if len(bad):
            try:
                Level(tiles[bad[0]])
                reason = "every box is already on a target"
            except LevelError as error:
                reason = str(error)
            raise LevelError(f"level {bad[0]} of the bank ({len(bad)} of {len(tiles)} cannot be played): {reason}")
        object.__setattr__(self, "tiles", tiles)
        self._set_facts(level_facts(self.tiles))

    def _set_facts(self, facts: dict[str, np.ndarray]) -> None:
        self.tiles.setflags(write=False)
        for name, value in facts.items():
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @classmethod
    def _with_facts(cls, tiles: np.ndarray, name: str, facts: dict[str, np.ndarray]) -> LevelBank:
        """A bank whose `level_facts` were computed before (the on-disk level cache keeps them with the tiles)."""
        bank = object.__new__(cls)
        object.__setattr__(bank, "tiles", tiles)
        object.__setattr__(bank, "name", name)
        bank._set_facts(facts)
        return bank

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
        return cls(_tiles_of(boxoban_files(path)), name=str(path))

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
    facts = {
        "players": np.empty((len(tiles), 2), dtype=np.intp),
        "num_boxes": np.empty(len(tiles), dtype=np.intp),
        "boxes_on_target": np.empty(len(tiles), dtype=np.intp),
        "dead_corners": np.empty(tiles.shape, dtype=bool),
    }
    # In slices, so a 900,000-level bank's temporaries take a few MB each rather than 90 MB, and stay in cache.
    for start in range(0, len(tiles), _FACTS_CHUNK):
        part = slice(start, start + _FACTS_CHUNK)
        for name, value in _chunk_facts(np.asarray(tiles[part])).items():
            facts[name][part] = value
    return facts


_FACTS_CHUNK = 16_384


def _chunk_facts(tiles: np.ndarray) -> dict[str, np.ndarray]:
    n, height, width = tiles.shape
    flat = tiles.reshape(n, -1)
    wall = flat == int(Tile.WALL)
    # Neighbours by shifting the flattened boards; a cell beyond the grid counts as wall.
    vertical = np.empty_like(wall)
    vertical[:, :width] = True
    vertical[:, width:] = wall[:, :-width]
    vertical[:, :-width] |= wall[:, width:]
    vertical[:, -width:] = True
    horizontal = np.empty_like(wall)
    horizontal[:, 1:] = wall[:, :-1]
    horizontal[:, :-1] |= wall[:, 1:]
    horizontal.reshape(n, height, width)[:, :, [0, -1]] = True
    flat_player = _tile_mask(flat, PLAYER_TILES).argmax(axis=1)
    return {
        "players": np.stack(np.unravel_index(flat_player, (height, width)), axis=1),
        "num_boxes": np.count_nonzero(_tile_mask(flat, BOX_TILES), axis=1),
        "boxes_on_target": np.count_nonzero(flat == int(Tile.BOX_ON_TARGET), axis=1),
        "dead_corners": (vertical & horizontal & ~wall & ~_tile_mask(flat, TARGET_TILES)).reshape(tiles.shape),
    }


def _tile_mask(tiles: np.ndarray, kinds: tuple[Tile, ...]) -> np.ndarray:
    # Comparisons with plain ints: np.isin sorts, and an IntEnum operand makes numpy widen int8 boards to int64.
    mask = tiles == int(kinds[0])
    for kind in kinds[1:]:
        mask |= tiles == int(kind)
    return mask


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
    folder = _split_folder(path.resolve(), split)
    if split == "test" and folder == path.resolve():
        warnings.warn(f"levels={str(levels)!r} has no held-out split (it is a file, or a folder without test/ or "
                      "valid/), so split='test' plays the same levels as split='train'; pass a held-out file or "
                      "folder as levels for held-out play", UserWarning, stacklevel=3)
    return _load_path_bank(str(folder))


def warn_when_levels_repeat(bank: LevelBank, episodes: int) -> None:
    """An evaluation of more episodes than `bank` has levels plays some twice: its success rate then weights those
    levels double, so say so rather than let it pass as one over distinct levels."""
    if episodes > len(bank):
        warnings.warn(f"{episodes} episodes but {bank.name} has {len(bank)} levels, so {episodes - len(bank)} "
                      f"repeat (distinct_levels {len(bank)}); pass --episodes {len(bank)} or fewer to play each "
                      "level once", UserWarning, stacklevel=2)


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
    if not path.is_dir():
        return path
    if not any((path / name).is_dir() for name in BOXOBAN_SPLIT_FOLDERS):
        nested = sorted(Path(root) for root, folders, _ in os.walk(path) for name in folders
                        if name in BOXOBAN_SPLIT_FOLDERS[1:])
        if nested:  # reading every *.txt below would put those held-out levels among the training levels
            listed = ", ".join(str(folder) for folder in nested)
            raise ValueError(f"{path} holds Boxoban folders with held-out splits further down ({listed}); pass the "
                             f"Boxoban folder that holds train/, e.g. levels={str(nested[0])!r}")
        return path
    candidates = BOXOBAN_SPLIT_FOLDERS[:1] if split == "train" else BOXOBAN_SPLIT_FOLDERS[1:]
    for name in candidates:
        if (path / name).is_dir():
            return path / name
    raise ValueError(f"{path} has no {' or '.join(c + '/' for c in candidates)} folder for split {split!r}; "
                     f"pass that split's folder or file as levels")


def _tiles_of(files: list[Path]) -> np.ndarray:
    """The levels of Boxoban files as one (N, H, W) array; raises naming the puzzles when sizes differ."""
    read = [(file, read_boxoban_file_tiles(file)) for file in files]
    first_file, first_runs = read[0]
    shape = first_runs[0].shape[1:]
    # Every file is read before sizes are compared, so a malformed file is reported as the per-level reader did.
    for file, runs in read:
        index = 0
        for run in runs:
            if run.shape[1:] != shape:
                place, level = read_boxoban_puzzles(file)[index]
                first_place, _ = read_boxoban_puzzles(first_file)[0]
                raise BoxobanFormatError(
                    f"{place} is {level.shape[0]}x{level.shape[1]}, but {first_place} is "
                    f"{shape[0]}x{shape[1]}: the levels of one bank must share a size; pad the rooms "
                    "with walls to one size, or keep each size in its own file")
            index += len(run)
    runs = [run for _, file_runs in read for run in file_runs]
    return runs[0] if len(runs) == 1 else np.concatenate(runs)


#: Level sets of fewer bytes than this are parsed each time: they take milliseconds, and would only fill the cache.
CACHE_MIN_BYTES = 1 << 20
#: Bump when the reader, `level_facts` or the cache files change, so older cached banks are never read.
_CACHE_VERSION = 1
#: What a cached bank holds, with the dtype each must have.
_CACHED = {"tiles": np.int8, "players": np.intp, "num_boxes": np.intp, "boxes_on_target": np.intp,
           "dead_corners": np.bool_}
_ALIGN = 64


@functools.lru_cache(maxsize=16)
def _load_path_bank(path: str) -> LevelBank:
    """A bank from a Boxoban file or folder, read once per process and, for large level sets, cached on disk.

    The disk cache is keyed by each file's path, size, modification time and inode, so an edited, added or removed
    file is read afresh by the next process. It holds the tiles and their `level_facts`, memory-mapped, so worker
    processes neither parse nor compute anything, and share the pages.
    """
    files = boxoban_files(path)
    sources = _sources(files)
    if sum(source[1] for source in sources) < CACHE_MIN_BYTES:
        return LevelBank(_tiles_of(files), name=path)
    key = json.dumps({"version": _CACHE_VERSION, "path": path, "files": sources})
    cached = cache_file(path, key)
    arrays = _read_cached(cached, key)
    if arrays is not None:
        return LevelBank._with_facts(arrays.pop("tiles"), path, arrays)
    bank = LevelBank(_tiles_of(files), name=path)
    # A file changed while it was read would store its new levels under its old key; such a read isn't kept.
    if _sources(files) == sources:
        _write_cached(cached, key, {name: getattr(bank, name) for name in _CACHED})
    return bank


def _sources(files: list[Path]) -> tuple[tuple[str, int, int, int], ...]:
    stats = [(file, file.stat()) for file in files]
    return tuple((str(file), st.st_size, st.st_mtime_ns, st.st_ino) for file, st in stats)


def cache_file(path: str, key: str) -> Path:
    """Where the bank for a Boxoban path with this key is cached: this .bin, with a .json beside it."""
    return cache_root() / "sokoban" / f"boxoban-{_digest(path)}-{_digest(key)}.bin"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_cached(cached: Path, key: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when missing, for another key, or damaged (warned about; the caller rebuilds)."""
    meta_path = cached.with_suffix(".json")
    if not cached.exists() or not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None  # a digest collision, or a file of an older layout
        # Memory-mapped, so worker processes reading one level set share its pages.
        buffer = np.memmap(cached, dtype=np.uint8, mode="r")
        if len(buffer) != meta["size"] or zlib.crc32(buffer) != meta["crc32"]:
            raise ValueError(f"{len(buffer)} bytes with checksum {zlib.crc32(buffer)}, expected {meta['size']} "
                             f"bytes with checksum {meta['crc32']}")
        arrays = {name: _cached_array(buffer, meta["arrays"][name], dtype) for name, dtype in _CACHED.items()}
        _check_cached(arrays)
        return arrays
    except (OSError, ValueError, EOFError, KeyError, TypeError) as error:
        problem = str(error) or type(error).__name__
    warnings.warn(f"the Boxoban level cache {cached} is damaged or stale ({problem}); reading the level files again",
                  stacklevel=4)
    return None


def _cached_array(buffer: np.ndarray, spec: dict[str, Any], dtype: type) -> np.ndarray:
    shape = tuple(int(n) for n in spec["shape"])
    offset = int(spec["offset"])
    if spec["dtype"] != np.dtype(dtype).str or offset % _ALIGN or min(shape, default=1) < 0:
        raise ValueError(f"array spec {spec} does not fit {np.dtype(dtype).str}")
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if offset + nbytes > len(buffer):
        raise ValueError(f"array spec {spec} runs past the end of the file")
    return np.asarray(buffer[offset:offset + nbytes]).view(dtype).reshape(shape)


def _check_cached(arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError unless the arrays fit together and the facts are what `level_facts` computes now."""
    tiles = arrays["tiles"]
    if tiles.ndim != 3 or len(tiles) == 0 or min(tiles.shape[1:]) < 3:
        raise ValueError(f"tiles of shape {tiles.shape}")
    expected = {"players": (len(tiles), 2), "num_boxes": (len(tiles),), "boxes_on_target": (len(tiles),),
                "dead_corners": tiles.shape}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ValueError(f"{name} of shape {arrays[name].shape}, expected {shape}")
    # The checksum rules out damage; this catches a changed level_facts whose _CACHE_VERSION was not bumped.
    sample = np.unique(np.linspace(0, len(tiles) - 1, num=min(len(tiles), 2048)).astype(int))
    for name, value in level_facts(tiles[sample]).items():
        if not np.array_equal(value, arrays[name][sample]):
            raise ValueError(f"cached {name} differ from level_facts")


def _write_cached(cached: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Store arrays under `key`, dropping this path's older entries; a cache that can't be written is skipped."""
    layout: dict[str, dict[str, Any]] = {}
    size = 0
    for name, array in arrays.items():
        size = -(-size // _ALIGN) * _ALIGN
        layout[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": size}
        size += array.nbytes
    # Names unique to this writer, moved into place, so concurrent workers never read a half-written file; the
    # .json goes last, as a reader needs both.
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp_bin, tmp_json = cached.with_name(f"{cached.name}.{tag}"), cached.with_name(f"{cached.stem}.json.{tag}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        crc, written = 0, 0
        with open(tmp_bin, "wb") as out:
            for name, array in arrays.items():
                for chunk in (bytes(layout[name]["offset"] - written), np.ascontiguousarray(array).data):
                    out.write(chunk)
                    crc = zlib.crc32(chunk, crc)
                written = layout[name]["offset"] + array.nbytes
        tmp_json.write_text(json.dumps({"key": key, "size": size, "crc32": crc, "arrays": layout}), encoding="utf-8")
        os.replace(tmp_bin, cached)
        os.replace(tmp_json, cached.with_suffix(".json"))
    except OSError as error:
        warnings.warn(f"cannot write the Boxoban level cache {cached} ({error}); set $CREDITGYM_CACHE to a writable "
                      "folder to load large level sets faster", stacklevel=4)
        return
    finally:
        _remove(tmp_bin)
        _remove(tmp_json)
    # Entries for the files' earlier versions are never read again, and each is as large as the level set.
    prefix = cached.name.rsplit("-", 1)[0]
    for old in cached.parent.glob(f"{prefix}-*"):
        if old.suffix in (".bin", ".json") and old.stem != cached.stem:
            _remove(old)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # its folder is unusable, or the file is open where open files can't be removed
