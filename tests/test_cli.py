"""The command line: every command has help, list shows every id, and a person can play and win from a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gymnasium as gym
import pytest

from creditgym.cli import build_parser, main
from creditgym.envs import registered_ids
from creditgym.envs.sokoban.solver import solve
from creditgym.envs.sokoban.text import ACTION_NAMES


def _run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "creditgym.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_every_command_and_flag_has_help() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"list", "play", "train", "eval", "bench", "make-banks", "demo", "showcase", "rescore"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"creditgym {name} {action.option_strings} has no help line"
        # argparse %-formats help lines, so a stray "%" in a docstring-made help line breaks --help itself.
        assert "--" in sub.format_help(), f"creditgym {name} --help"


def test_list_shows_every_registered_id() -> None:
    out = _run("list").stdout
    for env_id in registered_ids():
        assert env_id in out


def test_play_sokoban_to_a_win_from_the_terminal() -> None:
    env = gym.make("creditgym/Sokoban-6x6-1b-v0")
    env.reset(seed=0)
    moves = [ACTION_NAMES[a] for a in solve(env.unwrapped.level)]
    result = _run("play", "creditgym/Sokoban-6x6-1b-v0", "--seed", "0",
                  stdin="jump\n" + "\n".join(moves) + "\nquit\n")
    assert result.returncode == 0, result.stderr
    assert "Invalid action 'jump'" in result.stdout
    assert "success" in result.stdout and "played 1 finished episode(s)" in result.stdout


def test_play_on_an_ascii_terminal_shows_boxes_on_targets_as_question_marks() -> None:
    # A box on a target is drawn '√', which an ASCII terminal (LC_ALL=C) cannot print.
    env = gym.make("creditgym/Sokoban-6x6-1b-v0")
    env.reset(seed=0)
    moves = [ACTION_NAMES[a] for a in solve(env.unwrapped.level)]
    result = _run("play", "creditgym/Sokoban-6x6-1b-v0", "--seed", "0", stdin="\n".join(moves) + "\nquit\n",
                  env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "box on target '?'" in result.stdout and "played 1 finished episode(s)" in result.stdout


@pytest.mark.parametrize("env_id", ["creditgym/Shop-v1", "creditgym/ToolUse-v1", "creditgym/Dialogue-Gather-v0",
                                    "creditgym/MiniGridText-DoorKey-5x5-v0"])
def test_play_text_envs_survives_any_input(env_id: str) -> None:
    result = _run("play", env_id, stdin="\n\x00\nsearch[\nclick[nothing]\nhello?\nturn left\nquit\n")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_play_unknown_id_says_what_to_do() -> None:
    result = _run("play", "creditgym/Nope-v0")
    assert result.returncode == 2 and "creditgym list" in result.stdout


def test_demo_names_its_own_flag_for_a_budget_below_one_rollout() -> None:
    result = _run("demo", "--steps", "10")
    assert result.returncode == 2 and "--steps must cover one rollout" in result.stdout


def test_showcase_names_the_flag_it_refuses() -> None:
    result = _run("showcase", "--seed", "-1", "--skip-bench")
    assert result.returncode == 2 and "--seed must be 0 or more" in result.stdout


def test_bench_with_several_names_prints_one_json_document_keyed_by_name() -> None:
    result = _run("bench", "sokoban_generator", "sokoban_throughput",
                  "--args", "--seconds", "0.05")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert list(results) == ["sokoban_generator", "sokoban_throughput"]
    assert results["sokoban_generator"]["benchmark"] == "sokoban_generator"
    assert '"benchmark": "sokoban_generator"' in result.stderr, "each result should still show as it ends"


def test_train_on_an_env_without_success_reports_the_return(tmp_path) -> None:
    result = _run("train", "--env", "CartPole-v1", "--num-envs", "8", "--num-steps", "16", "--total-steps", "512",
                  "--runs-dir", str(tmp_path), "--no-progress", "--no-tensorboard", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "mean return" in result.stdout and "no episode finished" not in result.stdout
    # Its evaluation has no success rate rather than 0%, which would read as a policy that always fails.
    run_dir = next(path for path in tmp_path.iterdir() if path.is_dir())
    result = _run("eval", str(run_dir), "--episodes", "3", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    # creditgym's warnings read as a line of advice, not as Python's path:line plus the source line that raised them
    assert "warning: CartPole-v1 reports no info['success']" in result.stderr
    assert "UserWarning" not in result.stderr and "evaluate.py" not in result.stderr
    written = json.loads((run_dir / "eval.json").read_text())
    assert written["success_rate"] is None and written["success_rate_ci95"] is None and written["mean_return"] > 0


def test_make_banks_takes_its_flags(tmp_path) -> None:
    # The flags used to be rejected as unrecognized, so only a bare run that overwrote the shipped banks worked.
    result = _run("make-banks", "--out-dir", str(tmp_path), "--variants", "no-such-variant", "--quiet")
    assert result.returncode != 0 and "unknown variants ['no-such-variant']" in result.stdout + result.stderr
    assert "--out-dir" in _run("make-banks", "--help").stdout


def test_train_ppo_with_ray_rollout_workers(tmp_path) -> None:
    result = _run("train", "--env", "creditgym/Sokoban-6x6-1b-v0", "--rollout-backend", "ray", "--num-workers", "2",
                  "--num-envs", "4", "--num-steps", "8", "--total-steps", "64", "--hidden", "16", "--no-progress",
                  "--no-tensorboard", "--runs-dir", str(tmp_path), "--run-name", "ray")
    assert result.returncode == 0, result.stderr
    assert '"rollout_backend": "ray"' in (tmp_path / "ray" / "config.json").read_text()
    assert (tmp_path / "ray" / "checkpoint.pt").exists() and "run written to" in result.stdout
    # 16 steps per env end no 120-step episode: say so rather than "success nan%".
    assert "no episode finished yet" in result.stdout and "nan" not in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    # Each of these used to end in a traceback (TypeError, UnicodeDecodeError, torch's "Overflow when unpacking
    # long long"), or in a run with the string "false" read as true.
    (["--env-kwargs", '{"levels": null}'], "env_kwargs levels=None does not fit creditgym/Sokoban-6x6-1b-v0: "
                                           "levels takes a string or a path or a LevelBank"),
    (["--env-kwargs", '{"action_mask": "false"}'], "action_mask takes true or false"),
    (["--env-kwargs", '{"rewards": 3}'], "rewards takes a SokobanRewards or a string or a mapping"),
    (["--seed", str(2**64)], "PPOConfig.seed must be at most 2**63 - 1"),
])
def test_train_refuses_arguments_of_the_wrong_type_before_training(tmp_path, capsys, monkeypatch, args: list[str],
                                                                    message: str) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["train", "--env", "creditgym/Sokoban-6x6-1b-v0", "--runs-dir", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


def test_train_config_files_that_are_not_yaml_text_are_named(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "config.yaml").write_bytes(b"\x00\xff\xfe binary")
    assert main(["train", "--config", str(tmp_path / "config.yaml")]) == 2
    assert f"config file {tmp_path / 'config.yaml'} is not UTF-8 text" in capsys.readouterr().out
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert f"config file {tmp_path} is a folder; --config takes a YAML file" in capsys.readouterr().out


def test_commands_name_the_flag_they_refuse_before_doing_any_work(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["play", "creditgym/Sokoban-6x6-1b-v0", "--seed", "-1"]) == 2
    assert "--seed must be 0 or more" in capsys.readouterr().out
    assert main(["eval", str(tmp_path), "--seed", str(2**64)]) == 2
    assert "seed must be between 0 and 2**63 - 1" in capsys.readouterr().out
    # The demo used to train both runs and only then refuse --episodes 0.
    assert main(["demo", "--episodes", "0", "--steps", "64", "--runs-dir", str(tmp_path / "demo")]) == 2
    assert "--episodes must be at least 1" in capsys.readouterr().out and not (tmp_path / "demo").exists()
    assert main(["make-banks", "--seed", "-1", "--out-dir", str(tmp_path / "banks"), "--quiet"]) == 2
    assert "seed (--seed) must be an integer of 0 or more" in capsys.readouterr().out
    (tmp_path / "file").write_text("")
    assert main(["make-banks", "--out-dir", str(tmp_path / "file"), "--variants", "6x6-1b", "--quiet"]) == 2
    assert "is a file; give a folder for the bank files" in capsys.readouterr().out
    assert main(["rescore", str(tmp_path / "t.jsonl"), "--potential", "box_distance", "--channel", ""]) == 2
    assert "--channel must name the new reward channel" in capsys.readouterr().out


def test_eval_plays_an_llm_run_trained_from_the_command_line(tmp_path) -> None:
    import json

    from creditgym.llm import tiny_test_model

    model, tokenizer = tiny_test_model(seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    trained = _run("train", "--algo", "grpo", "--model", str(tmp_path / "tiny"), "--env",
                   "creditgym/Sanity-WordBandit-v0", "--iterations", "1", "--num-groups", "1", "--group-size", "2",
                   "--max-turns", "2", "--max-new-tokens", "4", "--no-progress", "--no-tensorboard", "--runs-dir",
                   str(tmp_path / "runs"), "--run-name", "grpo")
    assert trained.returncode == 0, trained.stderr
    result = _run("eval", str(tmp_path / "runs" / "grpo"), "--episodes", "3", "--no-progress", "--record",
                  str(tmp_path / "played.jsonl"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len((tmp_path / "played.jsonl").read_text().splitlines()) == 3
    rescored = _run("rescore", str(tmp_path / "played.jsonl"), "--estimator", "grpo")
    assert rescored.returncode == 0, rescored.stdout + rescored.stderr
    written = json.loads((tmp_path / "runs" / "grpo" / "eval.json").read_text())
    assert written["algo"] == "grpo" and written["episodes"] == 3 and written["iteration"] == 1
    assert 0.0 <= written["success_rate"] <= 1.0 and written["mean_steps"] > 0


def test_python_dash_m_creditgym_runs_the_cli_and_passes_its_exit_status() -> None:
    ok = subprocess.run([sys.executable, "-m", "creditgym", "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and "creditgym" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "creditgym", "eval", "/nonexistent/run"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "error" in bad.stdout + bad.stderr


@pytest.mark.parametrize("command", [["play", "creditgym/Shop-v0"], ["train", "--env", "creditgym/ToolUse-v0"],
                                     ["train", "--algo", "grpo", "--env", "creditgym/Shop-v0"]])
def test_a_deprecated_id_names_the_one_to_use(command: list[str]) -> None:
    # "unknown env id" alone left a user of a v0 id (Shop and ToolUse moved to v1) to find the new one themselves.
    result = _run(*command)
    assert result.returncode == 2
    family = command[-1].split("/")[1].split("-")[0]
    assert f"Please use `creditgym/{family}-v1` instead" in " ".join((result.stdout + result.stderr).split())


def test_a_run_shorter_than_the_time_limit_says_its_success_counts_early_ends_only(tmp_path) -> None:
    # 4,096 steps of 64 envs end no 120-step episode: the episodes that did end were solved, and "success 100.0%"
    # alone read as a trained policy (its eval gave 0%).
    result = _run("train", "--env", "creditgym/Sokoban-6x6-1b-v0", "--num-envs", "64", "--num-steps", "16",
                  "--total-steps", "4096", "--runs-dir", str(tmp_path), "--no-progress", "--no-tensorboard",
                  "--device", "cpu")
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "of the episodes that ended early" in out and "that takes 7,680 env steps" in out


def test_piped_tables_are_laid_out_wide_enough_not_to_fold_numbers() -> None:
    # Piped, rich used 80 columns: compare's table split "98,304" into "98,30" and "4" on two lines.
    result = subprocess.run([sys.executable, "-m", "creditgym.cli", "list"], capture_output=True, text=True,
                            timeout=120, env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) > 100
    row = next(line for line in result.stdout.splitlines() if "BabyAIText-GoToLocal-v0" in line)
    assert "text actions" in row  # the description's end, on the id's own line


def test_train_help_gives_llm_algos_their_own_meaning_of_shared_flags() -> None:
    """PPO and the LLM trainers share flags whose meaning differs (gamma over steps vs turns or tokens; checkpoints
    every update vs every iteration): the help says both."""
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    helps = {action.dest: action.help for action in train._actions}
    assert "(default: 0.99). LLM algos: discount over turns" in helps["gamma"]
    assert "LLM algos: iterations between checkpoints" in helps["checkpoint_every"]
    assert "checkpoint-<iteration>.pt" in helps["keep_checkpoints"]
    assert "(default: 0.95)" not in helps["num_envs"] and "LLM algos" not in helps["num_envs"]  # PPO's alone


def test_train_ends_with_commands_that_evaluate_and_draw_the_run(tmp_path) -> None:
    import shlex

    result = _run("train", "--env", "creditgym/Sokoban-6x6-1b-v0", "--num-envs", "4", "--num-steps", "8",
                  "--total-steps", "32", "--hidden", "16", "--no-progress", "--no-tensorboard", "--runs-dir",
                  str(tmp_path), "--run-name", "tiny")
    assert result.returncode == 0, result.stderr
    hint = result.stdout.replace("\n", "").split("evaluate it and watch it play: ")[1]
    for command in hint.split(", then "):
        words = shlex.split(command)
        assert words[0] == "creditgym"
        assert main([*words[1:], *(["--episodes", "4"] if words[1] == "eval" else [])]) == 0
    drawn = sorted(p.suffix for p in (tmp_path / "tiny" / "eval-episodes-render").iterdir())
    assert drawn == [".gif"] * 4 + [".txt"] * 4
