"""The examples record what their results depend on, and refuse what would mislabel them (audit of examples/).

Each runs shrunk. A script whose refusal is under test has its expensive part replaced by a stub that fails, so a
missing refusal fails the test at once instead of training for hours.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import pytest

from tests.test_scripts import ROOT

Load = Callable[[str], ModuleType]


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Load:
    """Loads examples/NAME.py as a module, registered in sys.modules for the test only."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    return load


def _refused(module: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one-line argparse error `module.main(argv)` exits with (status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("the arguments should have been refused before any work")


# --- llm_process_rewards -------------------------------------------------------------------------------------------

TINY_LLM = ["--iterations", "1", "--groups", "1", "--group-size", "2", "--warm-up-steps", "1", "--eval-episodes", "1",
            "--no-progress"]


def test_llm_process_rewards_records_the_setup_the_warm_up_depends_on(script: Load, tmp_path: Path) -> None:
    module = script("llm_process_rewards")
    module.main(["--variants", "sparse", "--seeds", "1", "--out", str(tmp_path), *TINY_LLM])
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"creditgym", "torch", "transformers", "tokenizers", "cpu"} <= results.keys()
    assert results["torch_threads"] == 1
    fingerprint = results["warm_up_sha256"]
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert results["variants"]["sparse"]["1"]["env_steps"] > 0


def test_the_weights_fingerprint_is_stable_and_sees_a_changed_weight(script: Load) -> None:
    import torch

    module = script("llm_process_rewards")
    model = torch.nn.Linear(3, 2)
    before = module.weights_sha256(model)
    assert module.weights_sha256(model) == before
    with torch.no_grad():
        model.weight[0, 0] = torch.nextafter(model.weight[0, 0], torch.tensor(10.0))  # one ulp
    assert module.weights_sha256(model) != before


def test_llm_process_rewards_flags_reproduce_the_docs_prime_and_igpo_rows(script: Load) -> None:
    module = script("llm_process_rewards")
    parser_defaults = {"iterations": 30, "groups": 8, "group_size": 4, "lr": 5e-4, "prm_lr": 5e-5, "coef": 1.0,
                       "spa_epochs": 1, "out": "unused"}

    def config(name: str, **flags: object) -> object:
        args = argparse.Namespace(**parser_defaults, **{"turn_normalization": None, "prime_filter": True, **flags})
        return module.variant_config(name, 1, args)

    assert config("prime").group_accuracy_range == (0.2, 0.8)  # today's default: PRIME's filter
    assert config("prime", prime_filter=False).group_accuracy_range == (0.0, 1.0)
    assert config("igpo").turn_normalization == "rewards"
    assert config("igpo", turn_normalization="returns").turn_normalization == "returns"
    # variants without per-turn advantages have no turn normalization to set; the flag leaves them alone
    assert config("oprl", turn_normalization="returns").turn_normalization is None


def test_llm_process_rewards_evaluates_on_env_seeds_no_training_seed_reaches(script: Load) -> None:
    # The warm-up demos are fine-tuning data, which RL tasks may share; the evaluation tasks must not be trained on.
    from creditgym.agents.llm.trainer import training_seeds

    module = script("llm_process_rewards")
    evaluation = set(range(module.EVAL_SEEDS, module.EVAL_SEEDS + 128))
    assert not evaluation & set(range(module.DEMO_SEEDS, module.DEMO_SEEDS + 300))
    for seed in range(101):  # the default budget: 30 iterations of 8 tasks
        config = module.LLMTrainConfig(algo="grpo", model="tiny", env_id=module.ENV_ID, iterations=30, num_groups=8,
                                       group_size=4, seed=seed)
        assert not set(training_seeds(config)) & evaluation, seed


def test_llm_process_rewards_refuses_a_seed_whose_training_tasks_reach_the_evaluation_seeds(
        script: Load, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    module = script("llm_process_rewards")
    monkeypatch.setattr(module, "expert_dialogues", _never)
    # 1,000 iterations of 1,001 tasks span more than the 1,000,003 seeds between one RL seed's first task and the
    # next's, so this seed's tasks run into the evaluation seeds
    seed = module.EVAL_SEEDS // 1_000_003
    error = _refused(module, ["--variants", "sparse", "--seeds", str(seed), "--out", str(tmp_path), *TINY_LLM,
                              "--iterations", "1000", "--groups", "1001"], capsys)
    assert f"--seeds {seed}" in error and "evaluation" in error


def test_llm_process_rewards_refuses_a_repeated_seed(
        script: Load, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    module = script("llm_process_rewards")
    monkeypatch.setattr(module, "expert_dialogues", _never)
    error = _refused(module, ["--seeds", "1", "1", "--out", str(tmp_path), *TINY_LLM], capsys)
    assert "repeats a seed" in error


# --- learned_rewards_sokoban ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--config", '{"learned_reward": "spa"}'],
                                  ["--variants", "sparse", "PBRS", "--config", '{"shaping": "box_distance"}'],
                                  ["--variants", "PBRS-solver-myopic", "--config", '{"gamma": 0.5}']],
                         ids=["learned_reward", "shaping", "a setting the variant fixes"])
def test_learned_rewards_refuses_config_that_redefines_a_variant(
        argv: list[str], script: Load, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    module = script("learned_rewards_sokoban")
    monkeypatch.setattr(module, "ProcessPoolExecutor", _never)
    error = _refused(module, [*argv, "--out", str(tmp_path), "--steps", "256"], capsys)
    assert "--variants" in error


def test_learned_rewards_refuses_a_repeated_seed(
        script: Load, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    module = script("learned_rewards_sokoban")
    monkeypatch.setattr(module, "ProcessPoolExecutor", _never)
    error = _refused(module, ["--seeds", "1", "1", "--out", str(tmp_path), "--steps", "256"], capsys)
    assert "repeats a seed" in error


def test_learned_rewards_records_overrides_run_configs_precision_and_steps_trained(tmp_path: Path) -> None:
    # As a script: its runs train in spawned processes, which import `_train` from the script run as __main__.
    env = "creditgym/Sokoban-6x6-2b-v0"
    overrides = {"update_epochs": 4, "num_envs": 16, "num_steps": 8, "hidden": 16}
    subprocess.run([sys.executable, str(ROOT / "examples" / "learned_rewards_sokoban.py"), "--env", env,
                    "--steps", "300", "--seeds", "1", "--variants", "sparse", "--episodes", "2", "--workers", "1",
                    "--config", json.dumps(overrides), "--out", str(tmp_path), "--no-progress"],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config_overrides"] == overrides
    assert results["run_configs"]["sparse-s1"]["update_epochs"] == 4
    assert {"torch", "cpu"} <= results.keys()
    run = results["runs"]["sparse"]["1"]
    assert run["precision"] in ("float32", "bfloat16") and run["torch"] == results["torch"]
    assert results["steps"] == 300 and run["env_steps"] == 256  # two whole rollouts of 16 envs x 8 steps
    assert run["warm_up_steps"] == 16 * gym.spec(env).max_episode_steps  # the run's num_envs, not the default's


# --- spa_estimator_fit ---------------------------------------------------------------------------------------------

def test_spa_estimator_fit_trains_on_fewer_than_64_episodes(script: Load) -> None:
    module = script("spa_estimator_fit")
    result = module.main(["--num-envs", "16", "--rollouts", "30", "--epochs", "3", "--hidden", "16",
                          "--regret-states", "200", "--heads", "per-action", "--no-progress"])
    assert 10 <= result["episodes"]["train"] < 64
    fits = [row["train_explained_variance"] for row in result["heads"]["per-action"]["epochs"]]
    assert len(set(fits)) == 3, fits  # an estimator that never trained scores the same after every epoch


# --- llm_reward_design ---------------------------------------------------------------------------------------------

def test_llm_reward_design_summary_holds_what_a_results_table_quotes(script: Load, tmp_path: Path) -> None:
    module = script("llm_reward_design")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main(["--train-steps", "1500", "--num-envs", "32", "--seeds", "1", "2",
                     "--runs-dir", str(tmp_path)])
    summary = json.loads(out.getvalue())
    assert {"creditgym", "torch", "env_id"} <= summary.keys() and summary["config"]["num_steps"] == 32
    assert summary["sparse"]["seeds"] == [1, 2] and len(summary["sparse"]["success_rates"]) == 2
    trained = [cid for cid, fitness in summary["fitness"].items() if fitness is not None]
    failed = [cid for cid, fitness in summary["fitness"].items() if fitness is None]
    assert len(trained) == 2 and len(failed) == 2 and set(summary["errors"]) == set(failed)
    assert all(len(summary["fitness_per_seed"][cid]) == 2 for cid in trained)
    assert all("total" in summary["components"][cid] for cid in trained)
    assert summary["env_steps"] == 1500 and summary["env_steps_trained"] == 1024  # one rollout of 32 envs x 32 steps


# --- creditgym demo ------------------------------------------------------------------------------------------------

def test_the_demo_title_says_the_steps_trained_not_the_budget(tmp_path: Path) -> None:
    from rich.console import Console

    from creditgym.demo import run_demo

    console = Console(file=io.StringIO(), record=True, width=200)
    summary = run_demo(total_steps=9000, seed=3, runs_dir=str(tmp_path), eval_episodes=2, console=console)
    shown = console.export_text()
    assert "8,192 env steps, seed 3" in shown  # one rollout of 512 envs x 16 steps
    assert all(record["env_steps"] == 8192 for record in summary["runs"].values())
    assert summary["total_steps"] == 9000


def test_llm_process_rewards_keeps_a_metric_some_iterations_did_not_log(script: Load) -> None:
    # PRIME's accuracy filter can leave an iteration no group to score, so it logs no implicit_prm reward there;
    # reading the channels off the last row crashed the summary after the run had trained.
    module = script("llm_process_rewards")
    rows = [{"reward/task": 0.5, "reward/implicit_prm": 0.1, "implicit_prm/loss": 0.7}, {"reward/task": 0.6}]
    assert module.series(rows, lambda name: name.startswith("reward/")) == {
        "reward/task": [0.5, 0.6], "reward/implicit_prm": [0.1, None]}
    assert module.series(rows, lambda name: name.split("/")[0] in module.MODEL_METRICS) == {
        "implicit_prm/loss": [0.7, None]}
