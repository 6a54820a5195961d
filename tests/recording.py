"""Shared by the PPO and LLM recording tests: a run folder left as a crash after its last checkpoint leaves it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from creditgym.trajectories import LEGACY_RUN_TRAJECTORIES, RUN_TRAJECTORIES


def crash_mid_write(run: Path, record: dict[str, Any], *, legacy: bool) -> Path:
    """Append half of `record` to the run's trajectory file, as a process killed mid-write leaves it; with
    `legacy`, first turn the file into the plain one runs wrote before recordings were compressed. Returns the
    file the resumed run must go on with."""
    path = run / RUN_TRAJECTORIES
    if legacy:
        path = run / LEGACY_RUN_TRAJECTORIES
        path.write_bytes(gzip.decompress((run / RUN_TRAJECTORIES).read_bytes()))
        (run / RUN_TRAJECTORIES).unlink()
    line = (json.dumps(record) + "\n").encode()
    data = line if legacy else gzip.compress(line)
    with path.open("ab") as file:
        file.write(data[:len(data) // 2])
    return path
