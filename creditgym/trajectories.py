"""Trajectory records (JSONL, one episode a line) and offline re-scoring with another potential or estimator.

A record keeps, for each step, the observation (text or array), the action, the reward components, the info and,
when the env declares one, its `state()`, so potentials can be recomputed offline. LLM policies can add the
prompt and response token ids and logprobs. Each line also holds the env id, the reset seed and the creditgym
version.

    episodes = record_episodes(env, policy, n=8, seed=0, path="runs/traj.jsonl")
    episodes = [add_shaping(e, get_potential("box_distance").offline, gamma=0.99) for e in episodes]

A path ending in .gz holds gzip-compressed JSONL, for writing, reading, trimming and re-scoring alike. Runs record
to one (`RUN_TRAJECTORIES`): PPO's Sokoban records shrink 47 times so, from 1.7 KB to 37 bytes a step.

Values are stored as JSON, with two departures from strict JSON (RFC 8259) that Python's `json` reads back:
NaN and ±infinity (a reward, say) are written as the bare tokens `NaN`, `Infinity` and `-Infinity`, which jq
and JavaScript's JSON.parse refuse. A numpy array (or tensor) is an object `{"__ndarray__": nested lists, "dtype":
..., "shape": [...]}`; an array without "shape" (records written before it was stored) reads as it always did.

The LLM trainer's rollouts become records with `llm_episode_records` (`LLMTrainConfig.record_trajectories`
writes them to the run folder's trajectories.jsonl.gz). PPO records the episodes of its first
`PPOConfig.record_envs` envs with `VectorRecorder`, which builds records from the batched tensors of a vector env.
"""

from __future__ import annotations

import array
import codecs
import contextlib
import dataclasses
import enum
import errno
import gc
import gzip
import hashlib
import importlib
import json
import math
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

import creditgym
from creditgym import credit
from creditgym.envs.sokoban.level import BOXOBAN_SYMBOLS, NUM_TILES, Tile
from creditgym.wrappers.potentials import RecordPotential, get_potential, potential_names

if TYPE_CHECKING:  # the LLM package imports transformers, which reading or re-scoring records never needs
    from creditgym.agents.llm.rollout import Episode as RolloutEpisode

FORMAT = "creditgym.trajectory/1"
#: The file in a run folder that a trainer's recorded episodes go to.
RUN_TRAJECTORIES = "trajectories.jsonl.gz"
#: Where runs recorded before their recordings were compressed; resuming such a run continues this file.
LEGACY_RUN_TRAJECTORIES = "trajectories.jsonl"
#: zlib level of .gz trajectory files. On PPO's Sokoban records (1.7 KB of JSON a step, which takes 68 µs to encode)
#: level 6, gzip's default, compresses 47x for 4.6 µs a step; level 1 only 15x for 2.6 µs; level 9 71x for 12.6 µs.
GZIP_LEVEL = 6
#: JSON a `TrajectoryWriter` gathers into one gzip member before writing it. Members compress alone: 1 MiB ones
#: come within 2% of compressing the whole file at once, one member per PPO episode 13% short. It also bounds what
#: opening a file for append decompresses to check its end.
GZIP_MEMBER_BYTES = 1 << 20
ESTIMATORS = ("grpo", "dr_grpo", "rloo", "gae", "reinforce_pp", "reward_to_go")
_NDARRAY = "__ndarray__"
#: The most memory the numpy string arrays of one record may take once read (see `_text_array_bytes`).
MAX_TEXT_ARRAY_BYTES = 1 << 28


class TrajectoryFormatError(ValueError):
    """A trajectory file has a line that is not a valid record; the message gives the file and line number."""


class TrajectoryWarning(UserWarning):
    """A trajectory file ends in a record cut short (an interrupted write); the complete records are still read."""


@dataclass
class Step:
    """One transition: the action taken and what followed it."""

    action: Any
    observation: Any
    """The observation after the action."""
    reward_components: dict[str, float]
    terminated: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)
    """The step's info without `reward_components` (kept above)."""
    state: dict[str, Any] | None = None
    """`env.unwrapped.state()` after the action, when the env declares it."""
    advantage: float | None = None
    """Set by offline re-scoring with an estimator."""
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    logprobs: list[float] | None = None
    """Per response token, for LLM policies."""

    @property
    def reward(self) -> float:
        return float(sum(self.reward_components.values()))


@dataclass
class Episode:
    """One episode: the reset (observation, info, state) and its steps."""

    env_id: str
    seed: int | None
    observation: Any
    """The first observation, from reset."""
    steps: list[Step]
    info: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    version: str = creditgym.__version__
    """creditgym version that recorded it."""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def total_reward(self) -> float:
        return sum(step.reward for step in self.steps)

    def channel_sums(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        for step in self.steps:
            for name, value in step.reward_components.items():
                sums[name] = sums.get(name, 0.0) + value
        return sums

    @property
    def success(self) -> bool:
        return bool(self.steps and self.steps[-1].info.get("success", False))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data; a TypeError names the field that cannot be stored."""
        data = {"format": FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        data["steps"] = [{f.name: getattr(s, f.name) for f in dataclasses.fields(s)} for s in self.steps]
        return _encode(data, "episode")

    @classmethod
    def from_dict(cls, data: Any) -> Episode:
        """Inverse of `to_dict`; a ValueError says what is missing or malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"a record must be a JSON object, got {type(data).__name__}")
        if "format" not in data:
            raise ValueError(f"it has no 'format' field, so it is not a trajectory record (a metrics.jsonl row, say); "
                             f"trajectory files hold {FORMAT!r} records")
        if data.get("format") != FORMAT:
            written = data.get("version")
            written = f", written by creditgym {written}" if isinstance(written, str) else ""
            fix = ("read it with that creditgym, or upgrade this one (pip install -U creditgym)"
                   if str(data.get("format")).startswith(FORMAT.split("/")[0] + "/") else
                   "it is not a creditgym trajectory record")
            raise ValueError(f"format is {data.get('format')!r}{written}; this creditgym ({creditgym.__version__}) "
                             f"reads {FORMAT!r} records: {fix}")
        _require(data, "episode", {"env_id": str, "observation": object, "steps": list, "version": str})
        _optional(data, "episode", {"seed": int, "info": dict, "state": dict, "metadata": dict}, nullable={"seed",
                                                                                                        "state"})
        text_bytes = _text_array_bytes(data)
        if text_bytes > MAX_TEXT_ARRAY_BYTES:
            raise ValueError(f"its numpy string arrays would take {text_bytes / 2**30:.3g} GiB once read (their "
                             f"dtypes, such as <U100000000, set a fixed width per string); at most "
                             f"{MAX_TEXT_ARRAY_BYTES // 2**20} MiB are read, so the record is damaged")
        steps = []
        known = {f.name for f in dataclasses.fields(Step)}
        for t, raw in enumerate(data["steps"]):
            where = f"steps[{t}]"
            if not isinstance(raw, dict):
                raise ValueError(f"{where} must be an object, got {type(raw).__name__}")
            _require(raw, where, {"action": object, "observation": object, "reward_components": dict,
                                  "terminated": bool, "truncated": bool})
            _optional(raw, where, {"info": dict, "state": dict, "advantage": float, "prompt_ids": list,
                                   "response_ids": list, "logprobs": list},
                      nullable={"state", "advantage", "prompt_ids", "response_ids", "logprobs"})
            for name, kind in (("prompt_ids", int), ("response_ids", int), ("logprobs", float)):
                if raw.get(name) is not None and not all(_is(v, kind) for v in raw[name]):
                    raise ValueError(f"{where}.{name} must be a list of {_KIND_NAMES[kind]}")
            values = {k: _decode(v, f"{where}.{k}") for k, v in raw.items() if k in known}
            values["reward_components"] = _rewards(raw["reward_components"], where)
            steps.append(Step(**values))
        known = {f.name for f in dataclasses.fields(cls)} - {"steps"}
        return cls(steps=steps, **{k: _decode(v, f"episode.{k}") for k, v in data.items() if k in known})


_KIND_NAMES = {int: "integers", float: "numbers", dict: "objects", list: "lists", str: "strings", bool: "booleans"}


def _is(value: Any, kind: type) -> bool:
    """JSON type check: booleans are not numbers, and integers are numbers."""
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


def _require(data: dict[str, Any], where: str, fields: dict[str, type]) -> None:
    for name, kind in fields.items():
        if name not in data:
            raise ValueError(f"{where} has no {name!r}")
        if not _is(data[name], kind):
            raise ValueError(f"{where}.{name} must be {kind.__name__}, got {type(data[name]).__name__}")


def _optional(data: dict[str, Any], where: str, fields: dict[str, type], nullable: set[str]) -> None:
    for name, kind in fields.items():
        if name not in data or (data[name] is None and name in nullable):
            continue
        if not _is(data[name], kind):
            allowed = f"{kind.__name__} or null" if name in nullable else kind.__name__
            raise ValueError(f"{where}.{name} must be {allowed}, got {type(data[name]).__name__}")


def _rewards(components: dict[str, Any], where: str) -> dict[str, float]:
    """Reward components as floats (NaN and ±inf, which the writer can store, are kept)."""
    out = {}
    for name, value in components.items():
        try:
            if not _is(value, float):
                raise TypeError
            out[name] = float(value)
        except (TypeError, OverflowError):
            raise ValueError(f"{where}.reward_components[{name!r}] must be a number that fits a float, "
                             f"got {str(value)[:40]}") from None
    return out


def _storable_dtype(dtype: np.dtype) -> bool:
    """Numpy dtypes whose `tolist()` gives JSON values (booleans, integers, float64 or narrower, unicode)."""
    return dtype.kind in "biuU" or (dtype.kind == "f" and dtype.itemsize <= 8)


# Stored as they are, without a call (and the path string for its error message) per item: records of thousands of
# steps hold mostly these. Exact types, as subclasses such as enums and numpy scalars need converting.
_PLAIN = frozenset((type(None), bool, int, float, str))


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, np.generic):
        if not _storable_dtype(value.dtype):
            raise TypeError(f"cannot store {where} (numpy {value.dtype}) in a trajectory record; convert it to "
                            "a number or string")
        return value.item()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16 or (value.is_floating_point() and value.element_size() == 1):
            value = value.float()  # numpy has no bfloat16 or float8
        try:
            value = value.numpy()
        except TypeError:
            raise TypeError(f"cannot store {where} (tensor of {value.dtype}) in a trajectory record") from None
    if isinstance(value, np.ndarray):
        # The shape, as nested lists lose it: an empty (0, 3) array is [], and an object array's list elements would
        # read back as more dimensions.
        shape = list(value.shape)
        if value.dtype.kind == "O":
            return {_NDARRAY: _encode(value.tolist(), where), "dtype": "object", "shape": shape}
        if not _storable_dtype(value.dtype):
            raise TypeError(f"cannot store {where} (numpy array of {value.dtype}) in a trajectory record; convert "
                            "it to a numeric or string array")
        return {_NDARRAY: value.tolist(), "dtype": str(value.dtype), "shape": shape}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"cannot store {where}: its key {key!r} is not a string")
        if _NDARRAY in value:
            raise TypeError(f"cannot store {where}: the key {_NDARRAY!r} is reserved for numpy arrays")
        return {key: item if type(item) in _PLAIN else _encode(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [item if type(item) in _PLAIN else _encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, enum.Enum):
        return _encode(value.value, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode(dataclasses.asdict(value), where)
    raise TypeError(f"cannot store {where} ({type(value).__name__}) in a trajectory record; convert it to "
                    "strings, numbers, lists, dicts or numpy arrays")


def _text_array_bytes(value: Any) -> int:
    """The memory the numpy string arrays stored in `value` take once decoded, counted before decoding them.

    A string array is fixed-width: numpy gives every element the declared dtype's width (or the longest string's),
    so a few bytes of JSON such as `{"__ndarray__": [""], "dtype": "<U100000000"}` would allocate 400 MB.
    """
    if isinstance(value, list):
        return sum(_text_array_bytes(item) for item in value)
    if not isinstance(value, dict):
        return 0
    if _NDARRAY not in value:
        return sum(_text_array_bytes(item) for item in value.values())
    try:
        dtype = np.dtype(value.get("dtype"))
    except (TypeError, ValueError):
        return 0  # _decode refuses it
    if dtype.kind != "U":
        return _text_array_bytes(value[_NDARRAY]) if dtype.kind == "O" else 0
    leaves = list(_leaves(value[_NDARRAY]))
    # Numbers become strings too; 32 characters cover any float's repr.
    width = dtype.itemsize or 4 * max((len(leaf) if isinstance(leaf, str) else 32 for leaf in leaves), default=0)
    return len(leaves) * width


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        if _NDARRAY in value:
            dtype = value.get("dtype")
            try:
                if not isinstance(dtype, str) or not _storable_dtype(np.dtype(dtype)) and dtype != "object":
                    raise TypeError(f"unsupported dtype {str(dtype)[:40]!r}")
                return _array(_decode(value[_NDARRAY], where) if dtype == "object" else value[_NDARRAY], dtype,
                              value.get("shape"))
            except (TypeError, ValueError, OverflowError) as error:
                raise ValueError(f"{where} is not a valid stored numpy array ({error})") from None
        return {key: _decode(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _array(data: Any, dtype: str, shape: Any) -> np.ndarray:
    """A stored array from its nested lists; `shape` is None in records written before shapes were stored, which
    read as they always did (numpy infers the shape from the nesting)."""
    if shape is None:
        return np.asarray(data, dtype=dtype)
    if not isinstance(shape, list) or not all(_is(n, int) and n >= 0 for n in shape):
        raise ValueError(f"its shape must be a list of sizes, got {str(shape)[:40]}")
    shape = tuple(shape)
    if dtype != "object":
        array = np.asarray(data, dtype=dtype)
        if array.shape != shape and array.size == 0 == math.prod(shape):  # nested lists hold no empty dimension
            array = array.reshape(shape)
        if array.shape == shape:
            return array
    elif _nested_to(data, shape):  # element by element: numpy would make list elements into more dimensions
        array = np.empty(shape, dtype=object)
        for index in np.ndindex(shape):
            item = data
            for i in index:
                item = item[i]
            array[index] = item
        return array
    raise ValueError(f"its nested lists do not have its shape {list(shape)}")


def _nested_to(data: Any, shape: tuple[int, ...]) -> bool:
    """Whether `data` is nested lists exactly `shape` deep and wide (elements below may be anything)."""
    if not shape:
        return True
    return isinstance(data, list) and len(data) == shape[0] and all(_nested_to(item, shape[1:]) for item in data)


# -- files ------------------------------------------------------------------------------------------------------
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


# -- recording --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyOutput:
    """What an LLM policy returns instead of a bare action, so its tokens are recorded too."""

    action: Any
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    logprobs: list[float] | None = None


Policy = Callable[[Any, dict[str, Any]], Any]
"""(observation, info) -> action, or a `PolicyOutput`."""


def record_episodes(env: gym.Env, policy: Policy, n: int, seed: int, *, group_size: int = 1,
                    record_state: bool = True, path: str | Path | None = None,
                    metadata: dict[str, Any] | None = None) -> list[Episode]:
    """Play `n` episodes and return their records (also appended to `path` when given, one by one).

    Episode i resets with seed `seed + i // group_size`, so each group of `group_size` episodes shares a task
    (as GRPO/RLOO need); the action space is seeded with `seed`. The env's `state()` is recorded at reset and
    after every step when the env declares one and `record_state` is on. An env without
    `info["reward_components"]` is recorded with one channel, `reward`. Each episode is written when it ends (to a
    .gz path, gathered into gzip members as `TrajectoryWriter` does).
    """
    if n < 1 or group_size < 1:
        raise ValueError(f"n and group_size must be at least 1, got n={n}, group_size={group_size}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}; the seed fixes every episode")
    seed = int(seed)
    state_fn = getattr(env.unwrapped, "state", None) if record_state else None
    state_fn = state_fn if callable(state_fn) else None
    env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    env.action_space.seed(seed)
    writer = TrajectoryWriter(path) if path is not None else None
    episodes = []
    try:
        for i in range(n):
            episode_seed = seed + i // group_size
            obs, info = env.reset(seed=episode_seed)
            episode = Episode(env_id=env_id, seed=episode_seed, observation=obs, steps=[],
                              info=_without_components(info), state=state_fn() if state_fn else None,
                              metadata=dict(metadata or {}))
            done = False
            while not done:
                out = policy(obs, info)
                tokens = out if isinstance(out, PolicyOutput) else PolicyOutput(out)
                obs, reward, terminated, truncated, info = env.step(tokens.action)
                components = info.get("reward_components", {"reward": reward})
                episode.steps.append(Step(
                    action=tokens.action, observation=obs,
                    reward_components={k: float(v) for k, v in components.items()},
                    terminated=bool(terminated), truncated=bool(truncated), info=_without_components(info),
                    state=state_fn() if state_fn else None, prompt_ids=tokens.prompt_ids,
                    response_ids=tokens.response_ids, logprobs=tokens.logprobs,
                ))
                done = terminated or truncated
            if writer is not None:
                writer.write(episode)
            episodes.append(episode)
    finally:
        if writer is not None:
            writer.close()
    return episodes


def _without_components(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "reward_components"}


# -- recording vector envs (PPO) ---------------------------------------------------------------------------------
def reached_observations(obs: torch.Tensor, info: dict[str, Any], count: int) -> torch.Tensor:
    """The observation each of the first `count` envs of a same-step-autoreset vector env reached with this step.

    Where an episode ended that is its last observation (`info["final_obs"]`, whose rows follow the True entries of
    `info["_final_obs"]`), not the next episode's first, which `obs` holds there. Stays on the device, with no sync.
    """
    if "_final_obs" not in info:
        return obs[:count]
    ended = torch.as_tensor(info["_final_obs"], device=obs.device)
    rows = (ended.long().cumsum(0) - 1)[:count].clamp_(min=0)  # envs that did not end read any row, then drop it
    final = torch.as_tensor(info["final_obs"], device=obs.device).index_select(0, rows)
    return torch.where(ended[:count].view(-1, *[1] * (obs.dim() - 1)), final, obs[:count])


_BOXOBAN_TABLE = np.array([BOXOBAN_SYMBOLS[Tile(t)] for t in range(NUM_TILES)])


def sokoban_states(obs: np.ndarray | torch.Tensor, *, walled: bool = False) -> list[dict[str, Any]]:
    """The state of each board of a batch of Sokoban one-hot observations `(N, 7, H, W)`, as `SokobanEnv.state()`
    gives it (without `deadlock`, which the board alone does not tell), read off the observation.

    The batched Sokoban env has no per-board `state()`, and where an episode ends it has already loaded the next
    level, so its recordings take the board from what the policy saw: the whole room with `obs_mode="array"`, the
    window around the player with `"egocentric"`. A window's room can reach its edge, so pass `walled=True` for
    those: every board gets a ring of wall, which makes it an enclosed level, and all of a run's boards one shape
    (the solver potentials cache by shape and board). The Sokoban potentials give the same value on it as live.
    """
    boards = np.asarray(obs.detach().cpu() if isinstance(obs, torch.Tensor) else obs).argmax(1)
    if walled:
        boards = np.pad(boards, ((0, 0), (1, 1), (1, 1)), constant_values=Tile.WALL)
    count, height, width = boards.shape
    # One character per cell, then each row's characters read as one string.
    text = np.ascontiguousarray(_BOXOBAN_TABLE[boards]).view(f"<U{width}").reshape(count, height).tolist()
    player = ((boards == Tile.PLAYER) | (boards == Tile.PLAYER_ON_TARGET)).reshape(count, -1).argmax(1)
    players = np.stack(np.divmod(player, width), axis=1).tolist()
    is_box = (boards == Tile.BOX) | (boards == Tile.BOX_ON_TARGET)
    num_boxes = is_box.sum((1, 2))
    boxes = np.split(np.argwhere(is_box)[:, 1:], np.cumsum(num_boxes)[:-1])
    on_target = (boards == Tile.BOX_ON_TARGET).sum((1, 2)).tolist()
    return [{"board": text[i], "player": players[i], "boxes": boxes[i].tolist(), "boxes_on_target": on_target[i],
             "num_boxes": int(num_boxes[i])} for i in range(count)]


def _host(value: Any) -> np.ndarray:
    """A numpy copy (never a view of a buffer its owner will overwrite)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True).numpy()
    return np.array(value)


class VectorRecorder:
    """Trajectory records of the first envs of a vector env with same-step autoreset, built a block of steps at a time.

    `start` takes what `reset` returned for the recorded envs; each `add` takes a block of T steps of theirs, as
    (T, envs, ...) tensors or arrays, and returns the episodes that ended in it, in the order they ended (by step,
    then env). An episode in progress stays here until it ends: `state_dict` carries it through a checkpoint.
    `restart=False` records one episode per env (an evaluation), `True` every episode (training). `states` maps
    a batch of observations to one state dict each, e.g. `sokoban_states`, for envs whose potentials read it.
    The record's seed is `seed`; its metadata is its env's (by default its index, `env_index`) plus what `add`
    gives when it ends.
    """

    def __init__(self, env_id: str, seed: int | None, *, states: Callable[[np.ndarray], list[dict[str, Any]]] | None
                 = None, restart: bool = True) -> None:
        self.env_id, self.seed, self.states, self.restart = env_id, seed, states, restart
        self.episodes: list[Episode | None] = []
        self._metadata: list[dict[str, Any]] = []

    def start(self, obs: Any, *, masks: Any = None, metadata: Sequence[dict[str, Any]] | None = None) -> None:
        """Begin an episode in each recorded env from its reset observation (and action mask)."""
        obs = _host(obs)
        masks = None if masks is None else _host(masks)
        self._metadata = [dict(m) for m in metadata] if metadata is not None else [{"env_index": j}
                                                                                    for j in range(len(obs))]
        states = self.states(obs) if self.states else [None] * len(obs)
        self.episodes = [self._new(j, obs[j], None if masks is None else masks[j], states[j]) for j in range(len(obs))]

    def _new(self, env: int, obs: np.ndarray, mask: np.ndarray | None, state: dict[str, Any] | None) -> Episode:
        return Episode(env_id=self.env_id, seed=self.seed, observation=obs, steps=[],
                       info={} if mask is None else {"action_mask": mask}, state=state,
                       metadata=dict(self._metadata[env]))

    def add(self, *, actions: Any, reached: Any, next_obs: Any, terminated: Any, truncated: Any,
            components: dict[str, Any], success: Any = None, masks: Any = None,
            metadata: dict[str, Any] | None = None) -> list[Episode]:
        """Append a block of steps; returns the episodes that ended in it, with `metadata` added to theirs.

        Per step t and env: `reached` is the observation the action led to (`reached_observations`), `next_obs` the
        one the env returned (where the episode ended, the next episode's first), `masks` the action mask returned
        with it, `components` the reward channels (each (T, envs)), `success` the env's `info["success"]`.
        """
        actions, reached, next_obs = _host(actions), _host(reached), _host(next_obs)
        terminated, truncated = _host(terminated).astype(bool), _host(truncated).astype(bool)
        channels = {name: _host(value).astype(np.float64) for name, value in components.items()}
        success = None if success is None else _host(success).astype(bool)
        masks = None if masks is None else _host(masks)
        steps, envs = actions.shape
        done = terminated | truncated
        states: list[dict[str, Any] | None] = [None] * (steps * envs)
        if self.states:  # only for the envs recording an episode (after its one episode, an env of an evaluation stops)
            rows = [t * envs + j for t in range(steps) for j in range(envs) if self.episodes[j] is not None]
            if rows:
                flat = reached.reshape(steps * envs, *reached.shape[2:])
                for row, state in zip(rows, self.states(flat[rows]), strict=True):
                    states[row] = state
        finished = []
        for t in range(steps):
            for j in range(envs):
                episode = self.episodes[j]
                if episode is None:
                    continue
                info: dict[str, Any] = {}
                if success is not None:
                    info["success"] = bool(success[t, j])
                if masks is not None and not done[t, j]:  # an ended episode's mask is the next episode's
                    info["action_mask"] = masks[t, j]
                episode.steps.append(Step(
                    action=actions[t, j].item(), observation=reached[t, j],
                    reward_components={name: float(value[t, j]) for name, value in channels.items()},
                    terminated=bool(terminated[t, j]), truncated=bool(truncated[t, j]), info=info,
                    state=states[t * envs + j]))
                if done[t, j]:
                    episode.metadata.update(metadata or {})
                    finished.append(episode)
                    self.episodes[j] = None
                    if self.restart:
                        state = self.states(next_obs[t, j][None])[0] if self.states else None
                        self.episodes[j] = self._new(j, next_obs[t, j], None if masks is None else masks[t, j], state)
        return finished

    def state_dict(self) -> dict[str, Any]:
        """The episodes in progress, as JSON-ready records (so a checkpoint holds no creditgym classes)."""
        return {"episodes": [None if e is None else e.to_dict() for e in self.episodes], "metadata": self._metadata}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes = [None if e is None else Episode.from_dict(e) for e in state["episodes"]]
        self._metadata = [dict(m) for m in state["metadata"]]


def llm_episode_record(episode: RolloutEpisode, env_id: str, *, metadata: dict[str, Any] | None = None
                       ) -> Episode:
    """The trajectory record of one LLM rollout (`creditgym.agents.llm.rollout.Episode`).

    Step t holds turn t's reply as the action, the observation that followed it, the turn's reward components
    (the env's; learned rewards the trainer adds later are not in them) and, for the tokens, the context the
    reply was sampled from (`prompt_ids`: the whole segment before it, earlier turns included), the reply
    (`response_ids`) and its rollout logprobs. Info and env state are those a recording collector
    (`RolloutCollector(record=True)`) kept; without them a step's info holds `invalid_action` only, and the
    reset's info the instructions. The last step carries how the episode ended (terminated, or truncated when
    the env, max_turns or max_prompt_tokens cut it), and its info `success`, as an env's final step does. The
    seed is the group's reset seed; `metadata` gets the group index.
    """
    generated = [(segment, end) for segment in episode.segments for end in segment.turn_ends]
    if len(generated) != len(episode.turns):
        raise ValueError(f"the episode (group {episode.group}, seed {episode.seed}) has {len(episode.turns)} turns "
                         f"but its segments end {len(generated)} generations; it was not built by RolloutCollector")
    steps = []
    for t, (turn, (segment, end)) in enumerate(zip(episode.turns, generated, strict=True)):
        start = end + 1 - turn.num_tokens
        last = t == len(episode.turns) - 1
        info = _without_components(turn.info) if turn.info is not None else {"invalid_action": turn.invalid}
        if last:
            info.setdefault("success", episode.success)
        steps.append(Step(
            action=turn.action,
            observation=episode.final_observation if last else episode.turns[t + 1].observation,
            reward_components=dict(turn.reward_components) or {"reward": turn.reward},
            terminated=last and episode.terminated, truncated=last and episode.truncated, info=info,
            state=turn.state, prompt_ids=[int(i) for i in segment.token_ids[:start]],
            response_ids=[int(i) for i in segment.token_ids[start:end + 1]],
            logprobs=[float(x) for x in segment.logprobs[start:end + 1]],
        ))
    if episode.reset_info is not None:
        reset_info = _without_components(episode.reset_info)
    else:
        reset_info = {"instructions": episode.instructions}
        if episode.ground_truth is not None:
            reset_info["ground_truth"] = episode.ground_truth
    return Episode(env_id=env_id, seed=episode.seed,
                   observation=episode.turns[0].observation if episode.turns else episode.final_observation,
                   steps=steps, info=reset_info, state=episode.reset_state,
                   metadata={"group": episode.group, **(metadata or {})})


def llm_episode_records(episodes: Sequence[RolloutEpisode], env_id: str, *,
                        metadata: dict[str, Any] | None = None) -> list[Episode]:
    """`llm_episode_record` of each episode, e.g. of one `RolloutCollector.collect` batch."""
    return [llm_episode_record(episode, env_id, metadata=metadata) for episode in episodes]


# -- offline re-scoring -----------------------------------------------------------------------------------------
_GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")


def add_shaping(episode: Episode, potential: RecordPotential, gamma: float, *, channel: str = "shaping",
                replace: bool = False, scale: float = 1.0) -> Episode:
    """A copy of `episode` with F = γΦ(s') − Φ(s) in `channel`, Φ evaluated on the recorded observations/states.

    Φ(s') is 0 on termination and kept on truncation, and `scale` multiplies Φ, exactly as `PotentialShaping`
    does live. A potential that fails or does not return a finite number raises a ValueError naming the step.
    """
    values = _shaping_values(episode, potential, gamma, channel=channel, replace=replace, scale=scale)
    return _with_channel(episode, channel, values)


def _shaping_values(episode: Episode, potential: RecordPotential, gamma: float, *, channel: str, replace: bool,
                    scale: float) -> list[float]:
    """`add_shaping`'s F of each step: kept apart from the copy it makes so that `rescore_file` can keep the
    values alone between its two reads of a file."""
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if not replace and any(channel in step.reward_components for step in episode.steps):
        raise ValueError(f"the episode already has a {channel!r} channel; pass another channel name "
                         "(channel=..., --channel) or replace it (replace=True, --replace)")

    def phi(observation: Any, state: dict[str, Any] | None, where: str) -> float:
        try:
            value = float(potential(observation, state))
        except Exception as error:
            missing = ("; the record holds no env state there (the env declares no state(), it was recorded with "
                       "record_state=False, or its envs ran in Ray workers)" if state is None else "")
            raise ValueError(f"the potential failed on {where} of the episode with seed {episode.seed} "
                             f"({type(error).__name__}: {error}){missing}") from error
        if not np.isfinite(value):
            raise ValueError(f"the potential is {value} on {where} of the episode with seed {episode.seed}")
        return scale * value

    last = phi(episode.observation, episode.state, "the reset observation")
    values = []
    for t, step in enumerate(episode.steps):
        current = 0.0 if step.terminated else phi(step.observation, step.state, f"steps[{t}]")
        values.append(gamma * current - last)
        last = current
    return values


def _with_channel(episode: Episode, channel: str, values: Iterable[float]) -> Episode:
    """A copy of `episode` with one value a step in reward channel `channel`."""
    steps = [dataclasses.replace(step, reward_components={**step.reward_components, channel: value})
             for step, value in zip(episode.steps, values, strict=True)]
    return dataclasses.replace(episode, steps=steps)


def offline_potential(spec: str) -> RecordPotential:
    """A built-in potential's offline form by name, or a `module:function` taking (observation, state)."""
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except Exception as error:  # also whatever the user's module raises as it is imported (a SyntaxError)
            raise ValueError(f"cannot load potential {spec!r} ({type(error).__name__}: {error}); give "
                             "module:function importable from here, e.g. mypkg.potentials:phi") from None
        if not callable(function):
            raise ValueError(f"{spec} is not callable; it must take (observation, state) and return a float")
        return function
    offline = get_potential(spec).offline
    if offline is None:
        raise ValueError(f"potential {spec!r} reads the live env and cannot be recomputed from a recording; "
                         f"offline potentials: {', '.join(offline_potential_names())}, or module:function over "
                         "(observation, state)")
    return offline


def offline_potential_names() -> list[str]:
    """Built-in potentials that can be evaluated on recorded states."""
    return [name for name in potential_names() if get_potential(name).offline is not None]


def step_advantages(episodes: Sequence[Episode], estimator: str, *, gamma: float = 1.0, lam: float = 1.0
                    ) -> list[list[float]]:
    """Per-step advantages from the recorded rewards, with `creditgym.credit`.

    Episodes sharing their env id, seed and start (the reset's state, or its observation where the env has no
    state) form a group for grpo, dr_grpo and rloo, whose episode outcome is the γ-discounted return, broadcast to
    every step: an LLM trainer's groups, which play one task each. PPO and evaluation recordings play other levels
    under one seed, so there most episodes are a group of their own (advantage 0) and the few that replay a bank
    level are compared only with each other (a warning says so when half of the episodes or more are alone).
    gae uses V ≡ 0 (no critic offline): A_t = Σ_l (γλ)^l r_{t+l}.
    reinforce_pp is the reward-to-go whitened over the batch; reward_to_go is the discounted return from t.
    """
    _check_estimator(estimator, gamma, lam)
    if not episodes:
        return []
    rewards = _StepRewards(estimator)
    for episode in episodes:
        rewards.add(episode)
    advantages = rewards.advantages(gamma=gamma, lam=lam)
    return [row.tolist() for row in np.split(advantages, np.cumsum(rewards.lengths)[:-1])]


def _check_estimator(estimator: str, gamma: float, lam: float) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma} and {lam}")


class _StepRewards:
    """What `step_advantages` computes from, gathered one episode at a time into flat arrays: each step's total
    reward and terminated flag, each episode's length and, for group estimators, its group. `rescore_file` keeps
    these few numbers a step, where holding the episodes (observations, states) would take tens of GB."""

    def __init__(self, estimator: str) -> None:
        self.estimator = estimator
        self.lengths = array.array("q")
        self.rewards = array.array("d")
        self.terminated = array.array("b")
        self.groups = array.array("q")
        self._group_numbers: dict[tuple[Any, ...], int] = {}

    def add(self, episode: Episode) -> None:
        """Raises a ValueError naming the episode (0-based, in the order added) and step of a non-finite reward."""
        index = len(self.lengths)
        for t, step in enumerate(episode.steps):
            bad = {name: value for name, value in step.reward_components.items() if not math.isfinite(value)}
            if bad:
                raise ValueError(f"episode {index} (0-based), step {t}: reward channel(s) {bad} are not finite, and "
                                 "advantages would all be NaN; re-score a recording of finite rewards")
        self.lengths.append(len(episode.steps))
        self.rewards.extend(step.reward for step in episode.steps)
        self.terminated.extend(step.terminated for step in episode.steps)
        if self.estimator in _GROUP_ESTIMATORS:
            # A digest of the start's JSON, which is as large as an observation, since a group is kept per episode.
            group = ((episode.env_id, episode.seed, hashlib.sha256(_start_key(episode).encode()).digest())
                     if episode.seed is not None else (episode.env_id, None, index))
            self.groups.append(self._group_numbers.setdefault(group, len(self._group_numbers)))

    def advantages(self, *, gamma: float, lam: float) -> np.ndarray:
        """Every step's advantage, episode after episode in the order they were added, as float64.

        Episodes are scored in chunks of about `_CHUNK_CELLS` padded steps: one padded episodes × longest-episode
        tensor for a long PPO recording (600k episodes of up to 120 steps) would take GBs with its temporaries.
        Every estimator but reinforce_pp's whitening works per episode, so chunks change no bit of those."""
        count = len(self.lengths)
        if not count:
            return np.zeros(0)
        if self.estimator in _GROUP_ESTIMATORS:
            groups = np.asarray(self.groups, dtype=np.int64)
            alone = int((np.bincount(groups)[groups] == 1).sum())
            if count > 1 and alone == count:
                warnings.warn(f"no two of the {count} episodes start alike (env, seed and first state), so each "
                              f"is a group of its own and every {self.estimator} advantage is 0; group estimators "
                              "need groups of one task (an LLM trainer's records), else use gae or reinforce_pp",
                              stacklevel=3)
            elif count > 1 and 2 * alone >= count:  # a PPO recording, whose bank levels recur now and then
                warnings.warn(f"{alone} of the {count} episodes start unlike any other (env, seed and first state), "
                              f"so their {self.estimator} advantage is 0 and only the {count - alone} that share a "
                              "start are compared; group estimators need groups of one task (an LLM trainer's "
                              "records), else use gae or reinforce_pp", stacklevel=3)
            outcome = torch.from_numpy(np.concatenate([
                credit.reward_to_go(rewards, mask, gamma=gamma)[:, 0].numpy()
                for rewards, mask, _, _ in self._padded_chunks()]))
            by_name = {"grpo": credit.grpo_advantages, "dr_grpo": credit.dr_grpo_advantages,
                       "rloo": credit.rloo_advantages}
            per_episode = by_name[self.estimator](outcome, self.groups.tolist()).numpy()
            return np.repeat(per_episode, np.array(self.lengths, dtype=np.int64))
        parts = []
        for rewards, mask, terminated, lengths in self._padded_chunks():
            if self.estimator == "gae":
                # Each episode ends at its last recorded step; padding after it is cut off by that end.
                ends = ~terminated & (mask.cumsum(1) == lengths[:, None])
                zeros = torch.zeros_like(rewards.T)
                advantages = credit.gae(rewards.T, zeros, zeros, terminated.T, ends.T, gamma=gamma, lam=lam)[0].T
            else:  # reward_to_go, and reinforce_pp's returns before their whitening over the whole batch
                advantages = credit.reward_to_go(rewards, mask, gamma=gamma)
            parts.append(advantages[mask].numpy())
        flat = np.concatenate(parts)
        if self.estimator == "reinforce_pp":
            return credit.masked_whiten(torch.from_numpy(flat)).numpy()
        return flat

    def _padded_chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(rewards, mask, terminated, lengths) of consecutive episodes, padded to the longest in the chunk."""
        sizes = self.lengths  # Python ints: the chunking loop below runs once per episode
        lengths = np.array(sizes, dtype=np.int64)
        rewards = np.array(self.rewards, dtype=np.float64)
        terminated = np.array(self.terminated, dtype=np.bool_)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        first = 0
        while first < len(sizes):
            last, longest = first, 1
            while last < len(sizes) and (last - first + 1) * max(longest, sizes[last]) <= _CHUNK_CELLS:
                longest = max(longest, sizes[last])
                last += 1
            if last == first:  # an episode longer than a chunk is a chunk of its own
                last, longest = first + 1, sizes[first]
            chunk_lengths = torch.from_numpy(lengths[first:last])
            mask = torch.arange(longest)[None, :] < chunk_lengths[:, None]
            padded_rewards = torch.zeros(mask.shape, dtype=torch.float64)
            padded_rewards[mask] = torch.from_numpy(rewards[offsets[first]:offsets[last]])
            padded_terminated = torch.zeros_like(mask)
            padded_terminated[mask] = torch.from_numpy(terminated[offsets[first]:offsets[last]])
            yield padded_rewards, mask, padded_terminated, chunk_lengths
            first = last


_CHUNK_CELLS = 1 << 20
"""padded steps scored at once by `_StepRewards.advantages` (8 MB a float64 tensor)"""


def _start_key(episode: Episode) -> str:
    """The reset's state (or observation), as canonical JSON: equal for episodes that start alike."""
    start = episode.state if episode.state is not None else episode.observation
    return json.dumps(start, sort_keys=True, default=lambda value: np.asarray(value).tolist())


def with_advantages(episodes: Sequence[Episode], estimator: str, *, gamma: float = 1.0, lam: float = 1.0
                    ) -> list[Episode]:
    """Copies of `episodes` with `Step.advantage` set by `step_advantages`."""
    values = step_advantages(episodes, estimator, gamma=gamma, lam=lam)
    return [_with_step_advantages(e, adv) for e, adv in zip(episodes, values, strict=True)]


def _with_step_advantages(episode: Episode, values: Iterable[float]) -> Episode:
    return dataclasses.replace(episode, steps=[dataclasses.replace(s, advantage=a)
                                               for s, a in zip(episode.steps, values, strict=True)])


def summarize(episodes: Iterable[Episode]) -> dict[str, float]:
    """Means over episodes: length, success, return, each channel's episode sum and the step advantages."""
    summary = RecordSummary()
    for episode in episodes:
        summary.add(episode)
    return summary.result()


class RecordSummary:
    """`summarize`, one episode at a time, for recordings too large to hold: it keeps running sums, and the step
    advantages (a number a step) for their mean and std."""

    def __init__(self) -> None:
        self.count = 0
        self._steps = 0
        self._successes = 0
        self._return = 0.0
        self._channels: dict[str, float] = {}
        self._advantages = array.array("d")

    def add(self, episode: Episode) -> None:
        self.count += 1
        self._steps += len(episode.steps)
        self._successes += episode.success
        self._return += episode.total_reward
        for name, value in episode.channel_sums().items():
            self._channels[name] = self._channels.get(name, 0.0) + value
        self._advantages.extend(step.advantage for step in episode.steps if step.advantage is not None)

    def result(self) -> dict[str, float]:
        """Means over the episodes added so far; {"episodes": 0.0} before the first."""
        if not self.count:
            return {"episodes": 0.0}
        out = {"episodes": float(self.count), "length": self._steps / self.count,
               "success": self._successes / self.count, "return": self._return / self.count}
        out.update({f"reward/{name}": total / self.count for name, total in self._channels.items()})
        if self._advantages:
            advantages = np.array(self._advantages, dtype=np.float64)
            out["advantage/mean"] = float(np.mean(advantages))
            out["advantage/std"] = float(np.std(advantages))
        return out


def rescore_file(source: str | Path, out: str | Path, *, potential: RecordPotential | str | None = None,
                 estimator: str | None = None, gamma: float = 1.0, lam: float = 1.0, scale: float = 1.0,
                 channel: str = "shaping", replace: bool = False, progress: Callable[[int, int], None] | None = None
                 ) -> tuple[dict[str, float], dict[str, float], int]:
    """`add_shaping` with `potential` (an offline potential, or its name for `offline_potential`) and/or
    `with_advantages` with `estimator`, on every episode of the trajectory file `source`, written to `out`.
    Returns `summarize` of the episodes before and after, and their number. `out` is replaced only once every
    episode is written, so an error leaves an earlier file there as it was. `progress(done, total)` follows the bytes
    read, over both reads where there are two (`total` is then twice the file's size).

    The file is read one episode at a time: memory grows with a few numbers a step (rewards, advantages), never
    with observations or states, which for a long PPO run's recording decode to tens of GB. Advantages need every
    episode's rewards first, so with an estimator the file is read twice, the potential evaluated only in the
    first read; a file that changed in between (a run still recording to it) raises a ValueError.
    """
    if potential is None and estimator is None:
        raise ValueError("nothing to re-score: give a potential, an estimator, or both")
    if estimator is not None:
        _check_estimator(estimator, gamma, lam)
    if isinstance(potential, str):
        potential = offline_potential(potential)
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError(f"the output {out} is the input file; choose another path")
    before, after = RecordSummary(), RecordSummary()
    reads = 1 if estimator is None else 2

    def read(number: int) -> Iterator[Episode]:
        """The file's episodes, in read `number` (0 or 1) of `reads`, reporting to `progress`."""
        report = None if progress is None else lambda done, size: progress(number * size + done, reads * size)
        return read_trajectories(source, progress=report)

    if estimator is None:  # each episode is re-scored on its own
        with replacing_writer(out) as writer:
            for episode in read(0):
                before.add(episode)
                episode = add_shaping(episode, potential, gamma, channel=channel, replace=replace, scale=scale)
                writer.write(episode)
                after.add(episode)
        return before.result(), after.result(), before.count

    rewards = _StepRewards(estimator)
    shaping = array.array("d")
    first_read: list[tuple[int, int | None, float]] = []  # what the second read must find again
    for episode in read(0):
        before.add(episode)
        first_read.append((len(episode.steps), episode.seed, episode.total_reward))
        if potential is not None:
            values = _shaping_values(episode, potential, gamma, channel=channel, replace=replace, scale=scale)
            shaping.extend(values)
            episode = _with_channel(episode, channel, values)
        rewards.add(episode)
    advantages = rewards.advantages(gamma=gamma, lam=lam)
    del rewards  # its per-step arrays, no longer needed while the second read runs

    start = 0
    with warnings.catch_warnings(), replacing_writer(out) as writer:
        warnings.simplefilter("ignore", TrajectoryWarning)  # the first read has said that the file ends cut short
        for index, episode in enumerate(read(1)):
            found = (len(episode.steps), episode.seed, episode.total_reward)
            if index >= len(first_read):
                raise _changed(source, f"the second read found more than the first read's {len(first_read)} "
                                       "episodes")
            if found != first_read[index]:
                raise _changed(source, f"episode {index} (0-based) has {found[0]} steps, seed {found[1]} and return "
                                       f"{found[2]} in the second read; {first_read[index][0]} steps, seed "
                                       f"{first_read[index][1]} and return {first_read[index][2]} in the first")
            end = start + found[0]
            if potential is not None:
                episode = _with_channel(episode, channel, shaping[start:end])
            episode = _with_step_advantages(episode, advantages[start:end].tolist())
            writer.write(episode)
            after.add(episode)
            start = end
        if after.count != len(first_read):
            raise _changed(source, f"the second read found {after.count} episodes, the first {len(first_read)}")
    return before.result(), after.result(), before.count


def _changed(source: Path, what: str) -> ValueError:
    return ValueError(f"{source} changed while it was re-scored ({what}), as when a run is still recording to it; "
                      "re-score it once the run has ended, or re-score a copy of it")
