"""Trajectory files: JSONL, one record a line, gzip-compressed where the name ends in .gz. Writing that never
loses an earlier episode (`TrajectoryWriter`, `replacing_writer`), reading that survives a write cut short
(`read_trajectories`), and trimming a resumed run's file (`trim_trajectories`)."""

from __future__ import annotations

import codecs
import contextlib
import errno
import gc
import gzip
import json
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .records import _NDARRAY, Episode, TrajectoryFormatError, TrajectoryWarning, _is

#: The file in a run folder that a trainer's recorded episodes go to.
RUN_TRAJECTORIES = "trajectories.jsonl.gz"
#: Where runs recorded before their recordings were compressed; resuming such a run continues this file.
LEGACY_RUN_TRAJECTORIES = "trajectories.jsonl"
#: zlib level of .gz trajectory files. On PPO's Sokoban records of format /1 (1.7 KB of JSON a step, which took 68 µs
#: to encode) level 6, gzip's default, compressed 47x for 4.6 µs a step; level 1 only 15x for 2.6 µs; level 9 71x for
#: 12.6 µs. Format /2's base64 arrays (1.1 KB a step) compress 49x at level 6.
GZIP_LEVEL = 6
#: JSON a `TrajectoryWriter` gathers into one gzip member before writing it. Members compress alone: 1 MiB ones
#: come within 2% of compressing the whole file at once, one member per PPO episode 13% short. It also bounds what
#: opening a file for append decompresses to check its end.
GZIP_MEMBER_BYTES = 1 << 20


def is_gzipped(path: str | Path) -> bool:
    """Whether a trajectory file at `path` is gzip-compressed JSONL: its name ends in .gz."""
    return str(path).lower().endswith(".gz")


def run_trajectories(run_dir: str | Path, *, resumed: bool) -> Path:
    """The trajectory file of the run in `run_dir`: `RUN_TRAJECTORIES`, except that a resumed run recorded before
    recordings were compressed continues its plain `LEGACY_RUN_TRAJECTORIES` rather than starting a second file."""
    run_dir = Path(run_dir)
    legacy = run_dir / LEGACY_RUN_TRAJECTORIES
    if resumed and legacy.is_file() and not (run_dir / RUN_TRAJECTORIES).exists():
        return legacy
    return run_dir / RUN_TRAJECTORIES


def remove_run_trajectories(run_dir: str | Path) -> None:
    """Delete a run folder's trajectory files, the compressed and the legacy plain one, with their `.partial` and
    `.damaged`."""
    for name in (RUN_TRAJECTORIES, LEGACY_RUN_TRAJECTORIES):
        for suffix in ("", ".partial", ".damaged"):
            (Path(run_dir) / (name + suffix)).unlink(missing_ok=True)


class TrajectoryWriter:
    """Appends episodes to a JSONL file, one line each; a path ending in .gz gets gzip-compressed JSONL.

    An episode that cannot be serialised or written leaves the file as it was, so earlier episodes are never lost.
    A plain file gets each episode straight away (no buffer to flush), and a process killed mid-write leaves at most
    the last line cut short. A .gz file gets the episodes in gzip members, which gzip readers read as one stream:
    the writer gathers them and writes one member at `flush()`, at `close()` (the end of a `with` block) and once
    `GZIP_MEMBER_BYTES` of JSON wait, so the episodes of a block compress together; a process killed before then
    loses the ones gathered, and one killed mid-member leaves that member cut short.

    Appending to a file that ends cut short first moves the cut-short line to `<path>.partial` (with a
    `TrajectoryWarning`), so new episodes start on a line of their own. For a .gz file that check decompresses
    only the last member or two (at most `GZIP_MEMBER_BYTES` of JSON each where this class wrote them); a member
    cut short has its complete records written again as a member of their own, and its cut-short line (as text)
    moved to `<path>.partial`; one that fails its checks (a bad checksum) is moved as it was to `<path>.damaged`.
    So nothing is ever appended after damaged data. One writer per file at a
    time. Use as a context manager, or call `close()`.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self._fd: int | None = None
        self.path = Path(path)
        self.gzipped = is_gzipped(self.path)
        self._pending: list[bytes] = []  # encoded lines of the next gzip member
        self._pending_bytes = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_APPEND)
            self._fd = os.open(self.path, flags, 0o644)
            size = os.fstat(self._fd).st_size
            if not overwrite and size:  # appending to what an earlier writer, perhaps killed, left
                self._repair_gzip_end(size) if self.gzipped else self._end_on_a_newline(size)
        except BaseException as error:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if not isinstance(error, OSError):
                raise
            raise type(error)(error.errno, f"cannot write trajectories to {self.path}: {error.strerror}; "
                              "give a file path in a writable folder") from None

    def _end_on_a_newline(self, size: int) -> None:
        assert self._fd is not None
        with self.path.open("rb") as file:
            start = _rfind(file, b"\n", size) + 1  # after the last newline (0 where there is none)
            if start == size:
                return
            file.seek(start)
            tail = file.read(size - start)
        if _is_record(tail):
            os.write(self._fd, b"\n")  # a complete record without its newline
        else:
            os.ftruncate(self._fd, start)
            self._set_aside(tail, f"ended in a record cut short ({len(tail)} bytes, as after an interrupted write); "
                            f"moved it")

    def _repair_gzip_end(self, size: int) -> None:
        assert self._fd is not None
        with self.path.open("rb") as file:
            end = _end_of_last_gzip_member(file, size)
            if end == size:
                return
            file.seek(0)
            if end == 0 and not _GZIP_MAGIC.startswith(file.read(len(_GZIP_MAGIC))):  # never cut away a non-gzip file
                raise TrajectoryFormatError(_not_gzip(self.path, "it does not start with gzip's magic bytes"))
            file.seek(end)
            lines = _Lines(self.path, file, gzipped=True)
            complete: list[bytes] = []
            damaged = False
            try:
                complete.extend(lines)
            except TrajectoryFormatError:  # damaged, not cut short (a bad checksum, say): trust none of it
                damaged = True
                file.seek(end)
                with open(f"{self.path}.damaged", "ab") as kept:  # its bytes as they were, for a person to look at
                    kept.write(file.read())
        if damaged:
            complete, tail = [], b""
        else:
            tail = complete.pop() if complete and not complete[-1].endswith(b"\n") else b""
        if tail and _is_record(tail):
            complete.append(tail + b"\n")
            tail = b""
        os.ftruncate(self._fd, end)
        what = (f"ended in a damaged gzip member ({size - end} bytes from byte {end}, which fail its checks; moved "
                f"as they were to {self.path}.damaged)" if damaged else
                f"ended in a gzip member cut short ({size - end} bytes from byte {end}, as after an interrupted write)")
        if complete:
            self._pending = complete
            try:
                self.flush()
            except BaseException:  # the cut member is gone from the file: keep its records where a person finds them
                with contextlib.suppress(OSError), open(f"{self.path}.partial", "ab") as aside:
                    aside.write(b"".join(complete) + (tail + b"\n" if tail else b""))
                self._pending, self._pending_bytes = [], 0
                raise
            what += f"; wrote the complete records it held ({len(complete)}) again"
        if tail:
            self._set_aside(tail, f"{what}; moved its cut-short line")
        else:
            warnings.warn(TrajectoryWarning(f"{self.path} {what}; appending after the complete records"), stacklevel=3)

    def _set_aside(self, tail: bytes, what: str) -> None:
        """Append a cut-short line to `<path>.partial` and warn; `what` says what happened and what moved."""
        with open(f"{self.path}.partial", "ab") as aside:
            aside.write(tail + b"\n")
        warnings.warn(TrajectoryWarning(f"{self.path} {what} to {self.path}.partial and appending after the complete "
                                        "records"), stacklevel=4)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(self, episode: Episode) -> None:
        if self._fd is None:
            raise ValueError(f"the trajectory writer for {self.path} is closed")
        with _without_gc():
            data = episode.to_dict()
            text = json.dumps(data, ensure_ascii=False) + "\n"
        try:
            line = text.encode("utf-8")
        except UnicodeEncodeError:  # found only now, as checking every string up front would slow every write
            raise TypeError(_unencodable_text(data, "episode")) from None
        self._write_line(line)

    def _write_line(self, line: bytes) -> None:
        if not self.gzipped:
            self._append(line)
            return
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= GZIP_MEMBER_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the episodes a .gz writer gathered as one gzip member (plain writers have nothing to flush). If the
        write fails the file is left as it was and the episodes stay gathered, for the next flush or `close()`."""
        if not self._pending:
            return
        self._append(gzip.compress(b"".join(self._pending), compresslevel=GZIP_LEVEL, mtime=0))
        self._pending, self._pending_bytes = [], 0

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        size = os.fstat(self._fd).st_size
        written = 0
        try:
            while written < len(view):
                written += os.write(self._fd, view[written:])
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # drop what part of it was written
            raise

    def close(self) -> None:
        """Write what a .gz writer gathered and close the file; closing twice is harmless."""
        if self._fd is not None:
            try:
                self.flush()
            finally:
                fd, self._fd = self._fd, None
                os.close(fd)

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _unencodable_text(value: Any, where: str) -> str:
    """The message for the first string (or key) in encoded record data that UTF-8 cannot encode: a lone surrogate
    such as "\\ud800", as text decoded with errors="surrogateescape" or cut between a surrogate pair holds."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return (f"cannot store {where}: its text {value[max(0, error.start - 20):error.end + 20]!r} holds "
                    f"{value[error.start]!r} at index {error.start}, a lone surrogate that UTF-8 cannot encode; clean "
                    "it first, e.g. text.encode('utf-8', 'replace').decode()")
        return ""
    if isinstance(value, dict) and _NDARRAY in value:  # a stored numpy array: name its elements as a list's
        return _unencodable_text(value[_NDARRAY], where)
    if isinstance(value, dict):  # keys are strings: `_encode` refused others
        for key, item in value.items():
            if message := _unencodable_text(key, f"{where} (a key)") or _unencodable_text(item, f"{where}.{key}"):
                return message
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if message := _unencodable_text(item, f"{where}[{i}]"):
                return message
    return ""


def _is_record(line: bytes) -> bool:
    try:
        Episode.from_dict(json.loads(line.decode("utf-8")))
    except (ValueError, TypeError, RecursionError):
        return False
    return True


_GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1, ID2 and the deflate method, with which every gzip member starts
_CHUNK = 1 << 16


def _end_of_last_gzip_member(file: IO[bytes], size: int) -> int:
    """Where the last complete gzip member of `file` ends (0 if none does): `size` unless the file ends damaged.

    Walks back over the places a member may start (the magic bytes, which compressed data holds by chance too) and
    decompresses from each until one holds a complete member, with its checksum: a file that ends cleanly does at
    the last member's start, one cut short at the member before.
    """
    before = size
    while (start := _rfind(file, _GZIP_MAGIC, before)) >= 0:
        file.seek(start)
        decompressor = zlib.decompressobj(wbits=31)
        with contextlib.suppress(zlib.error):
            while not decompressor.eof and (chunk := file.read(_CHUNK)):
                decompressor.decompress(chunk)
        if decompressor.eof:
            return file.tell() - len(decompressor.unused_data)
        before = start + len(_GZIP_MAGIC) - 1
    return 0


def _rfind(file: IO[bytes], needle: bytes, before: int) -> int:
    """The offset of the last `needle` in `file` that ends by offset `before`, or -1."""
    while before >= len(needle):
        start = max(0, before - _CHUNK)
        file.seek(start)
        found = file.read(before - start).rfind(needle)
        if found >= 0:
            return start + found
        if start == 0:
            break
        before = start + len(needle) - 1
    return -1


class _Lines:
    """The lines of an open trajectory file from its position on, decompressed when `gzipped`, each with its
    newline but perhaps the last. Gzip data that ends inside a member (a write cut short) ends the lines there and
    sets `cut` to the member's offset; other damage raises `TrajectoryFormatError`."""

    def __init__(self, path: Path, file: IO[bytes], *, gzipped: bool) -> None:
        self.path, self.file, self.gzipped = path, file, gzipped
        self.cut: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        if not self.gzipped:
            yield from self.file
            return
        pending: list[bytes] = []  # the pieces of a line that spans chunks
        for chunk in self._inflate():
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                pending.append(chunk[start:end + 1])
                yield b"".join(pending)
                pending.clear()
                start = end + 1
            if start < len(chunk):
                pending.append(chunk[start:])
        if pending:
            yield b"".join(pending)

    def _inflate(self) -> Iterator[bytes]:
        position = member = self.file.tell()
        decompressor, data = None, b""
        while data or (data := self.file.read(_CHUNK)):
            if decompressor is None:
                decompressor, member = zlib.decompressobj(wbits=31), position
            try:
                out = decompressor.decompress(data)
            except zlib.error as error:
                if self._only_zeros_from(member):  # a crash can leave a file's end zero-filled (ext4, XFS): cut short
                    self.cut = member
                    return
                raise TrajectoryFormatError(self._damage(member, error)) from None
            if out:
                yield out
            if decompressor.eof:
                position += len(data) - len(decompressor.unused_data)
                decompressor, data = None, decompressor.unused_data
            else:
                position, data = position + len(data), b""
        if decompressor is not None:
            self.cut = member

    def _only_zeros_from(self, offset: int) -> bool:
        self.file.seek(offset)
        while chunk := self.file.read(_CHUNK):
            if chunk.strip(b"\0"):
                return False
        return True

    def _damage(self, member: int, error: zlib.error) -> str:
        if member == 0:
            self.file.seek(0)
            if self.file.read(2) != _GZIP_MAGIC[:2]:
                return _not_gzip(self.path, str(error))
        return (f"{self.path}: the gzip member at byte {member} is damaged ({error}), so what follows it cannot be "
                f"read; the records before it are intact: keep them by cutting the file there (truncate -s {member} "
                f"{self.path}), or move the file aside")


def _not_gzip(path: Path, why: str) -> str:
    return (f"{path} is not gzip-compressed ({why}); a trajectory path ending in .gz holds gzip-compressed JSONL: "
            "rename a plain JSONL file so that its name does not end in .gz")


def check_output_path(path: str | Path, flag: str) -> Path:
    """`path` if a command may write a trajectory file there (replacing what is there): its name ends in .jsonl or
    .jsonl.gz, and it is not one of a run folder's own logs, which a typo would otherwise wipe (a run's checkpoint
    and config already fail the first rule). Raises ValueError naming `flag` otherwise."""
    path = Path(path)
    if not path.name.endswith((".jsonl", ".jsonl.gz")) or path.name.startswith("."):
        raise ValueError(f"{flag} {path}: name a trajectory file ending in .jsonl (or .jsonl.gz to compress it)")
    run_logs = {"metrics.jsonl", RUN_TRAJECTORIES, LEGACY_RUN_TRAJECTORIES}
    if path.name in run_logs and (path.parent / "config.json").is_file():
        raise ValueError(f"{flag} {path} is the run folder's own {path.name}, which this would replace; choose "
                         "another file name")
    return path


@contextlib.contextmanager
def replacing_writer(path: str | Path) -> Iterator[TrajectoryWriter]:
    """A writer into a temporary file beside `path` that replaces `path` only when the block ends without an
    error, so a failed run (bad arguments, a crash, Ctrl-C) leaves an earlier recording at `path` as it was.
    `path` must pass `check_output_path`."""
    path = check_output_path(path, "record")
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"cannot write trajectories to {path}: it is a folder; give a file path "
                                "in a writable folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _temporary_beside(path)
    except OSError as error:
        raise type(error)(error.errno, f"cannot write trajectories to {path}: {error.strerror}; give a file path "
                          "in a writable folder") from None
    writer = None
    try:
        writer = TrajectoryWriter(temporary, overwrite=True)
        yield writer
        writer.close()
        os.replace(temporary, path)
    finally:
        if writer is not None:
            writer.close()
        temporary.unlink(missing_ok=True)


def _temporary_beside(path: Path) -> Path:
    """A new empty file in `path`'s folder for what will replace `path`, with a name no other writer gets (two
    recordings to one path at once each write their own) and no user file has (it starts with a dot, which
    `check_output_path` refuses), ending in .gz where `path` does, which says how to write it."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".gz" if is_gzipped(path) else "")
    os.close(fd)
    os.chmod(name, 0o644 & ~_umask())  # as a new file gets: mkstemp gives 0600, for its owner alone
    return Path(name)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _without_gc() -> Iterator[None]:
    """Encoding a record makes thousands of small lists (an array observation's rows), and every 700 of them start
    a garbage collection that scans the whole process: a trainer's many objects made writing PPO's records 1.6x
    slower. The encoded record holds no reference cycles, so the collections found nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_trajectories(path: str | Path, *, progress: Callable[[int, int], None] | None = None) -> Iterator[Episode]:
    """Episodes from a JSONL file (gzip-compressed where the name ends in .gz), in order; a malformed line raises
    `TrajectoryFormatError` naming file and line (of the decompressed text).

    A last line cut short (no newline, not valid JSON: a write interrupted by a crash), or a .gz file's last gzip
    member cut short, is skipped with a `TrajectoryWarning`, so every complete episode can still be read.
    `progress(bytes_read, file_size)` is called after each episode (bytes of the file as stored, compressed or not;
    read ahead in blocks, so the count runs a little ahead of the episodes).
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not a trajectory file; give the .jsonl or .jsonl.gz file in it")
    if not path.is_file():
        raise FileNotFoundError(f"no trajectory file at {path}; record one with `creditgym train ... --record-envs N` "
                                "(PPO), `--record-trajectories` (LLM algos), `creditgym eval RUN --record FILE` or, "
                                "in Python, creditgym.trajectories.record_episodes(..., path=...)")
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        lines = _Lines(path, file, gzipped=is_gzipped(path))
        for number, raw in enumerate(lines, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if not raw.strip():
                continue
            try:
                data = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                if not raw.endswith(b"\n"):
                    _warn_cut_short(path, number)
                    return
                raise TrajectoryFormatError(f"{path}:{number}: not UTF-8 text ({error.reason}){_gzip_hint(path, raw)}"
                                            ) from None
            except json.JSONDecodeError as error:
                if not raw.endswith(b"\n"):
                    _warn_cut_short(path, number)
                    return
                raise TrajectoryFormatError(f"{path}:{number}: not valid JSON ({error.msg} at column "
                                            f"{error.colno}){_gzip_hint(path, raw)}") from None
            except ValueError as error:  # a number past Python's limit on integer digits (4,300 by default)
                raise TrajectoryFormatError(f"{path}:{number}: not a readable record ({error})") from None
            except RecursionError:
                raise TrajectoryFormatError(f"{path}:{number}: the JSON is nested too deeply") from None
            try:
                episode = Episode.from_dict(data)
            except (ValueError, TypeError) as error:
                raise TrajectoryFormatError(f"{path}:{number}: {error}") from None
            except RecursionError:  # json's parser nests deeper than Python's recursion that reads the record
                raise TrajectoryFormatError(f"{path}:{number}: the JSON is nested too deeply") from None
            if progress is not None:
                progress(min(file.tell(), size), size)
            yield episode
        if lines.cut is not None:
            warnings.warn(TrajectoryWarning(f"{path}: its last gzip member, from byte {lines.cut}, is cut short, as "
                                            "after an interrupted write; the episodes before the cut were read"),
                          stacklevel=2)


def _gzip_hint(path: Path, raw: bytes) -> str:
    if raw.startswith(_GZIP_MAGIC[:2]) and not is_gzipped(path):
        return "; the file is gzip-compressed: name it with .gz at the end to read it"
    return ""


def _warn_cut_short(path: Path, number: int) -> None:
    warnings.warn(TrajectoryWarning(f"{path}:{number}: skipped the last line, which is cut short, as after an "
                                    "interrupted write; the episodes before it were read"), stacklevel=3)


def load_trajectories(path: str | Path) -> list[Episode]:
    return list(read_trajectories(path))


def trim_trajectories(path: str | Path, last: float, *, key: str = "iteration") -> int:
    """Cut `path` before its first record whose `metadata[key]` is past `last`; returns the lines dropped.

    For a resumed run, which records the iterations after its checkpoint again: the records are in the order
    they were written, so everything from the first later one on goes. A last line cut short (a write
    interrupted after the checkpoint) goes too. Records without the key are kept. A missing file is left alone.
    A .gz file is written anew (in `GZIP_MEMBER_BYTES` members, through a temporary file) when anything goes or its
    last member is cut short, so that later appends follow complete members only; damage elsewhere in it raises a
    `TrajectoryFormatError`.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    gzipped = is_gzipped(path)
    cut, dropped, offset = None, 0, 0
    with path.open("rb") as file:
        lines = _Lines(path, file, gzipped=gzipped)
        for raw in lines:
            if cut is None:
                value = None
                if raw.endswith(b"\n"):
                    with contextlib.suppress(ValueError, TypeError, AttributeError, RecursionError):
                        value = json.loads(raw).get("metadata", {}).get(key)
                if not raw.endswith(b"\n") or (_is(value, float) and value > last):
                    cut = offset
            if cut is not None:
                dropped += bool(raw.strip())
            offset += len(raw)
    if not gzipped:
        if cut is not None:
            os.truncate(path, cut)
        return dropped
    if cut is None and lines.cut is None:
        return 0
    keep = offset if cut is None else cut
    rewritten = _temporary_beside(path)
    try:
        with path.open("rb") as file, TrajectoryWriter(rewritten, overwrite=True) as writer:
            for raw in _Lines(path, file, gzipped=True):
                if keep <= 0:
                    break
                writer._write_line(raw)
                keep -= len(raw)
        os.replace(rewritten, path)
    finally:
        rewritten.unlink(missing_ok=True)
    return dropped
