"""Reverse-play Sokoban level generator (Racanière et al. 2017, as in gym-sokoban).

A "digger" walks randomly inside the wall border and stamps small floor brushes, giving a connected room.
Targets and the player go on random floor cells with a box on every target, and the player then plays
backwards: it walks to a box and *pulls* it, again and again. Every state reached this way is solvable
forward by replaying the walk in reverse. Of all states visited by a few such random reverse walks, the
one with the highest gym-sokoban score (box swaps x total box displacement) that is not already solved
becomes the level, with the player put on a random cell of the area it can walk to.
"""

from __future__ import annotations

import numpy as np

from creditgym.envs.sokoban.level import Level, Tile

# Brushes the digger stamps around its position (gym-sokoban's masks). Each holds the centre cell and
# is connected through it, and consecutive centres are neighbours, so the floor is always connected.
_BRUSHES = np.array(
    [
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
        [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[0, 0, 0], [1, 1, 0], [0, 1, 0]],
        [[0, 0, 0], [1, 1, 0], [1, 1, 0]],
        [[0, 0, 0], [0, 1, 1], [0, 1, 0]],
    ],
    dtype=bool,
)
_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))


class GenerationError(RuntimeError):
    """The generator found no acceptable level within its tries."""


def generate_level(
    rng: np.random.Generator,
    *,
    height: int,
    width: int,
    num_boxes: int,
    dig_steps: int | None = None,
    p_change_direction: float = 0.35,
    pulls: int | None = None,
    reverse_walks: int = 4,
    max_tries: int = 100,
) -> Level:
    """Generate one solvable level that does not start solved.

    Args:
        rng: the only source of randomness; the same generator state gives the same level.
        height: grid rows, wall border included (at least 3).
        width: grid columns, wall border included (at least 3).
        num_boxes: boxes (and targets) in the level (at least 1).
        dig_steps: steps of the digger's walk; default ``int(1.7 * (height + width))`` as in gym-sokoban.
        p_change_direction: chance per step that the digger turns to a random direction.
        pulls: pulls per reverse walk; default ``height + width``.
        reverse_walks: independent reverse walks per room; the best-scoring state over all of them wins.
        max_tries: rooms to try before giving up with `GenerationError`.

    Raises:
        ValueError: the parameters cannot give a level (e.g. more boxes than the room can hold).
        GenerationError: no room of the `max_tries` tried gave a level with a positive score.
    """
    if height < 3 or width < 3:
        raise ValueError(f"height and width must be at least 3 (wall border included), got {height}x{width}")
    if num_boxes < 1:
        raise ValueError(f"num_boxes must be at least 1, got {num_boxes}")
    interior = (height - 2) * (width - 2)
    # A pull needs the player, every box and one free cell to step into.
    if interior < num_boxes + 2:
        raise ValueError(
            f"a {height}x{width} room has {interior} inner cells, too few for {num_boxes} boxes, the player "
            f"and a free cell; use at most {max(interior - 2, 0)} boxes or a larger room"
        )
    if dig_steps is None:
        dig_steps = int(1.7 * (height + width))
    if pulls is None:
        pulls = height + width
    if dig_steps < 1 or pulls < 1 or reverse_walks < 1 or max_tries < 1:
        raise ValueError("dig_steps, pulls, reverse_walks and max_tries must all be at least 1")
    if not 0.0 <= p_change_direction <= 1.0:
        raise ValueError(f"p_change_direction must be in [0, 1], got {p_change_direction}")

    for _ in range(max_tries):
        floor = _dig_room(rng, height, width, dig_steps, p_change_direction).ravel()
        cells = np.flatnonzero(floor)
        if len(cells) < num_boxes + 2:
            continue
        picked = rng.choice(cells, size=num_boxes + 1, replace=False).tolist()
        player, targets = picked[0], picked[1:]
        found = _reverse_play(rng, floor.tolist(), width, targets, player, pulls, reverse_walks)
        if found is None:
            continue
        boxes, player = found
        return _build_level(floor, height, width, targets, boxes, player)
    raise GenerationError(
        f"no {height}x{width} level with {num_boxes} boxes after {max_tries} rooms; raise max_tries, "
        "dig_steps or pulls, or use fewer boxes"
    )


def _dig_room(rng: np.random.Generator, height: int, width: int, steps: int, p_change: float) -> np.ndarray:
    """Boolean floor mask carved by the digger's random walk, with a wall border."""
    floor = np.zeros((height, width), dtype=bool)
    turns = (rng.random(steps) < p_change).tolist()
    new_directions = rng.integers(len(_DIRECTIONS), size=steps).tolist()
    brushes = rng.integers(len(_BRUSHES), size=steps).tolist()
    r = int(rng.integers(1, height - 1))
    c = int(rng.integers(1, width - 1))
    dr, dc = _DIRECTIONS[int(rng.integers(len(_DIRECTIONS)))]
    for step in range(steps):
        if turns[step]:
            dr, dc = _DIRECTIONS[new_directions[step]]
        r = min(max(r + dr, 1), height - 2)
        c = min(max(c + dc, 1), width - 2)
        floor[r - 1 : r + 2, c - 1 : c + 2] |= _BRUSHES[brushes[step]]
    floor[[0, -1], :] = False
    floor[:, [0, -1]] = False
    return floor


def _reverse_play(
    rng: np.random.Generator,
    floor: list[bool],
    width: int,
    targets: list[int],
    player: int,
    pulls: int,
    walks: int,
) -> tuple[list[int], int] | None:
    """Best (boxes, player) over random reverse walks from the solved room, or None if every score is 0.

    Cells are flat indices; box ``i`` starts on ``targets[i]``. Each walk step is one pull chosen uniformly
    among those the player can reach, so no step is wasted walking into walls.
    """
    size = len(floor)
    moves = (-width, width, -1, 1)
    rows = [i // width for i in range(size)]
    cols = [i % width for i in range(size)]
    is_target = [False] * size
    for t in targets:
        is_target[t] = True
    num_boxes = len(targets)
    best_score = 0
    best: tuple[list[int], list[int]] | None = None
    for _ in range(walks):
        box_at = [-1] * size
        for i, t in enumerate(targets):
            box_at[t] = i
        boxes = list(targets)
        p = player
        last_pulled = -1
        swaps = displacement = 0
        on_target = num_boxes
        for u in rng.random(pulls).tolist():
            reach = _reachable(floor, box_at, p, moves)
            options = [
                (b, d)
                for b, cell in enumerate(boxes)
                for d in moves
                if reach[cell + d] and floor[cell + 2 * d] and box_at[cell + 2 * d] < 0
            ]
            if not options:
                break
            b, d = options[int(u * len(options))]
            old = boxes[b]
            new = old + d
            origin = targets[b]
            displacement += (abs(rows[new] - rows[origin]) + abs(cols[new] - cols[origin])) - (
                abs(rows[old] - rows[origin]) + abs(cols[old] - cols[origin])
            )
            on_target += is_target[new] - is_target[old]
            box_at[old] = -1
            box_at[new] = b
            boxes[b] = new
            p = new + d
            if b != last_pulled:
                swaps += 1
                last_pulled = b
            score = swaps * displacement
            if score > best_score and on_target < num_boxes:
                best_score = score
                best = (list(boxes), list(box_at), p)
    if best is None:
        return None
    boxes, box_at, p = best
    # The player may walk anywhere after its last pull; a random spot hides where that pull happened.
    region = [i for i, seen in enumerate(_reachable(floor, box_at, p, moves)) if seen]
    return boxes, region[int(rng.integers(len(region)))]


def _reachable(floor: list[bool], box_at: list[int], start: int, moves: tuple[int, ...]) -> list[bool]:
    """Cells the player reaches from `start` without pushing (flat indices)."""
    seen = [False] * len(floor)
    seen[start] = True
    frontier = [start]
    for cell in frontier:  # grows while iterating: a breadth-first queue
        for d in moves:
            nxt = cell + d
            if not seen[nxt] and floor[nxt] and box_at[nxt] < 0:
                seen[nxt] = True
                frontier.append(nxt)
    return seen


def _build_level(
    floor: np.ndarray, height: int, width: int, targets: list[int], boxes: list[int], player: int
) -> Level:
    tiles = np.where(floor, Tile.FLOOR, Tile.WALL).astype(np.int8)
    tiles[targets] = Tile.TARGET
    is_target = tiles == Tile.TARGET
    tiles[boxes] = np.where(is_target[boxes], Tile.BOX_ON_TARGET, Tile.BOX)
    tiles[player] = Tile.PLAYER_ON_TARGET if is_target[player] else Tile.PLAYER
    return Level(tiles.reshape(height, width))
