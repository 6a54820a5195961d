"""Reader and writer for Boxoban-format level files (DeepMind's format; any grid size).

A file holds puzzles separated by header lines ``; N``; each puzzle is rows of '#' wall, ' ' floor,
'.' goal, '$' box, '*' box on goal, '@' player and '+' player on goal. A directory is read file by file
in sorted order (``*.txt``).

Files are parsed and checked a whole file at a time with array operations (`read_boxoban_tiles`), which is what
makes a 900,000-level folder load in seconds. A file that is not plain Boxoban (non-ASCII or control characters,
puzzles of several sizes) or that holds an invalid level goes through the per-level reader instead, which gives
the same levels and words each error with the file, puzzle and line.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from creditgym.envs.sokoban.level import (
    _FROM_BOXOBAN,
    BOX_TILES,
    NUM_TILES,
    PLAYER_TILES,
    TARGET_TILES,
    Level,
    LevelError,
    Tile,
)

_BOM = b"\xef\xbb\xbf"
_NEWLINE, _SPACE, _SEMICOLON = ord("\n"), ord(" "), ord(";")
# Byte -> tile; -1 marks a byte that is no Boxoban symbol.
_TILE_OF_BYTE = np.full(256, -1, dtype=np.int8)
for _symbol, _tile in _FROM_BOXOBAN.items():
    _TILE_OF_BYTE[ord(_symbol)] = _tile


class BoxobanFormatError(ValueError):
    """A Boxoban file is malformed. The message names the file, puzzle number and line."""


def read_boxoban(path: str | Path) -> list[Level]:
    """Read every level in a Boxoban file, or in every ``*.txt`` file of a directory."""
    # The runs were checked as whole arrays, so each level is a read-only view into its file's array.
    return [Level._prechecked(tiles) for _, runs in read_boxoban_tiles(path) for run in runs for tiles in run]


def read_boxoban_tiles(path: str | Path) -> list[tuple[Path, list[np.ndarray]]]:
    """Each file's levels as read-only (n, H, W) int8 arrays of `Tile` values, one array per run of same-sized
    puzzles (one array for a file of one size), with the file they came from; raises as `read_boxoban` does."""
    return [(file, read_boxoban_file_tiles(file)) for file in boxoban_files(path)]


def read_boxoban_puzzles(path: str | Path) -> list[tuple[str, Level]]:
    """Like `read_boxoban`, with where each level is ("FILE: puzzle 'N' (line L)"), for errors about one level.

    This parses and checks one level at a time (about 160 µs a level); `read_boxoban_tiles` is the fast way to
    read many.
    """
    return [puzzle for file in boxoban_files(path) for puzzle in _read_file(file)]


def boxoban_files(path: str | Path) -> list[Path]:
    """The level files `read_boxoban` reads for `path`: the file itself, or a directory's ``*.txt`` files."""
    path = Path(path).expanduser()
    if path.is_dir():
        # Only regular files: a folder named *.txt would raise IsADirectoryError, and reading a FIFO never returns.
        files = sorted(file for file in path.rglob("*.txt") if file.is_file())
        if not files:
            raise BoxobanFormatError(f"{path}: directory holds no *.txt level files")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Boxoban file or directory")
    return [path]


def read_boxoban_file_tiles(path: Path) -> list[np.ndarray]:
    """One file's levels as read-only (n, H, W) int8 arrays, one per run of same-sized puzzles."""
    tiles = _parse_plain(path.read_bytes())
    if tiles is None:
        # Not plain Boxoban, or some level is invalid: the per-level reader parses it, or raises naming the puzzle.
        runs: list[list[np.ndarray]] = []
        for _, level in _read_file(path):
            if runs and runs[-1][0].shape == level.shape:
                runs[-1].append(level.tiles)
            else:
                runs.append([level.tiles])
        return [_read_only(np.stack(run)) for run in runs]
    return [_read_only(tiles)]


def _read_only(tiles: np.ndarray) -> np.ndarray:
    tiles.setflags(write=False)
    return tiles


def _parse_plain(data: bytes) -> np.ndarray | None:
    """All puzzles of a file's bytes as one (N, H, W) int8 array, when the file is printable ASCII, its puzzles
    share one size and every level is valid; None otherwise, for the per-level reader to decide.

    Where it answers, it agrees with `_read_file`: rows run from a puzzle's first non-blank line to its last, short
    rows are padded with floor, and the checks are those of `Level`.
    """
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if b"\r" in data:
        # str.splitlines breaks lines at a lone '\r' too; leave such files to the per-level reader.
        data = data.replace(b"\r\n", b"\n")
        if b"\r" in data:
            return None
    if not data.endswith(b"\n"):
        data += b"\n"
    # A large file is parsed in pieces cut before a header line, so its per-byte and per-line temporaries stay
    # bounded (a concatenated Boxoban set can hold hundreds of MB).
    parts: list[np.ndarray] = []
    start = 0
    while start < len(data):
        cut = data.find(b"\n;", start + _PIECE_BYTES)
        stop = len(data) if cut < 0 else cut + 1
        tiles = _parse_piece(np.frombuffer(data, dtype=np.uint8, count=stop - start, offset=start))
        if tiles is None or (parts and tiles.shape[1:] != parts[0].shape[1:]):
            return None
        parts.append(tiles)
        start = stop
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


_PIECE_BYTES = 1 << 22


def _parse_piece(raw: np.ndarray) -> np.ndarray | None:
    """`_parse_plain` for bytes that end with a newline and, unless they start the file, start with a header."""
    newline = raw == _NEWLINE
    # Only printable ASCII and '\n', so a byte is a character and no other character splits lines.
    if ((raw < _SPACE) & ~newline).any() or (raw > ord("~")).any():
        return None
    ends = np.flatnonzero(newline)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    header = raw[starts] == _SEMICOLON  # an empty line "starts" at its own newline, so it is no header
    # Each line's span holds its newline, so no span is empty (reduceat misreads empty spans).
    blank = ~np.logical_or.reduceat((raw != _SPACE) & ~newline, starts)
    headers = np.flatnonzero(header)
    if len(headers) == 0 or not blank[: headers[0]].all():
        return None
    row_lines = np.flatnonzero(~blank & ~header)
    owner = np.cumsum(header)[row_lines] - 1
    puzzles = np.arange(len(headers))
    first = np.searchsorted(owner, puzzles, side="left")
    stop = np.searchsorted(owner, puzzles, side="right")
    if (first == stop).any():
        return None
    # Blank lines between a puzzle's first and last row are rows of it, as in the per-level reader.
    first_line, last_line = row_lines[first], row_lines[stop - 1]
    heights = last_line - first_line + 1
    height = int(heights[0])
    if (heights != height).any():
        return None
    line_of = first_line[:, None] + np.arange(height)
    row_lengths = lengths[line_of]
    widths = row_lengths.max(axis=1)
    width = int(widths[0])
    if (widths != width).any() or min(height, width) < 3:
        return None
    columns = np.arange(width)
    positions = starts[line_of][..., None] + columns
    if (row_lengths == width).all():
        chars = raw[positions]
    else:
        chars = np.where(columns < row_lengths[..., None], raw[np.minimum(positions, len(raw) - 1)], _SPACE)
    tiles = np.take(_TILE_OF_BYTE, chars)
    if (tiles < 0).any() or not valid_levels(tiles).all():
        return None
    return tiles


def valid_levels(tiles: np.ndarray) -> np.ndarray:
    """For (N, H, W) int8 boards of `Tile` values, which pass `Level`'s checks (one player, as many boxes as
    targets, at least one, and the player's area enclosed by walls) and are not solved already (a box off target)."""
    # How many cells of each tile value every level has, in one pass.
    offsets = np.arange(len(tiles))[:, None] * NUM_TILES
    counts = np.bincount((offsets + tiles.reshape(len(tiles), -1)).ravel(), minlength=len(tiles) * NUM_TILES)
    counts = counts.reshape(len(tiles), NUM_TILES)
    players = counts[:, PLAYER_TILES].sum(axis=1)
    boxes = counts[:, BOX_TILES].sum(axis=1)
    targets = counts[:, TARGET_TILES].sum(axis=1)
    valid = (players == 1) & (counts[:, Tile.BOX] > 0) & (boxes == targets)
    return valid & _enclosed(tiles, valid)


def _enclosed(tiles: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Whether the player's walkable area stays off the grid's edge (for the `candidates`, which have one player)."""
    wall = tiles == int(Tile.WALL)  # an IntEnum operand would widen the boards to int64
    edge = np.ones(tiles.shape[1:], dtype=bool)
    edge[1:-1, 1:-1] = False
    # With walls all round the edge there is nothing to check, as in every Boxoban level; only the rest are filled.
    open_edge = (~wall & edge).any(axis=(1, 2))
    enclosed = ~open_edge
    todo = np.flatnonzero(open_edge & candidates)
    if len(todo):
        free = ~wall[todo]
        reach = np.isin(tiles[todo], PLAYER_TILES)
        while True:
            grown = reach.copy()
            grown[:, 1:] |= reach[:, :-1]
            grown[:, :-1] |= reach[:, 1:]
            grown[:, :, 1:] |= reach[:, :, :-1]
            grown[:, :, :-1] |= reach[:, :, 1:]
            grown &= free
            if np.array_equal(grown, reach):
                break
            reach = grown
        enclosed[todo] = ~(reach & edge).any(axis=(1, 2))
    return enclosed


def _read_file(path: Path) -> list[tuple[str, Level]]:
    try:
        # utf-8-sig: editors on Windows start UTF-8 files with a byte-order mark, which would hide the first header.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        packed = " (it is gzip-compressed: gunzip it first)" if path.read_bytes()[:2] == b"\x1f\x8b" else ""
        raise BoxobanFormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}){packed}") from None
    levels: list[tuple[str, Level]] = []
    header: str | None = None
    header_line = 0
    rows: list[str] = []

    def finish() -> None:
        if header is None:
            return
        while rows and not rows[-1].strip():
            rows.pop()
        if not rows:
            raise BoxobanFormatError(f"{path}: puzzle '{header}' (line {header_line}) has no rows")
        try:
            level = Level.from_rows(rows)
        except LevelError as err:
            raise BoxobanFormatError(f"{path}: puzzle '{header}' (line {header_line}): {err}") from None
        if not (level.tiles == Tile.BOX).any():
            raise BoxobanFormatError(f"{path}: puzzle '{header}' (line {header_line}) is solved already: every box "
                                     "is on a target ('*'), so each episode would be a success without a move")
        levels.append((f"{path}: puzzle '{header}' (line {header_line})", level))

    for line_number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if line.startswith(";"):
            finish()
            header, header_line, rows = line[1:].strip() or "?", line_number, []
        elif header is None:
            if line.strip():
                raise BoxobanFormatError(
                    f"{path}: line {line_number}: expected a '; N' puzzle header, got {line[:40]!r}"
                )
        elif line.strip() or rows:
            rows.append(line)
    finish()
    if not levels:
        raise BoxobanFormatError(f"{path}: no puzzles found (expected '; N' headers followed by rows)")
    return levels


def write_boxoban(path: str | Path, levels: Iterable[Level]) -> None:
    """Write levels as one Boxoban file, numbered from 0, creating its folder if needed."""
    chunks = [f"; {i}\n" + "\n".join(level.to_rows()) + "\n" for i, level in enumerate(levels)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(chunks), encoding="utf-8")
