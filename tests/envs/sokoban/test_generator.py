import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditgym.envs.sokoban.bank import load_bank
from creditgym.envs.sokoban.boxoban import read_boxoban
from creditgym.envs.sokoban.generator import GenerationError, generate_level
from creditgym.envs.sokoban.level import BOX_TILES, Level, Tile
from creditgym.envs.sokoban.make_banks import VARIANTS, BankSpec, _puzzle_key, _room_key, make_banks
from creditgym.envs.sokoban.rules import apply_move
from creditgym.envs.sokoban.solver import search

TINY = {"tiny": BankSpec(height=6, width=6, num_boxes=1, train_size=12, test_size=4, seed=7)}


def test_same_seed_gives_the_same_level() -> None:
    first = [generate_level(np.random.default_rng(3), height=8, width=8, num_boxes=2) for _ in range(2)]
    assert first[0] == first[1]
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    for _ in range(5):
        a = generate_level(rng_a, height=7, width=9, num_boxes=2)
        b = generate_level(rng_b, height=7, width=9, num_boxes=2)
        assert a == b


def test_different_seeds_give_different_levels() -> None:
    levels = {generate_level(np.random.default_rng(seed), height=8, width=8, num_boxes=2) for seed in range(20)}
    assert len(levels) >= 18


def test_no_global_random_state_is_used() -> None:
    np.random.seed(0)
    random.seed(0)
    numpy_state, python_state = np.random.get_state()[1].copy(), random.getstate()
    generate_level(np.random.default_rng(0), height=8, width=8, num_boxes=2)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    assert random.getstate() == python_state


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([(6, 6, 1), (6, 6, 2), (5, 7, 1), (8, 8, 2), (7, 10, 3), (10, 10, 3)]),
)
def test_generated_levels_are_valid_unsolved_and_solvable(seed: int, size: tuple[int, int, int]) -> None:
    height, width, num_boxes = size
    level = generate_level(np.random.default_rng(seed), height=height, width=width, num_boxes=num_boxes)
    assert level.shape == (height, width)
    assert level.num_boxes == len(level.targets) == num_boxes
    border = np.concatenate([level.tiles[0], level.tiles[-1], level.tiles[:, 0], level.tiles[:, -1]])
    assert (border == Tile.WALL).all()
    assert not level.is_solved
    result = search(level)
    assert result.status == "solved"
    tiles, player = level.tiles.copy(), level.player
    for action in result.actions:
        player = apply_move(tiles, player, action).player
    assert not (tiles == Tile.BOX).any()


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"height": 4, "width": 4, "num_boxes": 3}, "too few for 3 boxes"),
        ({"height": 6, "width": 6, "num_boxes": 15}, "too few for 15 boxes"),
        ({"height": 2, "width": 6, "num_boxes": 1}, "at least 3"),
        ({"height": 6, "width": 6, "num_boxes": 0}, "num_boxes must be at least 1"),
        ({"height": 6, "width": 6, "num_boxes": 1, "pulls": 0}, "at least 1"),
        ({"height": 6, "width": 6, "num_boxes": 1, "p_change_direction": 1.5}, "p_change_direction"),
    ],
)
def test_impossible_parameters_raise_value_error(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_level(np.random.default_rng(0), **params)


def test_gives_up_with_a_clear_error() -> None:
    # One digger step carves at most four cells, too few for three boxes, the player and a free cell.
    with pytest.raises(GenerationError, match="after 5 rooms"):
        generate_level(np.random.default_rng(0), height=8, width=8, num_boxes=3, dig_steps=1, max_tries=5)


def test_make_banks_is_reproducible(tmp_path: Path) -> None:
    make_banks(tmp_path / "a", TINY, seed=5, progress=False)
    stats = make_banks(tmp_path / "b", TINY, seed=5, progress=False)
    make_banks(tmp_path / "c", TINY, seed=6, progress=False)
    for split in ("train", "test"):
        name = f"tiny-{split}.txt"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    train = read_boxoban(stats["tiny"].train_path)
    test = read_boxoban(stats["tiny"].test_path)
    assert (len(train), len(test)) == (12, 4)
    assert not {_puzzle_key(level) for level in train} & {_puzzle_key(level) for level in test}
    for level in train + test:
        result = search(level)
        assert result.actions is not None and len(result.actions) >= TINY["tiny"].min_moves


# 6x6-2b's test level 12 before session 13: train level 2125 moved one column left.
MOVED = Level.from_rows(["######", "#. .##", "#   ##", "#$$###", "# @ ##", "######"])
ORIGINAL = Level.from_rows(["######", "##. .#", "##   #", "##$$##", "## @ #", "######"])


def test_puzzle_key_sees_through_moves_turns_and_mirrors() -> None:
    turned = Level(np.rot90(ORIGINAL.tiles).copy())
    mirrored = Level(ORIGINAL.tiles[:, ::-1].copy())
    assert _room_key(MOVED) != _room_key(ORIGINAL)
    assert _puzzle_key(MOVED) == _puzzle_key(ORIGINAL) == _puzzle_key(turned) == _puzzle_key(mirrored)
    # The player's spot within its area is not part of the puzzle, but a box's is.
    walked = Level.from_rows(["######", "#. .##", "#   ##", "#$$###", "#@  ##", "######"])
    assert _puzzle_key(walked) == _puzzle_key(MOVED)
    pushed = Level.from_rows(["######", "#. .##", "#$$ ##", "#  ###", "# @ ##", "######"])
    assert _puzzle_key(pushed) != _puzzle_key(MOVED)


def test_test_banks_keep_out_moved_train_puzzles(tmp_path: Path) -> None:
    # 6x6 one-box rooms repeat often enough that a few hundred levels meet moved copies.
    spec = {"small": BankSpec(height=6, width=6, num_boxes=1, train_size=300, test_size=60, seed=1)}
    stats = make_banks(tmp_path, spec, progress=False)
    train, test = read_boxoban(stats["small"].train_path), read_boxoban(stats["small"].test_path)
    train_puzzles = {_puzzle_key(level) for level in train}
    assert len(train_puzzles) < len(train)  # moved copies exist, so the check below can fail
    assert not train_puzzles & {_puzzle_key(level) for level in test}


def test_make_banks_rejects_unknown_variants(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown variants"):
        make_banks(tmp_path, ["6x6-9b"], progress=False)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shipped_banks_match_their_spec(variant: str) -> None:
    spec = VARIANTS[variant]
    train, test = load_bank(variant, "train"), load_bank(variant, "test")
    assert (len(train), len(test)) == (spec.train_size, spec.test_size)
    for bank in (train, test):
        assert bank.shape == (spec.height, spec.width)
        assert (np.isin(bank.tiles, BOX_TILES).sum(axis=(1, 2)) == spec.num_boxes).all()
    train_rooms = {_room_key(train[i]) for i in range(len(train))}
    test_puzzles = [_puzzle_key(test[i]) for i in range(len(test))]
    assert len(train_rooms) == len(train) and len(set(test_puzzles)) == len(test)
    # Held-out play must not meet a train puzzle anywhere in the room, rotated or mirrored.
    assert not {_puzzle_key(train[i]) for i in range(len(train))} & set(test_puzzles)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shipped_banks_sample_is_solvable_and_nontrivial(variant: str) -> None:
    spec = VARIANTS[variant]
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        bank = load_bank(variant, split)
        for index in rng.choice(len(bank), size=5, replace=False):
            level = bank[int(index)]
            assert not level.is_solved
            result = search(level, max_nodes=spec.max_nodes)
            assert result.actions is not None and len(result.actions) >= spec.min_moves


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shipped_banks_are_current(variant: str, tmp_path: Path) -> None:
    """The first levels of each shipped bank are what make_banks builds now; if not, rerun make_banks."""
    spec = dataclasses.replace(VARIANTS[variant], train_size=3, test_size=1)
    stats = make_banks(tmp_path, {variant: spec}, progress=False)
    shipped = load_bank(variant, "train")
    assert read_boxoban(stats[variant].train_path) == [shipped[i] for i in range(3)]
