"""Reader and writer for Boxoban-format level files (DeepMind's format; any grid size).

A file holds puzzles separated by header lines ``; N``; each puzzle is rows of '#' wall, ' ' floor,
'.' goal, '$' box, '*' box on goal, '@' player and '+' player on goal. A directory is read file by file
in sorted order (``*.txt``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from creditgym.envs.sokoban.level import Level, LevelError


class BoxobanFormatError(ValueError):
    """A Boxoban file is malformed. The message names the file, puzzle number and line."""


def read_boxoban(path: str | Path) -> list[Level]:
    """Read every level in a Boxoban file, or in every ``*.txt`` file of a directory."""
    return [level for _, level in read_boxoban_puzzles(path)]


def read_boxoban_puzzles(path: str | Path) -> list[tuple[str, Level]]:
    """Like `read_boxoban`, with where each level is ("FILE: puzzle 'N' (line L)"), for errors about one level."""
    path = Path(path).expanduser()
    if path.is_dir():
        # Only regular files: a folder named *.txt would raise IsADirectoryError, and reading a FIFO never returns.
        files = sorted(file for file in path.rglob("*.txt") if file.is_file())
        if not files:
            raise BoxobanFormatError(f"{path}: directory holds no *.txt level files")
        return [puzzle for file in files for puzzle in _read_file(file)]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Boxoban file or directory")
    return _read_file(path)


def _read_file(path: Path) -> list[tuple[str, Level]]:
    try:
        # utf-8-sig: editors on Windows start UTF-8 files with a byte-order mark, which would hide the first header.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise BoxobanFormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
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
            levels.append((f"{path}: puzzle '{header}' (line {header_line})", Level.from_rows(rows)))
        except LevelError as err:
            raise BoxobanFormatError(f"{path}: puzzle '{header}' (line {header_line}): {err}") from None

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
