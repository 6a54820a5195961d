"""Batched Sokoban in torch: thousands of boards stepped together on the CPU or a GPU."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from creditgym.envs.arguments import flag, positive_int
from creditgym.envs.lifecycle import require_reset
from creditgym.envs.options import reset_option
from creditgym.envs.sokoban.bank import LevelBank, resolve_bank
from creditgym.envs.sokoban.level import NUM_TILES, Tile
from creditgym.envs.sokoban.render import egocentric_radius
from creditgym.envs.sokoban.rules import DELTAS, Action, SokobanRewards, resolve_rewards

# Action dtypes that hold moves as they are; others (floats, booleans) have their values checked first.
_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

# Boards are stored as bit flags so a move is a few integer ops; `_TILE_OF_CODE` maps back to `Tile`.
WALL_BIT, TARGET_BIT, BOX_BIT, PLAYER_BIT = 1, 2, 4, 8
_CODE_OF_TILE = {
    Tile.WALL: WALL_BIT,
    Tile.FLOOR: 0,
    Tile.TARGET: TARGET_BIT,
    Tile.BOX_ON_TARGET: BOX_BIT | TARGET_BIT,
    Tile.BOX: BOX_BIT,
    Tile.PLAYER: PLAYER_BIT,
    Tile.PLAYER_ON_TARGET: PLAYER_BIT | TARGET_BIT,
}
_NUM_CODES = 16
_NUM_COUNTERS = 5  # per board: player, boxes on target, elapsed steps, boxes, level index
# The attributes `SokobanVectorEnv._make_views` sets: views into its buffer and counters, not state of their own.
_VIEWS = frozenset({"_flat", "_packed_flat", "_codes", "_packed", "_player", "_on_target", "_elapsed", "_num_boxes",
                    "level_index", "_player_column", "_counters"})


def _tile_of_code() -> np.ndarray:
    table = np.zeros(_NUM_CODES, np.int64)
    for tile, code in _CODE_OF_TILE.items():
        table[code] = tile
    return table


def _packed_one_hot(tile_of_code: np.ndarray) -> np.ndarray:
    """For each code, an int64 whose bytes (in memory order) are the one-hot of its tile."""
    table = np.zeros((_NUM_CODES, 8), np.uint8)
    table[np.arange(_NUM_CODES), tile_of_code] = 1
    table[~np.isin(np.arange(_NUM_CODES), list(_CODE_OF_TILE.values()))] = 0
    return table.view(np.int64).reshape(_NUM_CODES)


def _outcome_table(rewards: SokobanRewards) -> tuple[np.ndarray, np.ndarray]:
    """Everything a move does, indexed by (code ahead) * 16 + (code two ahead).

    Returns int64 columns [moved, change at player, change ahead, change two ahead, change in boxes on
    target] and the float64 task reward before any solve bonus, summed in the same order as SokobanEnv.
    """
    effects = np.zeros((_NUM_CODES * _NUM_CODES, 5), np.int64)
    reward = np.full(_NUM_CODES * _NUM_CODES, rewards.step, np.float64)
    for ahead in range(_NUM_CODES):
        for behind in range(_NUM_CODES):
            key = ahead * _NUM_CODES + behind
            blocked_ahead = ahead & (WALL_BIT | BOX_BIT)
            push = bool(ahead & BOX_BIT) and not behind & (WALL_BIT | BOX_BIT | PLAYER_BIT)
            if blocked_ahead and not push:
                continue
            box_on = push and bool(behind & TARGET_BIT)
            box_off = push and bool(ahead & TARGET_BIT)
            effects[key] = (1, -PLAYER_BIT, PLAYER_BIT - BOX_BIT * push, BOX_BIT * push, int(box_on) - int(box_off))
            task = rewards.step
            if box_on:
                task += rewards.box_on_target
            if box_off:
                task += rewards.box_off_target
            reward[key] = task
    return effects, reward


def _move_tables(rewards: SokobanRewards, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Everything a step does to a board, indexed by 1024 * (code at the player) + 64 * (code ahead) + 4 * (code
    two ahead) + action, so that one lookup replaces the arithmetic of a move.

    Returns int64 [new code at the player, ahead and two ahead; the same three as packed one-hots], int64
    [player move, change in boxes on target, 1 (the step count)] and the float32 task reward indexed by
    row * 2 + solved, from the same float64 sums as `_outcome_table`.
    """
    effects, reward = _outcome_table(rewards)
    player, key, action = (axis.reshape(-1) for axis in np.indices((_NUM_CODES, _NUM_CODES**2, len(Action))))
    ahead, behind = np.divmod(key, _NUM_CODES)
    # Rows with no player at the player's cell, or a second player ahead, never occur: they change nothing.
    possible = (player & PLAYER_BIT != 0) & (ahead & PLAYER_BIT == 0) & (behind & PLAYER_BIT == 0)
    moved, at_player, at_ahead, at_behind, boxes = effects[key].T * possible
    codes = np.stack([player + at_player, ahead + at_ahead, behind + at_behind], axis=1)
    deltas = np.array([DELTAS[a][0] * width + DELTAS[a][1] for a in Action])
    counters = np.stack([moved * deltas[action], boxes, np.ones_like(moved)], axis=1)
    cells = np.concatenate([codes, _packed_one_hot(_tile_of_code())[codes]], axis=1)
    with_solve = np.stack([reward, reward + rewards.solved], axis=1)[key].reshape(-1)
    return cells, counters, with_solve.astype(np.float32)


class SokobanVectorEnv(VectorEnv):
    """`num_envs` Sokoban boards stepped as torch tensors on `device`, with same-step autoreset from a bank.

    Dynamics, rewards and array observations match `SokobanEnv` exactly (tested). Observations, rewards,
    terminations and truncations are tensors on `device` and never leave it. When an episode ends, the board
    is replaced by a new level in the same step (`AutoresetMode.SAME_STEP`); the last observation of the
    ended episodes is in `info["final_obs"]`, one row per True entry of the mask `info["_final_obs"]` in env
    order (so `values[info["_final_obs"]] = critic(info["final_obs"])`), which PPO needs to bootstrap on
    truncation. A level solved on the last allowed step is terminated and not truncated (gymnasium's `TimeLimit`
    over the single env sets both flags then); either way no value is bootstrapped from a terminated board.

    Info keys: `reward_components` ({"task", "format"}), `success`, `boxes_on_target`, `level_index` (the
    bank row each board plays), `final_obs`/`_final_obs`, and with `action_mask=True` the (N, 4) mask of moves
    that change the board.

    It is built for speed (PPO on a GPU), not as a drop-in gymnasium vector env, and differs from gymnasium's own
    in three ways: observations, rewards, flags and info values are torch tensors; autoreset is SAME_STEP; and
    `final_obs` is compacted to the ended boards' rows (gymnasium's SyncVectorEnv gives an object array with one
    entry per env, indexed by env, plus `final_info`). Info keys carry no `_key` masks, and there is no `deadlock`.
    So gymnasium's NumPy vector wrappers do not apply: `RecordEpisodeStatistics`, `NormalizeReward` and
    `DictInfoToList` fail on the tensors, and `FlattenObservation`, `TransformObservation`,
    `NormalizeObservation` and `DtypeObservation` refuse SAME_STEP autoreset. For those, and for rendering
    (`render_mode` is refused here), `gymnasium.make_vec(id, n, vectorization_mode="sync")` gives a standard
    gymnasium vector env of `SokobanEnv`s (NumPy, NEXT_STEP autoreset), much slower.

    Levels come from one seeded generator that draws a level for every board of the batch at each step (used by
    the boards that end). To split one batch across processes, e.g. Ray workers, give each part `first_env` (the
    batch index of its first board) and `total_envs` (the whole batch's size): each part then draws as the whole
    batch does and keeps its own rows, so the parts together replay the whole batch exactly.

    So `reset(seed=s)` does not give board i the level that `SokobanEnv.reset(seed=s + i)` gives (gymnasium's
    convention for vector envs of single envs, as in `make_vec(..., vectorization_mode="sync")`): the batch is
    reproducible from its seed, but plays other levels than a sync vector env of the same seed. Pass
    `options={"level_index": ...}` to choose each board's level.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int,
        *,
        levels: str | Path | LevelBank = "6x6-1b",
        split: str = "train",
        max_episode_steps: int = 120,
        rewards: SokobanRewards | str | Mapping[str, float] | None = None,
        device: str | torch.device = "cpu",
        obs_mode: str = "array",
        action_mask: bool = False,
        first_env: int = 0,
        total_envs: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:  # taken only to refuse it clearly: gymnasium.make_vec passes it on as given
            raise ValueError(
                f"SokobanVectorEnv does not render (got render_mode={render_mode!r}); for rendering use "
                "gymnasium.make_vec(..., vectorization_mode='sync'), or creditgym.make_vec, which switches to it"
            )
        if obs_mode not in ("array", "egocentric"):
            raise ValueError(
                f"SokobanVectorEnv produces array or egocentric observations (got obs_mode={obs_mode!r}); for text "
                "or RGB use gymnasium.make_vec(..., vectorization_mode='sync')"
            )
        num_envs = positive_int("num_envs", num_envs)
        max_episode_steps = positive_int("max_episode_steps", max_episode_steps)
        action_mask = flag("action_mask", action_mask)
        total_envs = num_envs if total_envs is None else total_envs
        if not 0 <= first_env <= total_envs - num_envs:
            raise ValueError(f"boards first_env={first_env} .. first_env + num_envs={first_env + num_envs} must lie "
                             f"within the batch of total_envs={total_envs}")
        self.num_envs = num_envs
        self.first_env, self.total_envs = first_env, total_envs
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got "
                             f"{device!r}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():  # torch's own error is a bare assertion
            raise ValueError(f"device={str(device)!r} but torch sees no CUDA device (a CPU-only torch, or no GPU "
                             "here); use device='cpu'")
        self.bank = resolve_bank(levels, split)
        self.rewards = resolve_rewards(rewards)
        self.max_episode_steps = max_episode_steps
        self.action_mask = action_mask
        self.obs_mode = obs_mode
        height, width = self.bank.shape
        self._height, self._width, self._cells = height, width, height * width
        radius = egocentric_radius(height, width)
        self._view_side = 2 * radius + 1 if obs_mode == "egocentric" else None
        shape = (NUM_TILES, height, width) if self._view_side is None else (NUM_TILES,) + (self._view_side,) * 2

        self.single_observation_space = spaces.Box(0, 1, shape, np.uint8)
        self.single_action_space = spaces.Discrete(len(Action))
        self.observation_space = spaces.Box(0, 1, (num_envs, *shape), np.uint8)
        self.action_space = spaces.MultiDiscrete(np.full(num_envs, len(Action)))

        dev = self.device
        codes = _tile_of_code()
        code_of_tile = np.zeros(NUM_TILES, np.int64)
        for tile, code in _CODE_OF_TILE.items():
            code_of_tile[tile] = code
        bank_codes = code_of_tile[self.bank.tiles.reshape(len(self.bank), -1)]
        self._tile_of_code = torch.as_tensor(codes, dtype=torch.int64, device=dev)
        self._packed_one_hot = torch.as_tensor(_packed_one_hot(codes), device=dev)
        self._deltas = torch.tensor([DELTAS[a][0] * width + DELTAS[a][1] for a in Action], device=dev)
        effects, _ = _outcome_table(self.rewards)
        self._moved = torch.as_tensor(effects[:, 0].copy(), device=dev)  # by (code ahead) * 16 + (code two ahead)
        # Two tables rather than one, so that each lookup is contiguous for the write that uses it.
        cell_table, counter_table, reward = _move_tables(self.rewards, width)
        self._new_cells = torch.as_tensor(cell_table, device=dev)
        self._counter_steps = torch.as_tensor(counter_table, device=dev)
        self._reward = torch.as_tensor(reward, device=dev)
        self._move_weights = torch.tensor([1024, 64, 4, 0, 0, 0], device=dev)

        self._generator = torch.Generator(device=dev)
        self._generator.manual_seed(int(np.random.SeedSequence().generate_state(1)[0]))
        # All boards in one flat buffer with a wall margin at each end, so a look two cells ahead never leaves
        # it; the player is an index into it. The buffer's second half holds each cell's packed one-hot
        # (see `_pack`), kept up to date move by move so that an observation is a copy rather than a lookup.
        self._margin = width + 1
        length = num_envs * self._cells + 2 * self._margin
        self._buffer = torch.cat([torch.full((length,), WALL_BIT, dtype=torch.int64, device=dev),
                                  self._packed_one_hot[WALL_BIT].repeat(length)])
        # For each action, the buffer cells a move reads and writes, relative to the player: the player's
        # cell, the one ahead and the one two ahead, in the codes and in the packed one-hots.
        self._cell_offsets = torch.stack([torch.zeros_like(self._deltas), self._deltas, 2 * self._deltas], 1)
        self._cell_offsets = torch.cat([self._cell_offsets, self._cell_offsets + length], 1)
        # Per-board counters as rows of one tensor, so that a step updates the first three with one add and a
        # new level sets all five with one copy. Row order: player, on_target, elapsed, num_boxes, level_index.
        self._state = torch.zeros(_NUM_COUNTERS, num_envs, dtype=torch.int64, device=dev)
        # Each level's counters (the player relative to its board), then its codes: one lookup loads a board.
        bank_player = self.bank.players[:, 0] * width + self.bank.players[:, 1] + self._margin
        counters = np.stack([bank_player, self.bank.boxes_on_target, np.zeros(len(self.bank), np.int64),
                             self.bank.num_boxes, np.arange(len(self.bank))], axis=1)
        self._bank_rows = torch.as_tensor(np.concatenate([counters, bank_codes], axis=1), dtype=torch.int64,
                                          device=dev)
        self._make_views()
        self._has_reset = False

    def _make_views(self) -> None:
        """The named views into `_buffer` and `_state` (again after unpickling, which copies each separately)."""
        length = len(self._buffer) // 2
        self._flat, self._packed_flat = self._buffer[:length], self._buffer[length:]
        boards = slice(self._margin, self._margin + self.num_envs * self._cells)
        self._codes = self._flat[boards].view(self.num_envs, self._cells)
        self._packed = self._packed_flat[boards].view(self.num_envs, self._cells)
        self._player, self._on_target, self._elapsed, self._num_boxes, self.level_index = self._state
        self._player_column = self._player.unsqueeze(1)
        self._counters = self._state[:3]

    def _integer_actions(self, actions: Any) -> torch.Tensor:
        """`actions` that are not an integer tensor (a list, a numpy array, floats) as one, where each is a whole
        number: casting would turn 1.7 into the move 1 and NaN into a huge negative index."""
        if isinstance(actions, torch.Tensor):
            values = actions
        else:
            try:
                array = np.asarray(actions)
            except (TypeError, ValueError):  # ragged lists
                raise self._bad_actions(actions) from None
            if array.dtype.kind not in "iuf":  # strings, None, booleans, objects
                raise self._bad_actions(actions)
            values = torch.as_tensor(array)
        if values.dtype == torch.bool or values.is_complex():
            raise self._bad_actions(actions)
        if values.is_floating_point() and not bool((values.isfinite() & (values == values.round())).all()):
            raise self._bad_actions(actions)
        return values

    def _bad_actions(self, actions: Any) -> ValueError:
        text = any(isinstance(a, str | bytes) for a in (actions if isinstance(actions, list | tuple) else [actions]))
        hint = ("; for text actions make the envs with gymnasium.make_vec(..., vectorization_mode='sync', "
                "obs_mode='text')" if text else "")
        return ValueError(f"actions must be the moves 0-{len(self._deltas) - 1} (up, down, left, right) as whole "
                          f"numbers, one per board; got {actions!r}{hint}")

    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                               torch.Tensor, dict[str, Any]]:
        require_reset(self._has_reset, "step")
        if not (isinstance(actions, torch.Tensor) and actions.dtype in _INTEGER_DTYPES):
            actions = self._integer_actions(actions)  # the hot path (PPO's int64 samples) skips this look at values
        actions = actions.to(device=self.device, dtype=torch.int64)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), a move per board; got {list(actions.shape)}")
        try:
            cells = self._cell_offsets.index_select(0, actions)
        except IndexError:  # only the CPU checks indices; range-checking on a GPU would cost a sync every step
            raise self._bad_actions(actions.tolist()) from None
        cells += self._player_column
        move = self._move_index(self._buffer.index_select(0, cells.view(-1)).view(-1, 6), actions)
        # Writes the six cells' new values. A cell written by two boards is a wall, which keeps its value (the
        # cell two ahead of a move into the border may be the next board's border). scatter_ rather than put_,
        # which is slower from 1,024 boards.
        self._buffer.scatter_(0, cells.view(-1), self._new_cells.index_select(0, move).view(-1))
        self._counters += self._counter_steps.index_select(0, move).t()
        terminated = torch.eq(self._on_target, self._num_boxes)
        done = (self._elapsed >= self.max_episode_steps) | terminated
        truncated = done ^ terminated
        task = self._reward.index_select(0, torch.add(terminated, move, alpha=2))
        info: dict[str, Any] = {
            "reward_components": {"task": task, "format": self._zeros()},
            "success": terminated,
            "boxes_on_target": self._on_target.clone(),
        }
        done_rows = done.nonzero().view(-1)
        next_levels = self._draw_levels()
        if len(done_rows):
            player = self._player.index_select(0, done_rows) if self._view_side is not None else None
            info["final_obs"] = self._observe(self._packed.index_select(0, done_rows), player)
            info["_final_obs"] = done
            self._load_levels(done_rows, next_levels.index_select(0, done_rows))
        info["level_index"] = self.level_index.clone()
        if self.action_mask:
            info["action_mask"] = self._effective_moves()
        return self._observation(), task, terminated, truncated, info

    def _move_index(self, seen: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The row of `_move_tables` for each board, from the six buffer values a move reads."""
        if self.device.type == "cpu":  # one call instead of three; CUDA has no integer matrix products
            return torch.addmv(actions, seen, self._move_weights)
        return (seen * self._move_weights).sum(1).add_(actions)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Load a level into every board, or, with `options={"reset_mask": mask}` (a bool array with an entry per
        board, as gymnasium's vector envs take it), only into the boards where `mask` is True; the others play on.
        `options={"level_index": indices}` picks each board's bank row instead of drawing one.

        The seed is checked as gymnasium's single envs check theirs (a NumPy integer gets the same
        `gymnasium.error.Error`), and it and the options are checked before anything changes, so a refused reset
        leaves the env as it was.
        """
        # reset() without a seed continues the seeded stream
        np_random = gym.utils.seeding.np_random(seed) if seed is not None or self._np_random is None else None
        rows = self._rows_to_reset(reset_option(options, "reset_mask"))
        chosen = reset_option(options, "level_index")
        if chosen is not None:
            chosen = torch.as_tensor(chosen, dtype=torch.int64, device=self.device).reshape(self.num_envs)
            if chosen.min() < 0 or chosen.max() >= len(self.bank):
                raise ValueError(f"options['level_index'] must be in [0, {len(self.bank)})")
        if np_random is not None:
            self._np_random, self._np_random_seed = np_random
        if seed is not None:
            self._generator.manual_seed(int(seed) % 2**64)  # torch takes 64 bits; gymnasium allows larger seeds
        levels = self._draw_levels() if chosen is None else chosen
        self._load_levels(rows, levels.index_select(0, rows))
        self._has_reset = True
        info = {
            "reward_components": {"task": self._zeros(), "format": self._zeros()},
            "success": torch.zeros(self.num_envs, dtype=torch.bool, device=self.device),
            "boxes_on_target": self._on_target.clone(),
            "level_index": self.level_index.clone(),
        }
        if self.action_mask:
            info["action_mask"] = self._effective_moves()
        return self._observation(), info

    def _rows_to_reset(self, mask: Any) -> torch.Tensor:
        """The boards that `options["reset_mask"]` (None: all) selects, as indices."""
        if mask is None:
            return torch.arange(self.num_envs, device=self.device)
        is_bool = (isinstance(mask, np.ndarray) and mask.dtype == np.bool_) or (
            isinstance(mask, torch.Tensor) and mask.dtype == torch.bool)
        if not is_bool or tuple(mask.shape) != (self.num_envs,) or not mask.any():
            raise ValueError(f"options['reset_mask'] must be a bool numpy array or tensor of shape ({self.num_envs},) "
                             f"with at least one True, got {mask!r}")
        if not self._has_reset and not mask.all():
            raise ValueError("the first reset() must load every board; leave out options['reset_mask']")
        return torch.as_tensor(mask, device=self.device).nonzero().squeeze(1)

    def _effective_moves(self) -> torch.Tensor:
        """(N, 4) bool: the moves that would change each board, as `SokobanEnv(action_mask=True)` reports."""
        ahead = (self._player[:, None] + self._deltas).view(-1)
        behind = (self._player[:, None] + 2 * self._deltas).view(-1)
        key = self._flat.index_select(0, ahead) * _NUM_CODES + self._flat.index_select(0, behind)
        return self._moved.index_select(0, key).view(-1, len(Action)).bool()

    def _zeros(self) -> torch.Tensor:
        return torch.zeros(self.num_envs, dtype=torch.float32, device=self.device)

    def _draw_levels(self) -> torch.Tensor:
        """A level for each of this part's boards. The draw covers the whole batch, whatever ends, so that the
        generator's stream depends only on the step count and not on how the batch is split."""
        drawn = torch.randint(len(self.bank), (self.total_envs,), generator=self._generator, device=self.device)
        return drawn if self.total_envs == self.num_envs else drawn[self.first_env:self.first_env + self.num_envs]

    def _load_levels(self, rows: torch.Tensor, chosen: torch.Tensor) -> None:
        levels = self._bank_rows.index_select(0, chosen)
        levels.select(1, 0).add_(rows, alpha=self._cells)  # the player's index in the flat buffer
        self._state.index_copy_(1, rows, levels[:, :_NUM_COUNTERS].t())
        codes = levels[:, _NUM_COUNTERS:]
        self._codes.index_copy_(0, rows, codes)
        self._packed.index_copy_(0, rows, torch.take(self._packed_one_hot, codes))

    # One int64 per cell whose 8 bytes are that cell's one-hot tiles (7 used), so the channels-first
    # observation is a zero-copy view with channels-last strides. Steps and loads keep `_packed` up to date;
    # this rebuilds it from the codes (after `set_state`).
    def _pack(self, codes: torch.Tensor) -> torch.Tensor:
        return self._packed_one_hot.index_select(0, codes.reshape(-1)).view(len(codes), self._cells)

    def _observation(self) -> torch.Tensor:
        """The observation of every board, in memory of its own (the packed boards change at the next step)."""
        if self._view_side is None:
            return self._observe(self._packed.clone(), None)
        return self._observe(self._packed, self._player)

    def _observe(self, packed: torch.Tensor, player: torch.Tensor | None) -> torch.Tensor:
        """Observations from packed boards of their own memory (contiguous, as `as_strided` below assumes)."""
        height, width = (self._height, self._width) if self._view_side is None else (self._view_side,) * 2
        if self._view_side is not None:
            packed = self._window(packed, player)
        # (N, H, W, 8) bytes seen as (N, NUM_TILES, H, W): the channels-first view of channels-last memory
        return packed.view(torch.uint8).as_strided((len(packed), NUM_TILES, height, width),
                                                   (height * width * 8, 1, width * 8, 8))

    def _window(self, packed: torch.Tensor, player: torch.Tensor) -> torch.Tensor:
        """The egocentric crop: packed cells around each player, wall beyond the board (as SokobanEnv)."""
        local = (player - self._margin) % self._cells
        offsets = torch.arange(self._view_side, device=self.device) - self._view_side // 2
        rows = torch.div(local, self._width, rounding_mode="floor")[:, None] + offsets
        cols = (local % self._width)[:, None] + offsets
        inside = ((rows >= 0) & (rows < self._height))[:, :, None] & ((cols >= 0) & (cols < self._width))[:, None, :]
        index = rows.clamp(0, self._height - 1)[:, :, None] * self._width + cols.clamp(0, self._width - 1)[:, None, :]
        window = packed.gather(1, index.view(len(packed), -1))
        return torch.where(inside.view(len(packed), -1), window, self._packed_one_hot[WALL_BIT])

    def __getstate__(self) -> dict[str, Any]:
        # the views are rebuilt on unpickling; pickled, each would carry a copy of the whole buffer or state
        return {name: value for name, value in self.__dict__.items() if name not in _VIEWS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # pickle (cloudpickle, Ray, multiprocessing) gives each tensor storage of its own: the boards would no
        # longer be a view of the flat buffer the rules update, and the copy's observations drift, then crash
        self.__dict__.update(state)
        self._make_views()

    # -- checkpointing of the level cursor ----------------------------------------------------------------
    def get_state(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue exactly: boards, counters and the level-sampling RNG."""
        return {
            "codes": self._codes.clone(),
            "player": self._player.clone(),
            "on_target": self._on_target.clone(),
            "num_boxes": self._num_boxes.clone(),
            "elapsed": self._elapsed.clone(),
            "level_index": self.level_index.clone(),
            "generator": self._generator.get_state(),
        }

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("codes", "player", "on_target", "num_boxes", "elapsed"):
            getattr(self, f"_{name}").copy_(state[name])
        self.level_index.copy_(state["level_index"])
        self._packed.copy_(self._pack(self._codes))
        self._generator.set_state(state["generator"])
        self._has_reset = True
