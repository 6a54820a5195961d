"""`creditgym compare`: runs grouped by what they were trained with, steps to thresholds, ratios to a baseline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from creditgym.agents.compare import compare_runs, group_runs, load_run, steps_to, success_at
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
    assert result["shared_env_steps"] == 5000 and result["warnings"] == []
    assert fast["success_at_shared_steps"] == pytest.approx(0.9)


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
    assert success_at(rows, 250, min_episodes=100) == 0.5
    assert success_at(rows, 50) is None
    assert steps_to(rows, 0.5, min_episodes=100) == 200


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
