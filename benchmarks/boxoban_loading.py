"""Seconds to load Boxoban level files into a Sokoban level bank, per reader and with the disk cache; prints JSON.

Each load runs in a fresh Python process, as a vector-env or Ray worker would, and reports its time (imports
excluded) and peak memory. Readers: `per_level` (the previous loader: `read_boxoban_puzzles`, one `Level` at a
time), `whole_file` (`LevelBank.from_path`: whole files as arrays), `cache_cold` (`resolve_bank` with an empty
cache: parse, then write the cache) and `cache_warm` (`resolve_bank` reading the cache).

Run: ``.venv/bin/python benchmarks/boxoban_loading.py --levels ../shared/data/boxoban-levels/unfiltered/train``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import creditgym
from creditgym.benchmarking import cpu_model
from creditgym.envs.sokoban.boxoban import boxoban_files

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LEVELS = ROOT.parent / "shared" / "data" / "boxoban-levels" / "unfiltered" / "train"

# One load in a fresh process: argv is the reader and the path; prints levels, seconds and peak memory.
_LOAD = """
import json, resource, sys, time
start = time.perf_counter()
from creditgym.envs.sokoban import bank
from creditgym.envs.sokoban.boxoban import read_boxoban_puzzles
imported = time.perf_counter()
reader, path = sys.argv[1], sys.argv[2]
if reader == "per_level":
    loaded = bank.LevelBank.from_levels([level for _, level in read_boxoban_puzzles(path)])
elif reader == "whole_file":
    loaded = bank.LevelBank.from_path(path)
else:
    bank.CACHE_MIN_BYTES = 0  # measure the cache whatever the size of the level set
    loaded = bank.resolve_bank(path, "train")
done = time.perf_counter()
print(json.dumps({"levels": len(loaded), "seconds": done - imported, "import_seconds": imported - start,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def load(reader: str, folder: Path, cache: Path, repeats: int) -> dict[str, float | int]:
    """The fastest of `repeats` loads by `reader`, each in a new process, with its import time and peak memory."""
    env = {**os.environ, "CREDITGYM_CACHE": str(cache)}
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _LOAD, reader, str(folder)], env=env, check=True,
                             capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    best = min(runs, key=lambda run: run["seconds"])
    return {
        "levels": best["levels"],
        "seconds": round(best["seconds"], 4),
        "us_per_level": round(best["seconds"] / best["levels"] * 1e6, 3),
        "seconds_runs": [round(run["seconds"], 4) for run in runs],
        "import_seconds": round(best["import_seconds"], 3),
        "max_rss_mb": round(max(run["max_rss_mb"] for run in runs), 1),
    }


def subset(files: list[Path], folder: Path) -> Path:
    """A folder of links to `files`, so the loaders, which take a path, read exactly those."""
    folder.mkdir()
    for i, file in enumerate(files):
        (folder / f"{i:05d}.txt").symlink_to(file.resolve())
    return folder


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Parse the command line, run the benchmark, print and return the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=Path, default=DEFAULT_LEVELS,
                        help=f"a Boxoban file, or a folder of *.txt files (default: {DEFAULT_LEVELS})")
    parser.add_argument("--files", type=int, default=0,
                        help="load only the first N files of the folder (default 0: all of them)")
    parser.add_argument("--old-files", type=int, default=5,
                        help="time the per-level reader, and the whole-file one beside it, on the first N files "
                             "(default 5; 0 skips it: it takes about 2.5 minutes for 900 files)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="loads per reader, each in a new process; the fastest is reported (default 3)")
    args = parser.parse_args(argv)
    if args.files < 0 or args.old_files < 0 or args.repeats < 1:
        parser.error("--files and --old-files must be >= 0 and --repeats >= 1")
    if not args.levels.exists():
        parser.error(f"--levels {args.levels} does not exist; pass a Boxoban file or folder")
    files = boxoban_files(args.levels)[: args.files or None]
    result: dict[str, object] = {
        "benchmark": "boxoban_loading",
        "creditgym": creditgym.__version__,
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "settings": {**vars(args), "levels": str(args.levels)},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "files": len(files),
        "bytes": sum(file.stat().st_size for file in files),
    }
    with tempfile.TemporaryDirectory(prefix="boxoban-loading-") as tmp:
        cache = Path(tmp) / "cache"
        if args.old_files:
            few = subset(files[: args.old_files], Path(tmp) / "few")
            per_level = load("per_level", few, cache, args.repeats)
            whole_file = load("whole_file", few, cache, args.repeats)
            result["few_files"] = {"files": len(files[: args.old_files]), "per_level": per_level,
                                   "whole_file": whole_file,
                                   "speedup": round(per_level["seconds"] / whole_file["seconds"], 1)}
        folder = subset(files, Path(tmp) / "all")
        result["whole_file"] = load("whole_file", folder, cache, args.repeats)
        result["cache_cold"] = load("cache_cold", folder, cache, 1)
        result["cache_warm"] = load("cache_warm", folder, cache, args.repeats)
        result["cache_bytes"] = sum(file.stat().st_size for file in cache.rglob("*") if file.is_file())
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
