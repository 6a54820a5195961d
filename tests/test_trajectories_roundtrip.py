"""Trajectory records keep what they store: array shapes (empty and object arrays too), records written before
shapes were stored still read as they did, and what cannot be stored or read says which field or version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import creditgym
from creditgym.trajectories import (
    FORMAT,
    Episode,
    Step,
    TrajectoryFormatError,
    TrajectoryWriter,
    load_trajectories,
)


def _episode(observation, info: dict | None = None) -> Episode:
    return Episode(env_id="x", seed=0, observation=observation,
                   steps=[Step(action=0, observation=observation, reward_components={"task": 1.0}, terminated=True,
                               truncated=False, info=info or {})])


def _round_trip(tmp_path: Path, episode: Episode, name: str = "t.jsonl") -> Episode:
    path = tmp_path / name
    path.unlink(missing_ok=True)
    with TrajectoryWriter(path) as writer:
        writer.write(episode)
    (back,) = load_trajectories(path)
    return back


def _objects(*items) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_arrays_keep_their_shape_and_dtype(tmp_path: Path, name: str) -> None:
    # Nested lists hold no empty dimension: a (0, 3) array was stored as [] and came back (0,).
    arrays = {"rows": np.zeros((0, 3), dtype=np.int64), "columns": np.zeros((2, 0), dtype=np.float32),
              "middle": np.zeros((3, 0, 2), dtype=np.uint8), "words": np.array([], dtype="<U4").reshape(0, 2),
              "scalar": np.array(7, dtype=np.int16), "grid": np.arange(6, dtype=np.int8).reshape(1, 2, 3),
              "tensor": torch.zeros(0, 4)}
    back = _round_trip(tmp_path, _episode(np.zeros((0, 7, 7), dtype=np.uint8), arrays), name)
    assert back.observation.shape == (0, 7, 7) and back.observation.dtype == np.uint8
    info = back.steps[0].info
    for key, array in arrays.items():
        expected = array.numpy() if isinstance(array, torch.Tensor) else array
        assert (info[key].shape, info[key].dtype) == (expected.shape, expected.dtype), key
        assert info[key].tolist() == expected.tolist(), key


def test_object_arrays_keep_their_shape_element_by_element(tmp_path: Path) -> None:
    # numpy made a (2,) array of 2-lists into a (2, 2) array, and failed on lists of unequal length.
    pairs = _objects([1, 2], [3, 4])
    ragged = _objects([1], [2, 3], "x", None)
    square = np.empty((2, 2), dtype=object)
    square[0, 0], square[0, 1], square[1, 0], square[1, 1] = [], {"a": 1}, (5, 6), np.arange(3)
    info = _round_trip(tmp_path, _episode("o", {"pairs": pairs, "ragged": ragged, "square": square,
                                                "none": np.empty(0, dtype=object)})).steps[0].info
    assert info["pairs"].shape == (2,) and info["pairs"].dtype == object
    assert info["pairs"][0] == [1, 2] and info["pairs"][1] == [3, 4]
    assert info["ragged"].shape == (4,) and info["ragged"].tolist() == [[1], [2, 3], "x", None]
    assert info["square"].shape == (2, 2) and info["square"][0, 0] == [] and info["square"][0, 1] == {"a": 1}
    assert info["square"][1, 0] == [5, 6] and info["square"][1, 1].tolist() == [0, 1, 2]
    assert info["none"].shape == (0,) and info["none"].dtype == object


def _line(observation, info: dict) -> str:
    """A record as creditgym wrote it before arrays had a shape."""
    return json.dumps({"format": FORMAT, "env_id": "x", "seed": 0, "observation": observation, "version": "0.1.0",
                       "info": {}, "state": None, "metadata": {},
                       "steps": [{"action": 0, "observation": observation, "reward_components": {"task": 1.0},
                                  "terminated": True, "truncated": False, "info": info}]})


def test_records_written_before_shapes_were_stored_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    board = {"__ndarray__": [[1, 2], [3, 4]], "dtype": "uint8"}
    info = {"empty": {"__ndarray__": [], "dtype": "int64"},
            "objects": {"__ndarray__": [[1, 2], [3, 4]], "dtype": "object"},
            "mixed": {"__ndarray__": [None, "x"], "dtype": "object"}}
    path.write_text(_line(board, info) + "\n")
    (episode,) = load_trajectories(path)
    assert episode.observation.shape == (2, 2) and episode.observation.dtype == np.uint8
    assert episode.observation.tolist() == [[1, 2], [3, 4]]
    info = episode.steps[0].info
    assert info["empty"].shape == (0,) and info["empty"].dtype == np.int64
    assert info["objects"].shape == (2, 2) and info["objects"].dtype == object  # as numpy read it then
    assert info["mixed"].tolist() == [None, "x"]


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"__ndarray__": [1, 2], "dtype": "int64", "shape": [3]}, r"its nested lists do not have its shape \[3\]"),
        ({"__ndarray__": [[1, 2, 3], [4, 5, 6]], "dtype": "int64", "shape": [3, 2]}, r"do not have its shape"),
        ({"__ndarray__": [1], "dtype": "int64", "shape": "1"}, r"its shape must be a list of sizes"),
        ({"__ndarray__": [1], "dtype": "int64", "shape": [-1]}, r"its shape must be a list of sizes"),
        ({"__ndarray__": [1], "dtype": "int64", "shape": [True]}, r"its shape must be a list of sizes"),
        ({"__ndarray__": [[1], [2]], "dtype": "object", "shape": [3]}, r"do not have its shape \[3\]"),
        ({"__ndarray__": [1, 2], "dtype": "object", "shape": [2, 1]}, r"do not have its shape \[2, 1\]"),
        ({"__ndarray__": [], "dtype": "object", "shape": [0, 10**20]}, r""),  # numpy's own message
    ],
    ids=lambda value: str(value)[:30],
)
def test_a_damaged_shape_names_the_field(tmp_path: Path, stored: dict, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(_line("o", {"board": stored}) + "\n")
    with pytest.raises(TrajectoryFormatError, match=r"t\.jsonl:1: steps\[0\]\.info\.board is not a valid stored "
                                                    r"numpy array .*" + message):
        load_trajectories(path)


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_text_utf8_cannot_encode_names_the_field_and_leaves_the_file_as_it_was(tmp_path: Path, name: str) -> None:
    # A lone surrogate (text decoded with errors="surrogateescape", or cut inside a pair) raised a bare
    # UnicodeEncodeError that named a position in the JSON line, not a field.
    path = tmp_path / name
    with TrajectoryWriter(path) as writer:
        writer.write(_episode("fine"))
        with pytest.raises(TypeError, match=r"cannot store episode\.observation: its text 'bad \\ud800 text' holds "
                                            r"'\\ud800' at index 4, a lone surrogate that UTF-8 cannot encode"):
            writer.write(_episode("bad \ud800 text"))
        with pytest.raises(TypeError, match=r"cannot store episode\.steps\[0\]\.info\.note: .* index 0"):
            writer.write(_episode("o", {"note": "\udcff"}))
        with pytest.raises(TypeError, match=r"cannot store episode\.steps\[0\]\.info \(a key\)"):
            writer.write(_episode("o", {"k\ud800": 1}))
        with pytest.raises(TypeError, match=r"cannot store episode\.steps\[0\]\.info\.words\[1\]: .*'\\udc80'"):
            writer.write(_episode("o", {"words": np.array(["a", "b\udc80"])}))
        writer.write(_episode("after"))
    assert [e.observation for e in load_trajectories(path)] == ["fine", "after"]


def test_a_record_of_another_format_version_says_which_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    record = json.loads(_line("o", {}))
    path.write_text(json.dumps({**record, "format": "creditgym.trajectory/2", "version": "9.1.0"}) + "\n")
    with pytest.raises(TrajectoryFormatError, match=(
            rf"t\.jsonl:1: format is 'creditgym\.trajectory/2', written by creditgym 9\.1\.0; this creditgym "
            rf"\({creditgym.__version__}\) reads 'creditgym\.trajectory/1' records: read it with that creditgym, or "
            r"upgrade this one \(pip install -U creditgym\)")):
        load_trajectories(path)
    path.write_text(json.dumps({**record, "format": "other/9"}) + "\n")
    with pytest.raises(TrajectoryFormatError, match=r"format is 'other/9', written by creditgym 0\.1\.0; .*: it is "
                                                    "not a creditgym trajectory record"):
        load_trajectories(path)
