"""`creditgym compare`: runs grouped by what they were trained with, steps to thresholds, ratios to a baseline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from creditgym.agents.compare import compare_runs, group_runs, load_run, read_step, steps_to, success_at, warm_up_steps
from creditgym.agents.plots import plot_seed_bands
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four real PPO runs: sparse and box-distance shaping, seeds 1 and 2."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for shaping in (None, "box_distance"):
        for seed in (1, 2):
            name = f"{shaping or 'sparse'}-s{seed}"
            PPO(PPOConfig(env_id="creditgym/Sokoban-6x6-1b-v0", num_envs=8, num_steps=16, total_steps=1024,
                          shaping=shaping, seed=seed, progress=False, tensorboard=False, runs_dir=str(root),
                          run_name=name, checkpoint_every=0)).learn()
            runs[name] = root / name
    return runs


def _with_curve(run: Path, out: Path, rates: list[float], *, seed: int, episodes: float = 100.0,
                **config: object) -> Path:
    """A copy of a real run whose logged success follows `rates`, one update per 1,000 env steps."""
    shutil.copytree(run, out)
    record = json.loads((out / "config.json").read_text())
    record["config"].update(seed=seed, num_envs=16, **config)
    (out / "config.json").write_text(json.dumps(record))
    rows = [{"global_step": 1000 * (i + 1), "charts/success_rate": rate, "charts/episodes": episodes,
             "charts/sps": 5000.0} for i, rate in enumerate(rates)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def test_runs_are_grouped_by_the_settings_that_differ(trained: dict[str, Path]) -> None:
    groups = group_runs([load_run(path) for path in trained.values()])
    assert {label: sorted(run.seed for run in runs) for label, runs in groups.items()} == {
        "shaping=none": [1, 2], "shaping=box_distance": [1, 2]}


def test_steps_to_thresholds_means_and_the_ratio_to_the_baseline(trained: dict[str, Path], tmp_path: Path) -> None:
    base = trained["sparse-s1"]
    # 16 envs × the 120-step limit: the first 1,920 env steps are the warm-up, so the first row (1.0) is skipped.
    runs = [_with_curve(base, tmp_path / "slow-1", [1.0, 0.2, 0.5, 0.8, 0.9], seed=1),
            _with_curve(base, tmp_path / "slow-2", [1.0, 0.2, 0.4, 0.6, 0.8], seed=2),
            _with_curve(base, tmp_path / "fast-1", [1.0, 0.5, 0.8, 0.9, 0.9], seed=1, shaping="box_distance"),
            _with_curve(base, tmp_path / "fast-2", [1.0, 0.6, 0.9, 0.9, 0.9], seed=2, shaping="box_distance")]
    result = compare_runs(runs, thresholds=(0.5, 0.8), baseline="none", min_episodes=100)
    slow, fast = result["groups"]["shaping=none"], result["groups"]["shaping=box_distance"]
    assert [seed["steps_to_80"] for seed in slow["seeds"].values()] == [4000, 5000]
    assert [seed["steps_to_80"] for seed in fast["seeds"].values()] == [3000, 3000]
    assert (slow["steps_to_80"], fast["steps_to_80"]) == (4500, 3000)
    assert fast["speedup_steps_to_80"] == 1.5 and slow["speedup_steps_to_80"] == 1.0
    assert (slow["steps_to_50"], fast["steps_to_50"], fast["speedup_steps_to_50"]) == (3500, 2000, 1.75)
    assert (slow["steps_to_80_se"], fast["steps_to_80_se"]) == (500, 0)  # stdev(4,000, 5,000) / √2
    assert result["shared_env_steps"] == 5000
    assert fast["success_at_shared_steps"] == pytest.approx(0.9)
    # 1,500 steps apart against 2·(500 + 0): beyond seed noise; success at 5,000 (90% ± 0 and 85% ± 10%) is not.
    assert {check["metric"]: check["within_seed_noise"] for check in result["seed_noise"]} == {
        "steps_to_50": False, "steps_to_80": False, "success_at_shared_steps": True}
    (note,) = result["warnings"]
    assert note.startswith("success at 5,000 steps: the difference between 'shaping=box_distance' and 'shaping=none' "
                           "is within seed noise")


def test_a_group_whose_seeds_did_not_all_get_there_has_no_ratio(trained: dict[str, Path], tmp_path: Path) -> None:
    base = trained["sparse-s1"]
    runs = [_with_curve(base, tmp_path / "a", [0.5, 0.9], seed=1),
            _with_curve(base, tmp_path / "b", [0.5, 0.9], seed=2),
            _with_curve(base, tmp_path / "c", [0.5, 0.9], seed=1, gamma=0.9),
            _with_curve(base, tmp_path / "d", [0.5, 0.6], seed=2, gamma=0.9)]
    result = compare_runs(runs, thresholds=(0.8,), baseline="gamma=0.99", min_episodes=100)
    partial = result["groups"]["gamma=0.9"]
    assert partial["steps_to_80_reached"] == "1/2" and partial["steps_to_80"] == 2000
    assert partial["speedup_steps_to_80"] is None  # a mean over the seeds that got there would flatter it


def test_warnings_for_mixed_envs_budgets_and_repeated_seeds(trained: dict[str, Path], tmp_path: Path) -> None:
    base = trained["sparse-s1"]
    runs = [_with_curve(base, tmp_path / "a", [0.5, 0.9, 0.9], seed=1),
            _with_curve(base, tmp_path / "b", [0.5, 0.9], seed=1),
            _with_curve(base, tmp_path / "c", [0.5, 0.9], seed=1, env_id="creditgym/Sokoban-6x6-2b-v0")]
    result = compare_runs(runs, min_episodes=100)
    warnings = " ".join(result["warnings"])
    assert "different envs" in warnings
    assert "compared at 2,000" in warnings
    assert "holds seed 1 more than once" in warnings and str(tmp_path / "a") in warnings
    # Runs that share a seed (a cpu and a cuda run, say) both count, each under its folder's name.
    assert [len(group["seeds"]) for group in result["groups"].values()] == [2, 1]


def test_held_out_success_comes_from_the_runs_evaluations(trained: dict[str, Path], tmp_path: Path) -> None:
    runs = [_with_curve(trained["sparse-s1"], tmp_path / name, [0.5], seed=seed) for name, seed in (("a", 1), ("b", 2))]
    for run, greedy in zip(runs, (0.5, 0.7), strict=True):
        (run / "eval.json").write_text(json.dumps({"success_rate": greedy, "greedy": True}))
    (runs[0] / "eval-sampled.json").write_text(json.dumps({"success_rate": 0.9, "greedy": False}))
    group = next(iter(compare_runs(runs, min_episodes=100)["groups"].values()))
    assert [seed["held_out_greedy"] for seed in group["seeds"].values()] == [0.5, 0.7]
    assert group["held_out_greedy"] == 0.6
    assert group["held_out_sampled"] is None  # one seed was never evaluated sampled: no mean over the other alone
    # The demo's layout before session 13 held both in eval.json.
    (runs[1] / "eval.json").write_text(json.dumps({"greedy": {"success_rate": 0.7}, "sampled": {"success_rate": 0.8}}))
    group = next(iter(compare_runs(runs, min_episodes=100)["groups"].values()))
    assert (group["held_out_greedy"], group["held_out_sampled"]) == (0.6, 0.85)


def test_success_at_and_steps_to_read_the_same_window() -> None:
    rows = [{"global_step": s, "charts/success_rate": r, "charts/episodes": 50.0}
            for s, r in ((100, 0.0), (200, 1.0), (300, 1.0))]
    assert success_at(rows, 300, min_episodes=100) == 1.0
    assert success_at(rows, 200, min_episodes=100) == 0.5
    # Between rows, the first row at or after the step: the episodes that ended by then (not the row before it).
    assert success_at(rows, 250, min_episodes=100) == 1.0 and read_step(rows, 250) == 300
    assert success_at(rows, 50) == 0.0
    assert success_at(rows, 301) is None and read_step(rows, 301) is None  # the run never got there
    assert success_at(rows, 300, skip_steps=300) is None  # every update is in the warm-up
    assert steps_to(rows, 0.5, min_episodes=100) == 200


def _run_folder(root: Path, name: str, seed: int, reach_at: int, *, every: int = 1000, total: int = 12000,
                **config: object) -> Path:
    """A run folder whose logged success is 10% until env step `reach_at` and 90% from then on."""
    path = root / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"config": {
        "env_id": "creditgym/Sokoban-6x6-1b-v0", "algo": "ppo", "num_envs": 1, "seed": seed, "shaping": None,
        **config}}))
    rows = [{"global_step": s, "charts/success_rate": 0.9 if s >= reach_at else 0.1, "charts/episodes": 200.0}
            for s in range(every, total + 1, every)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_success_at_the_shared_steps_is_read_at_or_after_them_for_every_run(tmp_path: Path) -> None:
    # Both succeed 90% from 9,000 env steps on; one logs every 1,000 steps, the other every 8,192. Read up to the
    # shared 16,000 steps, the second was read at 8,192 (10%) while the table said "success at 16,000 steps".
    often = _run_folder(tmp_path, "often", 1, 9000, total=16000)
    rarely = _run_folder(tmp_path, "rarely", 1, 9000, every=8192, total=16384, shaping="box_distance")
    result = compare_runs([often, rarely], thresholds=(0.5,), min_episodes=100)
    assert result["shared_env_steps"] == 16000
    seeds = {name: seed for group in result["groups"].values() for name, seed in group["seeds"].items()}
    assert {name: seed["success_at_shared_steps"] for name, seed in seeds.items()} == {"often": 0.9, "rarely": 0.9}
    assert {name: seed["shared_steps_read_at"] for name, seed in seeds.items()} == {"often": 16000, "rarely": 16384}
    assert any(note.startswith("success at 16,000 steps is read at each run's first logged row at or after them, "
                               "here 16,000 to 16,384 env steps") for note in result["warnings"])


def test_compare_gives_standard_errors_and_says_when_a_difference_is_seed_noise(tmp_path: Path) -> None:
    # Steps to 50% per seed: 3,000 / 9,000 / 5,000 against 4,000 / 8,000 / 6,000: a 6% "speedup" of pure noise.
    runs = [_run_folder(tmp_path, f"a{seed}", seed, at) for seed, at in ((1, 3000), (2, 9000), (3, 5000))]
    runs += [_run_folder(tmp_path, f"b{seed}", seed, at, shaping="box_distance")
             for seed, at in ((1, 4000), (2, 8000), (3, 6000))]
    result = compare_runs(runs, thresholds=(0.5,), baseline="none", min_episodes=100)
    plain, shaped = result["groups"]["shaping=none"], result["groups"]["shaping=box_distance"]
    assert (plain["steps_to_50"], plain["steps_to_50_se"]) == (5667, 1764)  # stdev 3,055 / √3
    assert (shaped["steps_to_50"], shaped["steps_to_50_se"]) == (6000, 1155)
    assert (shaped["success_at_shared_steps"], shaped["success_at_shared_steps_se"]) == (0.9, 0.0)
    assert shaped["held_out_greedy_se"] is None  # never evaluated
    assert {"metric": "steps_to_50", "groups": ["shaping=none", "shaping=box_distance"], "difference": 333,
            "within_seed_noise": True} in result["seed_noise"]
    assert any(note.startswith("steps to 50%: the difference between 'shaping=box_distance' and 'shaping=none' is "
                               "within seed noise (their mean ± 2·SE intervals overlap: 6,000 ± 2,310 and 5,667 ± "
                               "3,528)") for note in result["warnings"])

    # Seeds that agree: 3,000 steps against 9,000 is beyond their noise, and nothing is said. Without a baseline
    # every two groups are screened.
    clear = [_run_folder(tmp_path, f"c{seed}", seed, at) for seed, at in ((1, 3000), (2, 4000))]
    clear += [_run_folder(tmp_path, f"d{seed}", seed, at, gamma=0.9) for seed, at in ((1, 9000), (2, 10000))]
    result = compare_runs(clear, thresholds=(0.5,), min_episodes=100)
    assert [(check["metric"], check["within_seed_noise"]) for check in result["seed_noise"]] == [
        ("steps_to_50", False), ("success_at_shared_steps", True)]
    assert not any("steps to 50%" in note for note in result["warnings"])

    # One seed has no standard error, and the warning says to run more rather than screening nothing silently.
    single = compare_runs([clear[0], clear[2]], thresholds=(0.5,), min_episodes=100)
    assert all(group["steps_to_50_se"] is None for group in single["groups"].values()) and single["seed_noise"] == []
    assert any("one seed, so no standard error" in note and "run more seeds" in note for note in single["warnings"])


def test_the_warm_up_uses_the_runs_own_time_limit(tmp_path: Path) -> None:
    config = {"env_id": "creditgym/Sokoban-6x6-1b-v0", "num_envs": 16}
    assert warm_up_steps(config) == 16 * 120
    assert warm_up_steps({**config, "env_kwargs": {"max_episode_steps": 12}}) == 16 * 12
    assert warm_up_steps({**config, "algo": "grpo"}) == 0


def test_seed_bands_smooth_in_env_steps_whatever_the_logging_interval(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn, legends = {}, []
    plot, legend = plt.Axes.plot, plt.Axes.legend

    def spy_plot(self, x, y, *args, label=None, **kwargs):
        drawn[label] = (np.asarray(x), np.asarray(y))
        return plot(self, x, y, *args, label=label, **kwargs)

    def spy_legend(self, *args, **kwargs):
        legends.append(args[1] if len(args) > 1 else [])
        return legend(self, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "plot", spy_plot)
    monkeypatch.setattr(plt.Axes, "legend", spy_legend)
    # One learning curve (10%, then 90% from 4,000 env steps on), logged every 500 and every 2,000 steps. Smoothed
    # per logged row, the second lagged: 0.39 against 0.77 at 8,000 steps.
    curve = [{"global_step": s, "charts/success_rate": 0.9 if s > 4000 else 0.1} for s in range(500, 20001, 500)]
    plot_seed_bands({"often": [curve, curve], "rarely": [curve[3::4], curve[3::4]]}, tmp_path / "bands.png")
    often, rarely = (np.interp([6000, 8000, 12000], *drawn[f"{name} (2 seeds)"]) for name in ("often", "rarely"))
    assert often == pytest.approx(rarely, abs=0.02) and often[1] == pytest.approx(0.766, abs=0.01)
    (labels,) = legends
    assert "line: mean over seeds; band: min–max over seeds" in labels
    assert (tmp_path / "bands.png").stat().st_size > 1000


def test_success_at_the_shared_budget_leaves_out_the_warm_up(trained: dict[str, Path], tmp_path: Path) -> None:
    # 16 envs x the 120-step limit = 1,920 warm-up steps: the 1.0 at 1,000 comes from short episodes only.
    runs = [_with_curve(trained["sparse-s1"], tmp_path / name, [1.0, 0.2], seed=seed) for name, seed in (("a", 1),
                                                                                                       ("b", 2))]
    group = next(iter(compare_runs(runs)["groups"].values()))
    assert [seed["success_at_shared_steps"] for seed in group["seeds"].values()] == [0.2, 0.2]
    short = [_with_curve(trained["sparse-s1"], tmp_path / name, [1.0], seed=seed) for name, seed in (("c", 1),
                                                                                                   ("d", 2))]
    result = compare_runs(short)
    assert all(seed["success_at_shared_steps"] is None
               for seed in next(iter(result["groups"].values()))["seeds"].values())
    assert any("only short episodes" in note and "1,920" in note for note in result["warnings"])


def test_bad_inputs_say_what_to_change(trained: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a run folder"):
        compare_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        compare_runs([tmp_path / "empty"])
    damaged = shutil.copytree(trained["sparse-s1"], tmp_path / "damaged")
    (damaged / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        compare_runs([damaged])
    with pytest.raises(ValueError, match="matches 0 of the groups"):
        compare_runs(list(trained.values()), baseline="learned_reward=spa")
    with pytest.raises(ValueError, match="thresholds must be success rates"):
        compare_runs(list(trained.values()), thresholds=(80,))
    assert main(["compare", str(tmp_path / "missing")]) == 2


def test_an_error_shows_its_bracketed_values(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    # rich took "[nan]" for markup and printed "... got " with nothing after it
    assert main(["compare", str(trained["sparse-s1"]), "--thresholds", "nan"]) == 2
    assert "in (0, 1], got [nan]" in capsys.readouterr().out


def test_the_command_prints_a_table_and_writes_json_and_a_plot(trained: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal's width
    out = tmp_path / "out"
    assert main(["compare", *map(str, trained.values()), "--baseline", "shaping=none", "--thresholds", "0.3",
                 "--window", "20", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shaping=box_distance" in printed and "baseline: shaping=none" in printed
    assert "mean ± SE (per seed)" in printed
    result = json.loads((out / "comparison.json").read_text())
    assert set(result["groups"]) == {"shaping=none", "shaping=box_distance"}
    assert result["baseline"] == "shaping=none"
    assert (out / "comparison.png").stat().st_size > 1000


def test_the_table_shows_held_out_success_where_runs_were_evaluated(trained: dict[str, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    runs = [shutil.copytree(trained[name], tmp_path / name) for name in ("sparse-s1", "box_distance-s1")]
    assert main(["compare", *map(str, runs), "--window", "20"]) == 0
    assert "held-out" not in capsys.readouterr().out
    for run, rate in zip(runs, (0.25, 0.75), strict=True):
        (run / "eval.json").write_text(json.dumps({"success_rate": rate, "greedy": True}))
    assert main(["compare", *map(str, runs), "--window", "20"]) == 0
    printed = capsys.readouterr().out
    assert "held-out, greedy" in printed and "25.0%" in printed and "75.0%" in printed
    assert "held-out, sampled" not in printed


def test_a_second_compare_of_the_same_glob_skips_what_the_first_wrote(trained: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    # `creditgym compare runs/exp/*` writes comparison.json and .png into runs/exp, and the same glob then matched
    # them: "comparison.json is not a run folder".
    folder = tmp_path / "exp"
    for name in ("sparse-s1", "box_distance-s1"):
        shutil.copytree(trained[name], folder / name)
    assert main(["compare", *map(str, sorted(folder.iterdir())), "--window", "20", "--thresholds", "0.999"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "not reached" in printed and "(not reached)" not in printed  # one seed: its count is the group's
    assert {"comparison.json", "comparison.png"} <= {path.name for path in folder.iterdir()}
    assert main(["compare", *map(str, sorted(folder.iterdir())), "--window", "20"]) == 0
    assert "not a run folder" not in capsys.readouterr().out
    (folder / "notes.txt").write_text("mine")  # any other file is still refused
    assert main(["compare", *map(str, sorted(folder.iterdir())), "--window", "20"]) == 2
