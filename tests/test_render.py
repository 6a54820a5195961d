"""Drawing recorded episodes (`creditgym render`): one frame per state, a room that stays put under the egocentric
view, transcripts of text episodes, the solved/failed selection, and malformed records that get a transcript only."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

import creditgym  # noqa: F401  (registers the envs)
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.cli import main
from creditgym.envs.sokoban.level import Level, Tile
from creditgym.envs.sokoban.render import SPRITE_SIZE, render_rgb
from creditgym.envs.sokoban.solver import solve
from creditgym.render import (
    FINAL_FRAME_MS,
    MAX_GIF_BYTES,
    RenderWarning,
    _step_caption,
    episode_frames,
    episode_transcript,
    render_file,
    write_gif,
)
from creditgym.trajectories import (
    Episode,
    Step,
    TrajectoryWriter,
    read_trajectories,
    record_episodes,
    run_trajectories,
)

SOKOBAN = "creditgym/Sokoban-6x6-1b-v0"


def _solver_policy(env: gym.Env):
    """Plays the solver's plan for the level the env was reset to."""
    plan: list[int] = []

    def policy(obs, info):
        if not plan:
            plan.extend(int(move) for move in reversed(solve(env.unwrapped.level)))
        return plan.pop()

    return policy


def _gif_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as image:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]


def _board(frame: np.ndarray, scale: int) -> np.ndarray:
    """The board part of a frame (the caption strip below it dropped), at one pixel per sprite pixel."""
    cells = frame.shape[0] // (SPRITE_SIZE * scale) * SPRITE_SIZE * scale
    return frame[:cells:scale, ::scale]


def test_sokoban_episode_draws_one_frame_per_state(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN)
    path = tmp_path / "solved.jsonl"
    [episode] = record_episodes(env, _solver_policy(env), 1, seed=3, path=path)
    assert episode.success
    [rendered] = render_file(path, tmp_path / "out", scale=2)
    frames = _gif_frames(rendered.animation)
    assert len(frames) == len(episode.steps) + 1
    for frame, state in zip(frames, [episode.state, *(s.state for s in episode.steps)], strict=True):
        tiles = Level.from_rows(state["board"]).tiles
        assert np.array_equal(_board(frame, 2), render_rgb(tiles))  # the whole room, already walled
    with Image.open(rendered.animation) as image:
        image.seek(len(frames) - 1)
        assert image.info["duration"] == FINAL_FRAME_MS  # the end stays up
    text = rendered.transcript.read_text()
    assert text.count("[step ") == len(episode.steps) and "Solved after" in text
    assert "\n".join(episode.steps[-1].state["board"]) in text


def test_egocentric_records_keep_the_room_still(tmp_path: Path) -> None:
    """A PPO run's records of the egocentric view hold the window around the player; drawn, the walls stay put
    while the player moves."""
    config = PPOConfig(env_id=SOKOBAN, env_kwargs={"obs_mode": "egocentric", "action_mask": True}, total_steps=2048,
                       num_envs=16, num_steps=128, record_envs=2, runs_dir=str(tmp_path), run_name="ego",
                       progress=False, tensorboard=False, checkpoint_every=0, threads=1)
    PPO(config).learn()
    path = run_trajectories(tmp_path / "ego", resumed=True)
    episodes = [e for e in read_trajectories(path) if len(e.steps) >= 3]
    assert episodes
    moved = 0
    for episode in episodes[:4]:
        windows = [episode.state["board"], *(s.state["board"] for s in episode.steps)]
        assert len({tuple(w) for w in windows}) > 1  # the window moved with the player
        frames = [_board(frame, 1) for frame in episode_frames(episode, scale=1)]
        walls = render_rgb(np.full((1, 1), Tile.WALL, np.int8))[0, 0]
        wall_masks = [np.all(frame == walls, axis=-1) for frame in frames]
        assert all(np.array_equal(mask, wall_masks[0]) for mask in wall_masks)
        moved += sum(not np.array_equal(a, b) for a, b in zip(frames, frames[1:], strict=False))
    assert moved > 0


def test_minigrid_records_are_drawn_from_their_states(tmp_path: Path) -> None:
    env = gym.make("creditgym/MiniGridText-DoorKey-5x5-v0", max_episode_steps=6)
    path = tmp_path / "minigrid.jsonl"
    [episode] = record_episodes(env, lambda obs, info: "turn left", 1, seed=0, path=path)
    [rendered] = render_file(path, tmp_path / "out")
    frames = _gif_frames(rendered.animation)
    assert len(frames) == len(episode.steps) + 1 == 7
    assert not np.array_equal(frames[0], frames[1])  # the agent turned


def test_text_episodes_get_a_transcript_in_order(tmp_path: Path) -> None:
    env = gym.make("creditgym/Dialogue-Gather-v0")
    questions = iter(["What is your budget?", "Which area do you like?", "not a question"] * 10)
    path = tmp_path / "dialogue.jsonl"
    [episode] = record_episodes(env, lambda obs, info: next(questions), 1, seed=0, path=path)
    [rendered] = render_file(path, tmp_path / "out")
    assert rendered.animation is None
    text = rendered.transcript.read_text()
    assert episode.info["instructions"] in text
    position = text.index("[reset]")
    for step in episode.steps:  # every reply, then what the user said to it, in order
        position = text.index(step.action, position)
        position = text.index(step.observation, position)
    assert "(invalid)" in text


def test_which_selects_solved_or_failed_episodes(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=40)
    path = tmp_path / "mixed.jsonl"
    record_episodes(env, lambda obs, info: 0, 2, seed=0, path=path)  # up, up, ...: cut off
    record_episodes(env, _solver_policy(env), 2, seed=10, path=path)
    record_episodes(env, lambda obs, info: 0, 1, seed=20, path=path)
    success = [e.success for e in read_trajectories(path)]
    assert success == [False, False, True, True, False]
    assert [r.index for r in render_file(path, tmp_path / "solved", which="solved")] == [2, 3]
    assert [r.index for r in render_file(path, tmp_path / "failed", which="failed", episodes=2)] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "solved").iterdir()) == [
        "episode-00002.gif", "episode-00002.txt", "episode-00003.gif", "episode-00003.txt"]


@pytest.mark.parametrize("board", [["#####", "#@$x#", "#####"], ["#" * 100] * 100, "not rows"])
def test_malformed_boards_get_a_transcript_only(tmp_path: Path, board: object) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=2)
    [episode] = record_episodes(env, lambda obs, info: 0, 1, seed=0)
    episode.steps[-1].state = {**episode.steps[-1].state, "board": board}
    with pytest.warns(RenderWarning, match="transcript only"):
        assert episode_frames(episode) is None
    assert "[step 2]" in episode_transcript(episode)


def test_records_without_states_are_transcribed(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=3)
    [episode] = record_episodes(env, lambda obs, info: 1, 1, seed=0, record_state=False)
    assert episode_frames(episode) is None
    text = episode_transcript(episode)
    assert "action: Down" in text and "array observation, shape (7, 6, 6)" in text


def test_write_gif_refuses_bad_settings(tmp_path: Path) -> None:
    frame = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="at least one frame"):
        write_gif([], tmp_path / "a.gif")
    with pytest.raises(ValueError, match="fps"):
        write_gif([frame], tmp_path / "a.gif", fps=float("nan"))


def test_cli_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = gym.make(SOKOBAN)
    path = tmp_path / "ev.jsonl.gz"
    record_episodes(env, _solver_policy(env), 3, seed=0, path=path)
    assert main(["render", str(path), "--episodes", "2"]) == 0
    out_dir = tmp_path / "ev-render"
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "episode-00000.gif", "episode-00000.txt", "episode-00001.gif", "episode-00001.txt"]
    assert str(out_dir) in capsys.readouterr().out.replace("\n", "")
    assert main(["render", str(path), "--which", "failed"]) == 1
    assert "no unsolved episode" in capsys.readouterr().out
    for flags, message in ((["--fps", "0"], "fps"), (["--scale", "0"], "scale"), (["--episodes", "0"], "episodes")):
        assert main(["render", str(path), *flags]) == 2
        assert message in capsys.readouterr().out
    assert main(["render", str(tmp_path / "missing.jsonl")]) == 2
    assert "no trajectory file" in capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text(json.dumps({"format": "nope"}) + "\n")
    assert main(["render", str(tmp_path / "bad.jsonl")]) == 2
    assert "not a creditgym trajectory record" in capsys.readouterr().out


def test_episode_without_steps(tmp_path: Path) -> None:
    episode = Episode(env_id=SOKOBAN, seed=0, observation="board", steps=[], state=None)
    assert "No steps after 0 steps" in episode_transcript(episode)


def test_long_episodes_show_their_first_frames_and_their_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("creditgym.render.MAX_FRAMES", 5)
    env = gym.make(SOKOBAN, max_episode_steps=9)
    moves = itertools.cycle([0, 0, 3, 3, 1, 1, 2, 2])  # up, right, down, left: the player walks about
    [episode] = record_episodes(env, lambda obs, info: next(moves), 1, seed=0)
    assert len({tuple(s.state["board"]) for s in episode.steps}) > 2  # frames that differ
    frames = episode_frames(episode, scale=1)
    assert len(frames) == 5
    last = Level.from_rows(episode.steps[-1].state["board"]).tiles
    assert np.array_equal(_board(frames[-1], 1), render_rgb(last))
    fourth = Level.from_rows(episode.steps[2].state["board"]).tiles  # the reset state, then steps 1-3
    assert np.array_equal(_board(frames[3], 1), render_rgb(fourth))


def _window_episode(tmp_path: Path, steps: int = 10) -> Episode:
    """A record of board 0 of a batched env's egocentric view, on a level with floor outside its walls (XSB levels
    may have it), taken as PPO and `creditgym eval` record it (`sokoban_states(walled=True)`)."""
    from creditgym.envs.sokoban.vector import SokobanVectorEnv
    from creditgym.trajectories import sokoban_states

    rows = ["   #####", "   #@  #", "   # $ #", "   # . #", "   #   #", "   #####", "        ", "        "]
    (tmp_path / "outside.txt").write_text("; 0\n" + "\n".join(rows) + "\n")
    env = SokobanVectorEnv(1, levels=str(tmp_path / "outside.txt"), obs_mode="egocentric", max_episode_steps=100)
    obs, _ = env.reset(seed=0)
    episode = Episode(env_id=SOKOBAN, seed=0, observation=None, steps=[],
                      state=sokoban_states(obs, walled=True)[0])
    for action in [3, 3, 1, 1, 1, 2, 2, 0, 0, 0][:steps]:  # round the room, never touching the box
        obs, reward, terminated, truncated, _ = env.step(torch.tensor([action]))
        episode.steps.append(Step(action=action, observation=None, reward_components={"task": float(reward[0])},
                                  terminated=bool(terminated[0]), truncated=bool(truncated[0]),
                                  state=sokoban_states(obs, walled=True)[0]))
    return episode


def test_floor_outside_the_walls_does_not_move_the_room(tmp_path: Path) -> None:
    episode = _window_episode(tmp_path)
    windows = [episode.state["board"], *(s.state["board"] for s in episode.steps)]
    assert len({tuple(w) for w in windows}) > 3
    frames = [_board(frame, 1) for frame in episode_frames(episode, scale=1)]
    walls = render_rgb(np.full((1, 1), Tile.WALL, np.int8))[0, 0]
    assert all(np.array_equal(np.all(f == walls, axis=-1), np.all(frames[0] == walls, axis=-1)) for f in frames)
    assert frames[0].shape[:2] == (6 * SPRITE_SIZE, 5 * SPRITE_SIZE)  # the room with its walls, nothing outside
    text = episode_transcript(episode)
    assert "#####\n#@  #\n# $ #\n# . #\n#   #\n#####" in text


def test_minigrid_frames_match_the_envs_own_picture(tmp_path: Path) -> None:
    env = gym.make("creditgym/MiniGridText-DoorKey-5x5-v0", max_episode_steps=8)
    actions = iter(["turn left", "go forward", "turn right", "go forward", "pick up", "turn left", "toggle", "done"])
    pictures = []

    def policy(obs, info):
        return next(actions)

    [episode] = record_episodes(env, policy, 1, seed=2)
    # replay the same actions to take the env's own picture of every state
    env.reset(seed=2)
    minigrid = env.unwrapped.minigrid
    pictures.append(minigrid.get_full_render(False, 16))
    for step in episode.steps:
        env.step(step.action)
        pictures.append(minigrid.get_full_render(False, 16))
    frames = episode_frames(episode, scale=1)
    assert len(frames) == len(pictures)
    for frame, picture in zip(frames, pictures, strict=True):
        assert np.array_equal(frame[:picture.shape[0]], picture)


def _sokoban_board(size: int) -> list[str]:
    inner = [" " * (size - 2)] * (size - 2)
    inner[0] = "@$." + " " * (size - 5)
    return ["#" * size, *(f"#{row}#" for row in inner), "#" * size]


@pytest.mark.parametrize("state", [
    {"board": _sokoban_board(65)},  # a valid level, over the size drawn
    {"grid": np.zeros((65, 65, 3), int).tolist(), "agent_pos": [1, 1], "agent_dir": 0},
    {"grid": [[[300, 0, 0]] * 3] * 3, "agent_pos": [1, 1], "agent_dir": 0},
    {"grid": [[[-1, 0, 0]] * 3] * 3, "agent_pos": [1, 1], "agent_dir": 0},
    {"grid": [[[2, 5, 0]]], "agent_pos": [0, 0], "agent_dir": 0},
    {"grid": [[[2, 5, 0]] * 3] * 3, "agent_pos": [float("inf"), 0], "agent_dir": 0},
    {"grid": [[[2, 5, 0]] * 3] * 3, "agent_pos": [1, 1], "agent_dir": float("inf")},
    {"grid": [[[2, 5, 0]] * 3] * 3, "agent_pos": None, "agent_dir": 0},
    {"grid": [[[2, 5, 0]] * 3] * 3, "agent_pos": [1, 9], "agent_dir": 0},
])
def test_hostile_states_get_a_transcript_only(tmp_path: Path, state: dict,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A record is a file anyone can write: whatever its states hold, `creditgym render` writes the transcript and
    exits cleanly."""
    env = gym.make("creditgym/MiniGridText-DoorKey-5x5-v0", max_episode_steps=2)
    [episode] = record_episodes(env, lambda obs, info: "turn left", 1, seed=0)
    if "board" in state:
        episode.state = state
        for step in episode.steps:
            step.state = state
    else:
        episode.steps[-1].state = {**episode.steps[-1].state, **state}
    path = tmp_path / "hostile.jsonl"
    with TrajectoryWriter(path) as writer:
        writer.write(episode)
    with pytest.warns(RenderWarning, match="transcript only"):
        assert main(["render", str(path)]) == 0
    assert sorted(p.name for p in (tmp_path / "hostile-render").iterdir()) == ["episode-00000.txt"]


def test_large_frames_are_drawn_smaller_and_fewer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    board = _sokoban_board(64)
    steps = [Step(action=0, observation=None, reward_components={"task": 0.0}, terminated=False, truncated=t == 59,
                  state={"board": board}) for t in range(60)]
    episode = Episode(env_id=SOKOBAN, seed=0, observation=None, steps=steps, state={"board": board})
    with pytest.warns(RenderWarning) as warned:
        frames = episode_frames(episode, scale=8)
    messages = " ".join(str(w.message) for w in warned)
    assert "drawn at scale 1, not 8" in messages and "of its 61 states are drawn" in messages
    assert frames[0].shape[1] == 64 * SPRITE_SIZE  # scale 1
    assert sum(frame.nbytes for frame in frames) <= MAX_GIF_BYTES and len(frames) < 61


def test_text_view_transcripts_show_what_the_policy_read(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, obs_mode="text")
    replies = iter(["<answer>Up</answer>", "I think\nI will go <answer>sideways</answer>\n", "<answer>Down</answer>"])
    [episode] = record_episodes(env, lambda obs, info: next(replies, "<answer>Left</answer>"), 1, seed=0)
    text = episode_transcript(episode)
    for step in episode.steps[:3]:
        assert step.observation in text  # the text the policy read next, invalid-action feedback included
    assert "Invalid" in episode.steps[1].observation
    assert "(invalid)\naction: \n    I think\n    I will go <answer>sideways</answer>\n" in text


def test_captions_name_each_steps_own_action() -> None:
    env = gym.make(SOKOBAN, max_episode_steps=4)
    moves = iter([0, 3, 1, 2])
    [episode] = record_episodes(env, lambda obs, info: next(moves), 1, seed=0)
    assert [_step_caption(episode, t)[:2] for t in range(4)] == [["1/4", "Up"], ["2/4", "Right"], ["3/4", "Down"],
                                                                  ["4/4", "Left"]]
    assert _step_caption(episode, 3)[-1] == "failed"


def test_fps_a_gif_cannot_store_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=2)
    path = tmp_path / "ev.jsonl"
    record_episodes(env, lambda obs, info: 0, 1, seed=0, path=path)
    assert main(["render", str(path), "--fps", "0.001"]) == 2
    assert "at least 0.0015" in capsys.readouterr().out
    assert not (tmp_path / "ev-render").exists()  # refused before anything was written


def test_transcripts_do_not_pass_terminal_escapes_on() -> None:
    env = gym.make("creditgym/Dialogue-Gather-v0", max_episode_steps=1)
    [episode] = record_episodes(env, lambda obs, info: "What \x1b]0;pwned\x07 is your \x1b[2Jbudget?\r", 1, seed=0)
    text = episode_transcript(episode)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "What \\x1b]0;pwned\\x07 is your \\x1b[2Jbudget?\\x0d" in text


def test_a_board_that_changes_size_gets_a_transcript_only() -> None:
    """The memory budget is worked out from the first frame: a record whose later boards grow (no env's do) is not
    drawn."""
    small, large = _sokoban_board(5), _sokoban_board(64)
    steps = [Step(action=0, observation=None, reward_components={"task": 0.0}, terminated=False, truncated=True,
                  state={"board": large})]
    episode = Episode(env_id=SOKOBAN, seed=0, observation=None, steps=steps, state={"board": small})
    with pytest.warns(RenderWarning, match="changes size"):
        assert episode_frames(episode, scale=8) is None


def test_rendering_again_leaves_no_gif_of_another_episode(tmp_path: Path) -> None:
    env = gym.make(SOKOBAN, max_episode_steps=3)
    drawn, undrawn = tmp_path / "ev.jsonl", tmp_path / "ev.jsonl.gz"
    record_episodes(env, lambda obs, info: 0, 1, seed=0, path=drawn)
    record_episodes(env, lambda obs, info: 0, 1, seed=5, path=undrawn, record_state=False)
    render_file(drawn)
    assert (tmp_path / "ev-render" / "episode-00000.gif").exists()
    [rendered] = render_file(undrawn)  # the same folder and names
    assert rendered.animation is None and not (tmp_path / "ev-render" / "episode-00000.gif").exists()
    assert "seed 5" in rendered.transcript.read_text()


def test_text_that_utf8_cannot_encode_is_written_escaped(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    record = {"format": "creditgym.trajectory/1", "env_id": "creditgym/Dialogue-Gather-v0", "seed": 0,
              "observation": "hello \ud800", "steps": [], "version": "0.1.0"}
    path.write_text(json.dumps(record) + "\n")  # json escapes the lone surrogate, as any JSON writer may
    [rendered] = render_file(path)
    assert "hello \\ud800" in rendered.transcript.read_text()
