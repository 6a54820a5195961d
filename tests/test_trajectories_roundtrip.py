"""Trajectory records keep what they store: array shapes (empty and object arrays too), numeric arrays as base64
bytes (format /2), records written before shapes were stored, and format /1 records, still read as they did, and what
cannot be stored or read says which field or version."""

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


_BAD_SHAPE = r"its shape must be a list of at most 64 sizes below 2\*\*63"


def _line(observation, info: dict, record_format: str = "creditgym.trajectory/1") -> str:
    """A record as creditgym wrote it before arrays had a shape (format /1: every array as nested lists)."""
    return json.dumps({"format": record_format, "env_id": "x", "seed": 0, "observation": observation,
                       "version": "0.1.0", "info": {}, "state": None, "metadata": {},
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
        ({"__ndarray__": [1], "dtype": "int64", "shape": "1"}, _BAD_SHAPE),
        ({"__ndarray__": [1], "dtype": "int64", "shape": [-1]}, _BAD_SHAPE),
        ({"__ndarray__": [1], "dtype": "int64", "shape": [True]}, _BAD_SHAPE),
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
    path.write_text(json.dumps({**record, "format": "creditgym.trajectory/3", "version": "9.1.0"}) + "\n")
    with pytest.raises(TrajectoryFormatError, match=(
            rf"t\.jsonl:1: format is 'creditgym\.trajectory/3', written by creditgym 9\.1\.0; this creditgym "
            rf"\({creditgym.__version__}\) reads 'creditgym\.trajectory/1' and 'creditgym\.trajectory/2' records: "
            r"read it with that creditgym, or "
            r"upgrade this one \(pip install -U creditgym\)")):
        load_trajectories(path)
    path.write_text(json.dumps({**record, "format": "other/9"}) + "\n")
    with pytest.raises(TrajectoryFormatError, match=r"format is 'other/9', written by creditgym 0\.1\.0; .*: it is "
                                                    "not a creditgym trajectory record"):
        load_trajectories(path)


def test_numeric_arrays_are_stored_as_little_endian_base64_and_read_back_exactly(tmp_path: Path) -> None:
    arrays = {"uint16": np.array([1, 256], dtype=np.uint16), "big_endian": np.array([1.5, -2.0], dtype=">f8"),
              "special": np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float32),
              "mask": np.array([[True, False, True]]), "empty": np.zeros((0, 3), dtype=np.int8),
              "scalar": np.array(7, dtype=np.int64), "half": np.array([0.5], dtype=np.float16),
              "tensor": torch.arange(4, dtype=torch.int32).reshape(2, 2),
              # not C-contiguous: the bytes must be written in C order, not the memory's
              "transposed": np.arange(6).reshape(2, 3).T, "strided": np.arange(24).reshape(4, 6)[::2, ::-3],
              "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))}
    path = tmp_path / "t.jsonl"
    with TrajectoryWriter(path) as writer:
        writer.write(_episode(arrays["uint16"], arrays))
    stored = json.loads(path.read_text())
    assert stored["format"] == FORMAT == "creditgym.trajectory/2"
    # Bytes 01 00 00 01: each element little-endian, in C order, whatever the machine.
    assert stored["observation"] == {"encoding": "base64", "__ndarray__": "AQAAAQ==", "dtype": "uint16", "shape": [2]}
    assert stored["steps"][0]["info"]["big_endian"]["dtype"] == "float64"
    (episode,) = load_trajectories(path)
    for name, array in arrays.items():
        expected = array.numpy() if isinstance(array, torch.Tensor) else array
        back = episode.steps[0].info[name]
        assert back.dtype == expected.dtype.newbyteorder("=") and back.shape == expected.shape, name
        np.testing.assert_array_equal(back, expected, err_msg=name)
        assert back.flags.writeable and back.flags.owndata, name  # as an array read from nested lists is
        assert back.dtype.isnative, name
    assert np.signbit(episode.steps[0].info["special"][3])  # -0.0 kept


def test_format_1_records_with_nested_list_arrays_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    board = {"__ndarray__": [[0, 1], [255, 3]], "dtype": "uint8", "shape": [2, 2]}
    path.write_text(_line(board, {"mask": {"__ndarray__": [True, False], "dtype": "bool", "shape": [2]}}) + "\n")
    (episode,) = load_trajectories(path)
    assert episode.observation.dtype == np.uint8 and episode.observation.tolist() == [[0, 1], [255, 3]]
    assert episode.steps[0].info["mask"].tolist() == [True, False]
    # Appending to an old file: new records are format /2, and the file reads as one.
    with TrajectoryWriter(path) as writer:
        writer.write(_episode(np.array([[0, 1], [255, 3]], dtype=np.uint8)))
    old, new = load_trajectories(path)
    np.testing.assert_array_equal(old.observation, new.observation)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"encoding": "base64", "__ndarray__": "AQ=", "dtype": "uint8", "shape": [1]}, r"padding"),
        ({"encoding": "base64", "__ndarray__": "AQ!=", "dtype": "uint8", "shape": [1]}, r"Only base64 data"),
        ({"encoding": "base64", "__ndarray__": "AAAA AAAA", "dtype": "uint8", "shape": [6]}, r"Only base64 data"),
        ({"encoding": "base64", "__ndarray__": "AAAA\nAAAA", "dtype": "uint8", "shape": [6]}, r"Only base64 data"),
        ({"encoding": "base64", "__ndarray__": "AQI=", "dtype": "uint8", "shape": [3]},
         r"its data holds 2 bytes; shape \[3\] of uint8 takes 3"),
        ({"encoding": "base64", "__ndarray__": "AAAA", "dtype": "int64", "shape": [2**62]}, r"takes"),
        ({"encoding": "base64", "__ndarray__": "", "dtype": "int64", "shape": [0, 2**63]}, r"below 2\*\*63"),
        ({"encoding": "base64", "__ndarray__": "", "dtype": "int64", "shape": [10**4000] * 65}, r"at most 64 sizes"),
        ({"encoding": "base64", "__ndarray__": "AgA=", "dtype": "bool", "shape": [2]}, r"bytes other than 0 and 1"),
        ({"encoding": "base64", "__ndarray__": "AQ==", "dtype": "uint8"}, _BAD_SHAPE),
        ({"encoding": "base64", "__ndarray__": [1], "dtype": "uint8", "shape": [1]}, r"must be a string, got list"),
        ({"encoding": "base64", "__ndarray__": "YQ==", "dtype": "<U1", "shape": [1]}, r"numeric arrays only"),
        ({"encoding": "base64", "__ndarray__": "YQ==", "dtype": "object", "shape": [1]}, r"numeric arrays only"),
        ({"encoding": "zstd", "__ndarray__": "AQ==", "dtype": "uint8", "shape": [1]}, r"unknown encoding 'zstd'"),
        ({"encoding": "", "__ndarray__": [1], "dtype": "uint8", "shape": [1]}, r"unknown encoding ''"),
        ({"encoding": None, "__ndarray__": [1], "dtype": "uint8", "shape": [1]}, r"unknown encoding 'None'"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_damaged_base64_arrays_name_the_field(tmp_path: Path, stored: dict, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(_line("o", {"board": stored}, FORMAT) + "\n")
    with pytest.raises(TrajectoryFormatError, match=r"t\.jsonl:1: steps\[0\]\.info\.board is not a valid stored "
                                                    r"numpy array \(.*" + message):
        load_trajectories(path)


def test_a_big_endian_dtype_in_a_record_reads_as_native_and_a_huge_number_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    stored = {"encoding": "base64", "__ndarray__": "AQAAAQ==", "dtype": ">u2", "shape": [2]}  # bytes are little-endian
    path.write_text(_line("o", {"board": stored}, FORMAT) + "\n")
    (episode,) = load_trajectories(path)
    board = episode.steps[0].info["board"]
    assert board.dtype == np.uint16 and board.dtype.isnative and board.tolist() == [1, 256]
    record = json.loads(_line("o", {}, FORMAT))
    path.write_text(json.dumps(record).replace('"seed": 0', '"seed": ' + "1" * 5000) + "\n")
    with pytest.raises(TrajectoryFormatError, match=r"t\.jsonl:1: not a readable record \(Exceeds the limit"):
        load_trajectories(path)
