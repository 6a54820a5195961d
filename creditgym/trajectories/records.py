"""The trajectory record: `Episode` and `Step`, and how they become JSON-ready data and back (`to_dict`,
`from_dict`), with every field checked as it is read."""

from __future__ import annotations

import base64
import dataclasses
import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import creditgym

FORMAT = "creditgym.trajectory/2"
#: What this version reads: /1 stored every numpy array as nested lists; /2 stores numeric ones as base64 bytes.
READABLE_FORMATS = ("creditgym.trajectory/1", FORMAT)
#: The value of a stored array's "encoding" whose "__ndarray__" is a base64 string of its little-endian bytes
#: in C order (numeric arrays since format /2); without "encoding" it holds nested lists.
BASE64 = "base64"
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
        if data.get("format") not in READABLE_FORMATS:
            written = data.get("version")
            written = f", written by creditgym {written}" if isinstance(written, str) else ""
            fix = ("read it with that creditgym, or upgrade this one (pip install -U creditgym)"
                   if str(data.get("format")).startswith(FORMAT.split("/")[0] + "/") else
                   "it is not a creditgym trajectory record")
            raise ValueError(f"format is {data.get('format')!r}{written}; this creditgym ({creditgym.__version__}) "
                             f"reads {' and '.join(map(repr, READABLE_FORMATS))} records: {fix}")
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
        if value.dtype.kind == "U":
            return {_NDARRAY: value.tolist(), "dtype": str(value.dtype), "shape": shape}
        # Numbers as bytes: nested lists of them took 4x as long to parse and 1.7x the room once gzipped (PPO's
        # one-hot Sokoban boards), and decoding made a Python int per element.
        little = value.astype(value.dtype.newbyteorder("<"), copy=False)
        return {"encoding": BASE64, _NDARRAY: base64.b64encode(little.tobytes()).decode("ascii"),
                "dtype": str(value.dtype.newbyteorder("=")), "shape": shape}
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
                if "encoding" in value:
                    return _from_base64(value["encoding"], value[_NDARRAY], np.dtype(dtype), value.get("shape"))
                return _array(_decode(value[_NDARRAY], where) if dtype == "object" else value[_NDARRAY], dtype,
                              value.get("shape"))
            except (TypeError, ValueError, OverflowError) as error:
                raise ValueError(f"{where} is not a valid stored numpy array ({error})") from None
        return {key: _decode(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _from_base64(encoding: Any, data: Any, dtype: np.dtype, shape: Any) -> np.ndarray:
    """A stored numeric array from the base64 string of its little-endian bytes, checked against dtype and shape."""
    if encoding != BASE64:
        raise ValueError(f"unknown encoding {str(encoding)[:40]!r}; this creditgym reads {BASE64!r}")
    if dtype.kind not in "biuf":
        raise ValueError(f"base64 holds numeric arrays only, not {dtype}")
    if not isinstance(data, str):
        raise ValueError(f"its base64 data must be a string, got {type(data).__name__}")
    shape = _shape(shape)
    raw = base64.b64decode(data, validate=True)  # binascii.Error is a ValueError
    needed = math.prod(shape) * dtype.itemsize
    if len(raw) != needed:
        raise ValueError(f"its data holds {len(raw)} bytes; shape {list(shape)} of {dtype} takes {needed}")
    if dtype.kind == "b" and raw.translate(None, b"\x00\x01"):
        raise ValueError("its bool data holds bytes other than 0 and 1")
    # The copy astype makes is native-endian, owns its memory and is writable, as an array read from nested lists is.
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype.newbyteorder("="))


# No array has more dimensions than numpy's limit, or a size past int64: bounds that also keep a hostile shape (many
# sizes of thousands of digits) from costing minutes in the product that checks it against the data.
_MAX_DIMENSIONS = 64


def _shape(shape: Any) -> tuple[int, ...]:
    if (not isinstance(shape, list) or len(shape) > _MAX_DIMENSIONS
            or not all(_is(n, int) and 0 <= n < 2**63 for n in shape)):
        raise ValueError(f"its shape must be a list of at most {_MAX_DIMENSIONS} sizes below 2**63, got "
                         f"{str(shape)[:40]}")
    return tuple(shape)


def _array(data: Any, dtype: str, shape: Any) -> np.ndarray:
    """A stored array from its nested lists; `shape` is None in records written before shapes were stored, which
    read as they always did (numpy infers the shape from the nesting)."""
    if shape is None:
        return np.asarray(data, dtype=dtype)
    shape = _shape(shape)
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
