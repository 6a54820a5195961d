"""Watching recorded episodes: animated GIFs of the boards and text transcripts of any trajectory record.

A record (`creditgym.trajectories.Episode`) holds what the policy saw and did; for Sokoban and MiniGrid it also holds
the env's state after every step, from which each frame is drawn:
- Sokoban: the board rows (`state["board"]`), drawn with the env's own sprites. A record of the egocentric view holds
  the window around the player, which moves with it; every frame is cropped to the room (the window always shows all
  of it), so the room stays put and the player walks through it.
- MiniGrid as text: the grid encoding with the agent's position and direction, drawn by the `minigrid` package.
Any other record (text envs, LLM runs) gets its transcript only: instructions, then each action with its reward and
the observation that followed.

    creditgym eval RUN --record ev.jsonl
    creditgym render ev.jsonl --which failed
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from creditgym.trajectories import Episode, read_trajectories

#: which episodes `render_file` draws: every one, the solved ones or the unsolved ones
SELECTIONS = ("all", "solved", "failed")
#: how long the last frame stays up before a GIF starts again, so that the end of the episode can be seen
FINAL_FRAME_MS = 1500
#: largest board drawn, in cells (a record's states are data from a file: a huge board would make a huge image)
MAX_BOARD_CELLS = 64 * 64
MAX_SCALE = 8
#: most frames in one GIF (a 6x6 Sokoban frame at scale 2 takes about 100 kB while the GIF is made)
MAX_FRAMES = 500
#: most pixels in one frame: a larger board is drawn at a smaller scale (a 64x64 board fits at scale 1)
MAX_FRAME_PIXELS = 1024 * 1024
#: most bytes of frames held while a GIF is made: a long episode of large frames shows its first states and its last
MAX_GIF_BYTES = 128 * 2**20
#: GIF frame times are stored in hundredths of a second in 16 bits: at most 655.35 s a frame
MIN_FPS = 1 / 655
_CAPTION_HEIGHT = 14
_CAPTION_BACKGROUND = (32, 32, 32)
_CAPTION_TEXT = (235, 235, 235)


class RenderWarning(UserWarning):
    """A record whose states cannot be drawn: it gets its transcript only."""


@dataclass
class Rendered:
    """What `render_file` wrote for one episode."""

    index: int
    """the episode's place in the file, from 0"""
    transcript: Path
    animation: Path | None
    """None where the record holds no states to draw"""
    solved: bool
    steps: int


# -- frames ------------------------------------------------------------------------------------------------------
def episode_frames(episode: Episode, *, scale: int = 2) -> list[np.ndarray] | None:
    """``(H, W, 3)`` uint8 images: the reset state, then the state after each step, with a caption strip (step,
    action, reward; the last one says how the episode ended). None when the record holds no states this module
    can draw; a `RenderWarning` says why when it holds some that are malformed.

    Memory is bounded whatever the record holds: a frame has at most `MAX_FRAME_PIXELS` (a larger board is drawn at
    a smaller scale) and the frames together at most `MAX_GIF_BYTES`, and never more than `MAX_FRAMES`; a longer
    episode shows its first states and its last (the caption counts the steps), with a warning where the bytes, not
    `MAX_FRAMES`, set the limit."""
    _check_scale(scale)
    states = [episode.state, *(step.state for step in episode.steps)]
    if not all(isinstance(state, dict) for state in states):
        return None
    draw = _state_drawer(states[0])
    if draw is None:
        return None
    try:
        first = draw(states[0])
        height, width = first.shape[:2]
        fitting = max(1, math.isqrt(MAX_FRAME_PIXELS // (height * width)))
        if fitting < scale:
            warnings.warn(f"{_label(episode)}: its {height}x{width}-pixel boards are drawn at scale {fitting}, not "
                          f"{scale} (at most {MAX_FRAME_PIXELS:,} pixels a frame)", RenderWarning, stacklevel=2)
            scale = fitting
        frame_bytes = (height * scale + _CAPTION_HEIGHT) * width * scale * 3
        limit = min(MAX_FRAMES, max(2, MAX_GIF_BYTES // frame_bytes))
        if limit < min(len(states), MAX_FRAMES):
            warnings.warn(f"{_label(episode)}: {limit} of its {len(states)} states are drawn (at most "
                          f"{MAX_GIF_BYTES // 2**20} MiB of frames); a smaller scale draws more", RenderWarning,
                          stacklevel=2)
        shown = list(range(len(states))) if len(states) <= limit else [*range(limit - 1), len(states) - 1]
        images = [first]
        for i in shown[1:]:
            images.append(draw(states[i]))
            if images[-1].shape != first.shape:  # the budget above holds for frames the size of the first
                raise ValueError(f"its board changes size from {first.shape[:2]} to {images[-1].shape[:2]} pixels")
    except _UNDRAWABLE as error:
        warnings.warn(f"{_label(episode)}: its states cannot be drawn ({type(error).__name__}: {error}); it gets a "
                      "transcript only", RenderWarning, stacklevel=2)
        return None
    captions = [["reset"] if i == 0 else _step_caption(episode, i - 1) for i in shown]
    return [_with_caption(np.kron(image, np.ones((scale, scale, 1), np.uint8)), caption)
            for image, caption in zip(images, captions, strict=True)]


# What malformed state data (a record is a file anyone can write) raises on its way through numpy, minigrid and the
# level parser; every one means "cannot be drawn", never a crash.
_UNDRAWABLE = (ValueError, TypeError, KeyError, IndexError, OverflowError, AssertionError)


def _state_drawer(state: dict[str, Any]) -> Any:
    if "board" in state:
        return _sokoban_image
    if {"grid", "agent_pos", "agent_dir"} <= state.keys():
        return _minigrid_image
    return None


def _sokoban_image(state: dict[str, Any]) -> np.ndarray:
    from creditgym.envs.sokoban.render import render_rgb

    return render_rgb(_sokoban_room(state["board"]))


def _sokoban_room(rows: Any) -> np.ndarray:
    """The tiles of the room the player stands in, with one ring of wall, and wall for every cell outside it: the
    whole board of an array-view record, the room inside an egocentric window (the same room, wherever the player
    stands in it, even where a level has floor outside its walls)."""
    from creditgym.envs.sokoban.level import Level, Tile, flood_fill

    if not isinstance(rows, list) or not all(isinstance(row, str) for row in rows):
        raise ValueError("state['board'] must be a list of strings")
    _check_board_size(len(rows), max((len(row) for row in rows), default=0))
    level = Level.from_rows(rows)
    room = flood_fill(level.tiles == Tile.WALL, level.player)
    cells = np.argwhere(room)
    top, left = np.maximum(cells.min(0) - 1, 0)
    bottom, right = cells.max(0) + 2
    tiles = np.where(room, level.tiles, Tile.WALL).astype(np.int8)
    return tiles[top:bottom, left:right]


def _room_rows(rows: Any) -> list[str]:
    """The board rows of a Sokoban state, cut to the room as the frames are (as recorded where they cannot be)."""
    from creditgym.envs.sokoban.level import BOXOBAN_SYMBOLS, board_rows

    try:
        return board_rows(_sokoban_room(rows), BOXOBAN_SYMBOLS)
    except _UNDRAWABLE:
        return [str(row) for row in rows]


def _minigrid_image(state: dict[str, Any]) -> np.ndarray:
    from minigrid.core.grid import Grid

    encoding = np.asarray(state["grid"])
    if encoding.ndim != 3 or encoding.shape[2] != 3 or min(encoding.shape[:2]) < 3:
        raise ValueError(f"state['grid'] must be a width x height x 3 encoding of at least 3x3 cells, got shape "
                         f"{encoding.shape}")
    if encoding.dtype.kind not in "iu" or encoding.min() < 0 or encoding.max() > 255:
        raise ValueError("state['grid'] must hold integers from 0 to 255")
    _check_board_size(*encoding.shape[:2])
    position, direction = state["agent_pos"], state["agent_dir"]
    width, height = encoding.shape[:2]
    inside = (isinstance(position, list | tuple) and len(position) == 2
              and all(isinstance(v, int) and 0 <= v < size for v, size in zip(position, (width, height), strict=True)))
    if not inside:
        raise ValueError(f"state['agent_pos'] must be two cell indices inside the grid, got {position!r}")
    if not isinstance(direction, int) or not 0 <= direction < 4:
        raise ValueError(f"state['agent_dir'] must be 0, 1, 2 or 3, got {direction!r}")
    grid, _ = Grid.decode(encoding.astype(np.uint8))
    return grid.render(16, agent_pos=tuple(position), agent_dir=direction)


def _check_board_size(height: int, width: int) -> None:
    if height * width > MAX_BOARD_CELLS:
        raise ValueError(f"its board is {height}x{width} cells, more than the {MAX_BOARD_CELLS} drawn")


def _with_caption(image: np.ndarray, caption: Sequence[str]) -> np.ndarray:
    """`image` above a strip with the caption's parts; where they do not fit, the second part (the action) goes."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + _CAPTION_HEIGHT), _CAPTION_BACKGROUND)
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    text = " ".join(caption)
    if len(caption) > 2 and draw.textlength(text) > image.shape[1] - 4:
        text = " ".join([caption[0], *caption[2:]])
    draw.text((2, image.shape[0] + 1), text, fill=_CAPTION_TEXT)
    return np.asarray(canvas)


def write_gif(frames: Sequence[np.ndarray], path: str | Path, *, fps: float = 4.0) -> Path:
    """An animated GIF that loops, `fps` frames a second, the last frame held for `FINAL_FRAME_MS`."""
    from PIL import Image

    if not frames:
        raise ValueError("a GIF needs at least one frame")
    _check_fps(fps)
    path = Path(path)
    step_ms = max(20, round(1000 / fps))  # browsers show shorter frame times as 100 ms
    images = [Image.fromarray(frame) for frame in frames]
    durations = [step_ms] * (len(images) - 1) + [max(step_ms, FINAL_FRAME_MS)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


def _check_fps(fps: float) -> None:
    if not (math.isfinite(fps) and fps >= MIN_FPS):
        raise ValueError(f"fps (frames per second) must be a number of at least {MIN_FPS:.4f} (a GIF shows a frame for "
                         f"at most 655 s), got {fps}")


def _check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"scale (pixels per sprite pixel) must be an integer from 1 to {MAX_SCALE}, got {scale!r}")


# -- transcripts -------------------------------------------------------------------------------------------------
def episode_transcript(episode: Episode, *, index: int | None = None, source: str | Path | None = None) -> str:
    """The episode as text: where it comes from, how it ended, the instructions (text envs), then the reset
    observation and each step's action, rewards and the observation that followed."""
    where = f" of {source}" if source is not None else ""
    title = f"Episode {index}{where}" if index is not None else f"Episode{where}"
    details = [episode.env_id, f"seed {episode.seed}"]
    details += [f"{key} {value}" for key, value in episode.metadata.items() if isinstance(value, int | float | str)]
    channels = ", ".join(f"{name} {value:+.4g}" for name, value in episode.channel_sums().items())
    lines = [f"{title}: {', '.join(details)}",
             f"{_ending(episode)} after {len(episode.steps)} steps; return {episode.total_reward:+.4g}"
             + (f" ({channels})" if channels else "")]
    instructions = episode.info.get("instructions")
    if isinstance(instructions, str):
        lines += ["", "Instructions:", instructions]
    lines += ["", "[reset]", _shown(episode.observation, episode.state)]
    for t, step in enumerate(episode.steps):
        rewards = ", ".join(f"{name} {value:+.4g}" for name, value in step.reward_components.items())
        ended = " (terminated)" if step.terminated else " (truncated)" if step.truncated else ""
        invalid = " (invalid)" if step.info.get("invalid_action") else ""
        action = _action_name(episode, step.action)
        if "\n" in action:  # an LLM's reply: a block of its own, so that nothing runs into it
            action = "\n" + "\n".join(f"    {line}" for line in action.strip("\n").split("\n"))
        lines += ["", f"[step {t + 1}] reward {step.reward:+.4g}"
                      + (f" ({rewards})" if rewards and len(step.reward_components) > 1 else "") + invalid + ended,
                  f"action: {action}", _shown(step.observation, step.state)]
    return _printable("\n".join(lines)) + "\n"


# Control characters but newline and tab: an LLM's reply or a record may hold terminal escape sequences, which
# `cat transcript.txt` would otherwise run.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _ending(episode: Episode) -> str:
    if episode.success:
        return "Solved"
    if not episode.steps:
        return "No steps"
    last = episode.steps[-1]
    return "Not solved: ended" if last.terminated else "Not solved: cut off" if last.truncated else "Not solved"


def _shown(observation: Any, state: dict[str, Any] | None) -> str:
    """Text observations as they are; a grid observation as the board its state holds, or its shape."""
    if isinstance(observation, str):
        return observation
    if isinstance(state, dict) and isinstance(state.get("board"), list):
        return "\n".join(_room_rows(state["board"]))
    if isinstance(observation, np.ndarray):
        return f"(array observation, shape {observation.shape}, {observation.dtype})"
    text = repr(observation)
    return text if len(text) <= 300 else text[:300] + "..."


def _action_name(episode: Episode, action: Any) -> str:
    if isinstance(action, str):
        return action
    if episode.env_id.startswith("creditgym/Sokoban") and isinstance(action, int | np.integer):
        from creditgym.envs.sokoban.text import ACTION_NAMES

        names = list(ACTION_NAMES.values())
        return names[int(action)] if 0 <= int(action) < len(names) else repr(action)
    return repr(action)


def _step_caption(episode: Episode, t: int) -> list[str]:
    """Step, action (a text action only when short), reward, and how the episode ended on its last step."""
    step = episode.steps[t]
    action = _action_name(episode, step.action)
    if isinstance(step.action, str) and (len(action) > 16 or "\n" in action):
        action = "reply"
    caption = [f"{t + 1}/{len(episode.steps)}", action, f"{step.reward:+.3g}"]
    if t == len(episode.steps) - 1:
        caption.append("SOLVED" if episode.success else "failed")
    return caption


def _label(episode: Episode) -> str:
    return f"episode of {episode.env_id} with seed {episode.seed}"


# -- files -------------------------------------------------------------------------------------------------------
def render_file(source: str | Path, out_dir: str | Path | None = None, *, episodes: int = 8, which: str = "all",
                fps: float = 4.0, scale: int = 2) -> list[Rendered]:
    """Draws the first `episodes` episodes of the trajectory file `source` that `which` selects ("all", "solved",
    "failed"): `episode-NNNNN.gif` where the records hold drawable states, and `episode-NNNNN.txt`, the transcript,
    for every one (NNNNN: the episode's place in the file). `out_dir` defaults to a folder beside the file, named
    after it (`ev.jsonl` -> `ev-render/`). Files of the same names there are replaced; nothing else is touched."""
    if which not in SELECTIONS:
        raise ValueError(f"which must be one of {SELECTIONS}, got {which!r}")
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    _check_fps(fps)
    _check_scale(scale)
    source = Path(source)
    out = Path(out_dir) if out_dir is not None else default_render_dir(source)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder to write the renders to")
    rendered: list[Rendered] = []
    for index, episode in _selected(source, which):
        out.mkdir(parents=True, exist_ok=True)
        name = f"episode-{index:05d}"
        transcript = out / f"{name}.txt"
        # backslashreplace: JSON may hold lone surrogates ("\ud800"), which UTF-8 cannot encode
        transcript.write_text(episode_transcript(episode, index=index, source=source), encoding="utf-8",
                              errors="backslashreplace")
        frames = episode_frames(episode, scale=scale)
        animation = write_gif(frames, out / f"{name}.gif", fps=fps) if frames else None
        if animation is None:  # an earlier render's GIF of this name would show another episode
            (out / f"{name}.gif").unlink(missing_ok=True)
        rendered.append(Rendered(index, transcript, animation, episode.success, len(episode.steps)))
        if len(rendered) == episodes:
            break
    return rendered


def default_render_dir(source: Path) -> Path:
    name = source.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return source.with_name(f"{name}-render")


def _selected(source: Path, which: str) -> Iterator[tuple[int, Episode]]:
    for index, episode in enumerate(read_trajectories(source)):
        if which == "all" or (which == "solved") == episode.success:
            yield index, episode
