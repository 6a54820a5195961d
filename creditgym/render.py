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
#: most frames in one GIF (a 6x6 Sokoban frame takes about 100 kB while the GIF is made)
MAX_FRAMES = 500
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
    action, reward; the last one says how the episode ended). An episode of more than `MAX_FRAMES - 1` steps shows
    its first `MAX_FRAMES - 1` states and its last (the caption counts the steps). None when the record holds no
    states this module can draw; a `RenderWarning` says why when it holds some that are malformed."""
    _check_scale(scale)
    states = [episode.state, *(step.state for step in episode.steps)]
    if not all(isinstance(state, dict) for state in states):
        return None
    draw = _state_drawer(states[0])
    if draw is None:
        return None
    shown = list(range(len(states))) if len(states) <= MAX_FRAMES else [*range(MAX_FRAMES - 1), len(states) - 1]
    try:
        images = [draw(states[i]) for i in shown]
    except (ValueError, TypeError, KeyError, IndexError) as error:
        warnings.warn(f"{_label(episode)}: its states cannot be drawn ({error}); it gets a transcript only",
                      RenderWarning, stacklevel=2)
        return None
    images = _same_size(images)
    captions = [["reset"] if i == 0 else _step_caption(episode, i - 1) for i in shown]
    return [_with_caption(np.kron(image, np.ones((scale, scale, 1), np.uint8)), caption)
            for image, caption in zip(images, captions, strict=True)]


def _state_drawer(state: dict[str, Any]) -> Any:
    if "board" in state:
        return _sokoban_image
    if {"grid", "agent_pos", "agent_dir"} <= state.keys():
        return _minigrid_image
    return None


def _sokoban_image(state: dict[str, Any]) -> np.ndarray:
    from creditgym.envs.sokoban.level import Level, Tile
    from creditgym.envs.sokoban.render import render_rgb

    rows = state["board"]
    if not isinstance(rows, list) or not all(isinstance(row, str) for row in rows):
        raise ValueError("state['board'] must be a list of strings")
    _check_board_size(len(rows), max((len(row) for row in rows), default=0))
    tiles = Level.from_rows(rows).tiles
    return render_rgb(tiles[_room(tiles != Tile.WALL)])


def _room(inside: np.ndarray) -> tuple[slice, slice]:
    """The room with one ring of wall around it: the whole board of an array-view record, the room inside an
    egocentric window (the same room, wherever the player stands in it)."""
    cells = np.argwhere(inside)
    if not len(cells):
        return slice(None), slice(None)
    top, left = np.maximum(cells.min(0) - 1, 0)
    bottom, right = cells.max(0) + 2
    return slice(int(top), int(bottom)), slice(int(left), int(right))


def _room_rows(rows: list[Any]) -> list[str]:
    """The board rows of a Sokoban state, cut to the room as the frames are."""
    rows = [str(row) for row in rows]
    width = max((len(row) for row in rows), default=0)
    padded = [row.ljust(width, "#") for row in rows]
    window_rows, window_columns = _room(np.array([[ch != "#" for ch in row] for row in padded], dtype=bool)
                                        .reshape(len(padded), width))
    return [row[window_columns] for row in padded[window_rows]]


def _minigrid_image(state: dict[str, Any]) -> np.ndarray:
    from minigrid.core.grid import Grid

    encoding = np.asarray(state["grid"], dtype=np.uint8)
    if encoding.ndim != 3 or encoding.shape[2] != 3:
        raise ValueError(f"state['grid'] must be a width x height x 3 encoding, got shape {encoding.shape}")
    _check_board_size(*encoding.shape[:2])
    grid, _ = Grid.decode(encoding)
    position = tuple(int(v) for v in state["agent_pos"])
    return grid.render(16, agent_pos=position, agent_dir=int(state["agent_dir"]))


def _check_board_size(height: int, width: int) -> None:
    if height * width > MAX_BOARD_CELLS:
        raise ValueError(f"its board is {height}x{width} cells, more than the {MAX_BOARD_CELLS} drawn")


def _same_size(images: list[np.ndarray]) -> list[np.ndarray]:
    """Pads every image to the largest height and width (a GIF's frames share one size)."""
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    return [np.pad(image, ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0)))
            if image.shape[:2] != (height, width) else image for image in images]


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
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps (frames per second) must be a positive number, got {fps}")


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
        lines += ["", f"[step {t + 1}] action: {_action_name(episode, step.action)}{invalid}; reward "
                      f"{step.reward:+.4g}" + (f" ({rewards})" if rewards and len(step.reward_components) > 1 else "")
                  + ended, _shown(step.observation, step.state)]
    return "\n".join(lines) + "\n"


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
        return action if "\n" not in action else "\n" + action
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
        transcript.write_text(episode_transcript(episode, index=index, source=source), encoding="utf-8")
        frames = episode_frames(episode, scale=scale)
        animation = write_gif(frames, out / f"{name}.gif", fps=fps) if frames else None
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
