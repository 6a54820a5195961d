"""Build the shipped Sokoban level banks: generate, verify with the solver, deduplicate, split, write.

Every bank is reproducible: the same seed gives byte-identical ``{variant}-train.txt`` and
``{variant}-test.txt`` files. Run ``python -m creditgym.envs.sokoban.make_banks`` to regenerate them.
"""

from __future__ import annotations

import argparse
import functools
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from creditgym.envs.sokoban.bank import BANK_DIR
from creditgym.envs.sokoban.boxoban import write_boxoban
from creditgym.envs.sokoban.generator import generate_level
from creditgym.envs.sokoban.level import Level, Tile, flood_fill
from creditgym.envs.sokoban.solver import search

#: Generated levels tried per level kept before a variant is declared impossible to fill.
MAX_ATTEMPTS_PER_LEVEL = 50


@dataclass(frozen=True)
class BankSpec:
    """How to build one variant's train and test banks."""

    height: int
    """Grid rows, wall border included."""
    width: int
    """Grid columns, wall border included."""
    num_boxes: int
    """Boxes (and targets) per level."""
    train_size: int
    """Levels in the train bank."""
    test_size: int
    """Levels in the test bank: puzzles none of which is in the train bank, wherever it sits in the room."""
    seed: int
    """Per-variant seed, combined with the seed given to `make_banks`."""
    min_moves: int = 3
    """Levels whose optimal solution is shorter than this are rejected as trivial."""
    max_nodes: int = 100_000
    """Solver budget; levels it cannot solve within it are rejected."""

    def __post_init__(self) -> None:
        if self.train_size < 1 or self.test_size < 1:
            raise ValueError(f"train_size and test_size must be at least 1, got {self.train_size} and {self.test_size}")
        if self.min_moves < 1 or self.max_nodes < 1:
            raise ValueError(f"min_moves and max_nodes must be at least 1, got {self.min_moves} and {self.max_nodes}")


# 6x6-1b is kept small because the generator gives only about 3,500 distinct such puzzles (up to symmetry)
# and each new one takes ever more tries to find: its 2,200 levels already take about 45,000 tries.
VARIANTS: dict[str, BankSpec] = {
    "6x6-1b": BankSpec(height=6, width=6, num_boxes=1, train_size=2000, test_size=200, seed=1),
    "6x6-2b": BankSpec(height=6, width=6, num_boxes=2, train_size=3000, test_size=300, seed=2),
    "8x8-2b": BankSpec(height=8, width=8, num_boxes=2, train_size=3000, test_size=300, seed=3),
    "10x10-3b": BankSpec(height=10, width=10, num_boxes=3, train_size=2000, test_size=200, seed=4),
}


@dataclass(frozen=True)
class BankStats:
    """What building one variant took."""

    train_path: Path
    test_path: Path
    generated: int
    """Levels generated, kept or not."""
    duplicates: int
    """Generated levels that repeat an earlier one (see `_room_key`), or, for the test bank, a kept puzzle (see
    `_puzzle_key`)."""
    rejected: int
    """Levels unsolved within the budget or solved in fewer than `min_moves` moves."""
    seconds: float


def make_banks(
    out_dir: Path = BANK_DIR,
    variants: Mapping[str, BankSpec] | Sequence[str] | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, BankStats]:
    """Generate, verify and write the train and test banks of each variant.

    Args:
        out_dir: directory for the ``{variant}-{split}.txt`` files (created if missing).
        variants: specs by name, names from `VARIANTS`, or None for all of `VARIANTS`.
        seed: global seed; each variant draws from ``np.random.default_rng([seed, spec.seed])``.
        progress: show a rich progress bar.
    """
    specs = _resolve(variants)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed (--seed) must be an integer of 0 or more, got {seed!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir (--out-dir) {out_dir} is a file; give a folder for the bank files")
    out_dir.mkdir(parents=True, exist_ok=True)
    stats: dict[str, BankStats] = {}
    with Progress() if progress else nullcontext() as bar:
        for name, spec in specs.items():
            advance = None
            if bar is not None:
                task = bar.add_task(name, total=spec.train_size + spec.test_size)
                advance = functools.partial(bar.advance, task)
            start = time.perf_counter()
            levels, generated, duplicates, rejected = _build(name, spec, seed, advance)
            train_path = out_dir / f"{name}-train.txt"
            test_path = out_dir / f"{name}-test.txt"
            write_boxoban(train_path, levels[: spec.train_size])
            write_boxoban(test_path, levels[spec.train_size :])
            stats[name] = BankStats(train_path, test_path, generated, duplicates, rejected, time.perf_counter() - start)
    return stats


def _resolve(variants: Mapping[str, BankSpec] | Sequence[str] | None) -> dict[str, BankSpec]:
    if variants is None:
        return dict(VARIANTS)
    if isinstance(variants, Mapping):
        return dict(variants)
    if isinstance(variants, str):
        variants = [variants]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    return {name: VARIANTS[name] for name in variants}


def _build(
    name: str, spec: BankSpec, seed: int, advance: Callable[[], None] | None
) -> tuple[list[Level], int, int, int]:
    """Distinct verified levels, train first, and the generated/duplicate/rejected counts.

    Train levels are distinct rooms (`_room_key`); test levels are also distinct puzzles from every kept level
    (`_puzzle_key`), so held-out play never meets a train puzzle moved elsewhere in the room. An egocentric view
    cannot tell such a move apart. The train rule stays the looser one because the shipped train banks, and with
    them every published training curve, were built with it.
    """
    rng = np.random.default_rng([seed, spec.seed])
    wanted = spec.train_size + spec.test_size
    rooms: set[bytes] = set()
    puzzles: set[bytes] = set()
    levels: list[Level] = []
    generated = duplicates = rejected = 0
    while len(levels) < wanted:
        if generated >= MAX_ATTEMPTS_PER_LEVEL * wanted:
            raise RuntimeError(
                f"{name}: only {len(levels)} of {wanted} distinct levels with optimal solutions of at least "
                f"{spec.min_moves} moves after {generated} tries; lower the sizes or min_moves"
            )
        level = generate_level(rng, height=spec.height, width=spec.width, num_boxes=spec.num_boxes)
        generated += 1
        room, puzzle = _room_key(level), _puzzle_key(level)
        if room in rooms or (len(levels) >= spec.train_size and puzzle in puzzles):
            duplicates += 1
            continue
        rooms.add(room)
        result = search(level, max_nodes=spec.max_nodes)
        if result.actions is None or len(result.actions) < spec.min_moves:
            rejected += 1
            continue
        puzzles.add(puzzle)
        levels.append(level)
        if advance is not None:
            advance()
    return levels, generated, duplicates, rejected


def _room_key(level: Level) -> bytes:
    """Equal for the same room up to rotation, reflection and where in its area the player stands."""
    tiles = level.tiles.copy()
    player = level.player
    tiles[player] = Tile.TARGET if tiles[player] == Tile.PLAYER_ON_TARGET else Tile.FLOOR
    area = level.reachable_mask()
    keys = []
    for flipped_tiles, flipped_area in ((tiles, area), (tiles.T, area.T)):
        for turns in range(4):
            oriented = np.rot90(flipped_tiles, turns).copy()
            first = np.unravel_index(np.argmax(np.rot90(flipped_area, turns)), oriented.shape)
            oriented[first] = Tile.PLAYER_ON_TARGET if oriented[first] == Tile.TARGET else Tile.PLAYER
            keys.append(repr(oriented.shape).encode() + oriented.tobytes())
    return min(keys)


def _puzzle_key(level: Level) -> bytes:
    """`_room_key` of the puzzle alone: equal also when the same puzzle sits elsewhere in the room.

    Floor the player can never reach plays no part (boxes only move where the player can walk), so it counts
    as wall, and the room is cropped to the walls around the player's area.
    """
    area = flood_fill(level.tiles == Tile.WALL, level.player)
    rows, cols = np.flatnonzero(area.any(axis=1)), np.flatnonzero(area.any(axis=0))
    walled = np.where(area, level.tiles, Tile.WALL)
    return _room_key(Level(walled[rows[0] - 1 : rows[-1] + 2, cols[0] - 1 : cols[-1] + 2]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line's flags, shared by `python -m creditgym.envs.sokoban.make_banks` and `creditgym make-banks`."""
    parser.add_argument("--out-dir", type=Path, default=BANK_DIR,
                        help="where to write the bank files (default: the package's own banks, overwritten)")
    parser.add_argument(
        "--variants", nargs="+", default=None, help=f"variants to build (default all: {' '.join(VARIANTS)})"
    )
    parser.add_argument("--seed", type=int, default=0, help="global seed; the shipped banks use 0")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> None:
    """Build the banks the parsed flags ask for and print a line per variant."""
    stats = make_banks(args.out_dir, args.variants, seed=args.seed, progress=not args.quiet)
    if not args.quiet:
        for name, s in stats.items():
            print(
                f"{name}: {s.generated} generated, {s.duplicates} duplicates, {s.rejected} rejected, "
                f"{s.seconds:.1f}s -> {s.train_path.name}, {s.test_path.name}"
            )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: regenerate the shipped banks (or some variants) into a directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
