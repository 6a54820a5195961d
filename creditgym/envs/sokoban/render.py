"""Drawing Sokoban boards: RGB images from in-memory sprites, and text boards."""

from __future__ import annotations

import numpy as np

from creditgym.envs.sokoban.level import NUM_TILES, Tile, board_rows

SPRITE_SIZE = 16

_WALL = (105, 72, 48)
_FLOOR = (222, 212, 188)
_TARGET = (214, 56, 56)
_BOX = (196, 140, 40)
_BOX_DONE = (70, 170, 70)
_PLAYER = (40, 80, 200)


def _sprite(background: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(background, np.uint8), (SPRITE_SIZE, SPRITE_SIZE, 3)).copy()


def _draw_sprites() -> np.ndarray:
    """One 16x16 RGB sprite per tile, drawn once at import (no image files are read)."""
    yy, xx = np.mgrid[:SPRITE_SIZE, :SPRITE_SIZE] + 0.5
    centre = SPRITE_SIZE / 2
    disc = (yy - centre) ** 2 + (xx - centre) ** 2 <= (SPRITE_SIZE * 0.32) ** 2
    ring = np.abs(np.sqrt((yy - centre) ** 2 + (xx - centre) ** 2) - SPRITE_SIZE * 0.28) < 1.2
    square = (np.abs(yy - centre) < SPRITE_SIZE * 0.38) & (np.abs(xx - centre) < SPRITE_SIZE * 0.38)
    mortar = (yy.astype(int) % 8 == 0) | ((xx.astype(int) + 4 * (yy.astype(int) // 8)) % 8 == 0)

    sprites = np.zeros((NUM_TILES, SPRITE_SIZE, SPRITE_SIZE, 3), np.uint8)
    sprites[Tile.WALL] = _sprite(_WALL)
    sprites[Tile.WALL][mortar] = (70, 48, 32)
    sprites[Tile.FLOOR] = _sprite(_FLOOR)
    sprites[Tile.TARGET] = _sprite(_FLOOR)
    sprites[Tile.TARGET][ring] = _TARGET
    sprites[Tile.BOX] = _sprite(_FLOOR)
    sprites[Tile.BOX][square] = _BOX
    sprites[Tile.BOX_ON_TARGET] = _sprite(_FLOOR)
    sprites[Tile.BOX_ON_TARGET][square] = _BOX_DONE
    sprites[Tile.PLAYER] = _sprite(_FLOOR)
    sprites[Tile.PLAYER][disc] = _PLAYER
    sprites[Tile.PLAYER_ON_TARGET] = sprites[Tile.TARGET].copy()
    sprites[Tile.PLAYER_ON_TARGET][disc] = _PLAYER
    sprites.setflags(write=False)
    return sprites


SPRITES = _draw_sprites()


def render_rgb(tiles: np.ndarray) -> np.ndarray:
    """(H, W) tiles -> (H*16, W*16, 3) uint8 image."""
    height, width = tiles.shape
    return SPRITES[tiles].transpose(0, 2, 1, 3, 4).reshape(height * SPRITE_SIZE, width * SPRITE_SIZE, 3)


def render_board(tiles: np.ndarray, symbols: dict[Tile, str]) -> str:
    """(H, W) tiles -> one line of symbols per row."""
    return "\n".join(board_rows(tiles, symbols))


def egocentric_radius(height: int, width: int) -> int:
    """Window radius that shows the whole room (inside its wall border) from any cell the player can stand on."""
    return max(height, width) - 3


def egocentric_one_hot(tiles: np.ndarray, player: tuple[int, int]) -> np.ndarray:
    """(7, 2r+1, 2r+1) uint8 one-hot of the tiles around the player; beyond the board reads as wall."""
    radius = egocentric_radius(*tiles.shape)
    padded = np.pad(tiles, radius, constant_values=Tile.WALL)
    return one_hot(padded[player[0]:player[0] + 2 * radius + 1, player[1]:player[1] + 2 * radius + 1])


def one_hot(tiles: np.ndarray) -> np.ndarray:
    """(H, W) tiles -> (7, H, W) uint8, one channel per `Tile`."""
    return (tiles[None] == _CHANNELS).view(np.uint8)


_CHANNELS = np.arange(NUM_TILES, dtype=np.int8)[:, None, None]
