"""The main job: steps-to-threshold accounting, and a tiny end-to-end run of the sparse-vs-shaped demo."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from creditgym.agents.compare import steps_to
from creditgym.agents.plots import plot_learning_curves
from creditgym.demo import EVAL_RECORD, WATCHED, run_demo
from creditgym.trajectories import read_trajectories


def _row(step: int, rate: float, episodes: float) -> dict[str, float]:
    return {"global_step": step, "charts/success_rate": rate, "charts/episodes": episodes}


def test_steps_to_weights_updates_by_episodes_and_skips_the_warm_up() -> None:
    rows = [_row(100, 1.0, 600), _row(200, 0.2, 300), _row(300, 0.9, 300), _row(400, 0.9, 300)]
    assert steps_to(rows, 0.8, skip_steps=0) == 100
    assert steps_to(rows, 0.8, skip_steps=150) == 400  # (0.9 + 0.9) over 600 episodes; 300 is (0.2+0.9)/2
    assert steps_to(rows, 0.95, skip_steps=150) is None
    assert steps_to([_row(100, 1.0, 10)], 0.5) is None  # too few episodes to judge


def test_demo_runs_both_variants_and_writes_table_plot_and_summary(tmp_path: Path) -> None:
    summary = run_demo(total_steps=8192, seed=3, runs_dir=str(tmp_path), eval_episodes=8)
    assert set(summary["runs"]) == {"sparse", "PBRS box distance"}
    for record in summary["runs"].values():
        assert 0.0 <= record["held_out_success"] <= 1.0
        run = Path(record["run_dir"])
        assert json.loads((run / "eval.json").read_text())["greedy"] is True  # the layout `creditgym eval` writes
        assert json.loads((run / "eval-sampled.json").read_text())["greedy"] is False
        # the greedy episodes are kept, and the first ones drawn to watch
        assert len(list(read_trajectories(run / EVAL_RECORD))) == 8
        assert sorted(p.name for p in (run / "watch").glob("*.gif")) == [f"episode-0000{i}.gif" for i in range(WATCHED)]
    shaped = [json.loads(line) for line in (tmp_path / "box_distance-s3" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/shaping" in row for row in shaped)
    assert (tmp_path / "sparse_vs_shaped.png").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text())["total_steps"] == 8192


def test_the_progress_bars_end_where_their_runs_stopped(tmp_path: Path) -> None:
    import io
    from concurrent.futures import Future

    from rich.console import Console

    from creditgym.demo import demo_config, watch_runs

    config = replace(demo_config(100_000, 1, str(tmp_path)), run_name="r")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text(json.dumps({"global_step": 98_304, "charts/success_rate": 0.5}))
    done: Future = Future()
    done.set_result(None)  # the run ended before the bars were first drawn
    console = Console(file=io.StringIO(), record=True, width=120)
    watch_runs({"sparse": done}, {"sparse": config}, 100_000, console)
    shown = console.export_text()
    assert "98,304" in shown and "success 50%" in shown


def test_a_plot_of_runs_shorter_than_the_warm_up_says_so_without_warnings(tmp_path: Path) -> None:
    # `creditgym demo --steps 40000`: every row falls in the skipped warm-up; matplotlib warned "No artists with
    # labels found to put in legend" and drew two empty axes.
    import warnings

    from matplotlib.image import imread

    rows = [_row(step, 1.0, 50) for step in (8192, 16384)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_learning_curves({"sparse": rows, "shaped": rows}, tmp_path / "curves.png", skip_steps=50_000)
    empty = plot_learning_curves({}, tmp_path / "empty.png")
    assert (imread(path) != imread(empty)).any()  # the note is drawn
