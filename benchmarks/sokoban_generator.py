"""Levels per second of the Sokoban generator for each shipped variant, on one thread; prints one JSON object.

Run: ``.venv/bin/python benchmarks/sokoban_generator.py --seconds 3``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence

import numpy as np
import torch

import creditgym
from creditgym.benchmarking import cpu_model
from creditgym.envs.sokoban.generator import generate_level
from creditgym.envs.sokoban.make_banks import VARIANTS


def measure(variant: str, seconds: float, seed: int) -> dict[str, float | int]:
    """Generate levels of one variant for about `seconds` and report the rate."""
    spec = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    count = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        generate_level(rng, height=spec.height, width=spec.width, num_boxes=spec.num_boxes)
        count += 1
        elapsed = time.perf_counter() - start
    return {"levels": count, "seconds": round(elapsed, 3), "levels_per_second": round(count / elapsed, 1)}


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Parse the command line, run the benchmark, print and return the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time budget per variant, in seconds")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=list(VARIANTS),
        help="variants to measure (default: all shipped variants)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator's numpy Generator")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    result: dict[str, object] = {
        "benchmark": "sokoban_generator",
        "creditgym": creditgym.__version__,
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "settings": vars(args),
        "seconds_per_variant": args.seconds,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "variants": {name: measure(name, args.seconds, args.seed) for name in args.variants},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
