"""The scripts in examples/ and benchmarks/: `--help` works and documents every flag; bad input is one argparse line."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*ROOT.glob("examples/*.py"), *ROOT.glob("benchmarks/*.py")])


def _load(path: Path) -> Iterator[ModuleType]:
    name = f"script_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def script_parser(path: Path) -> argparse.ArgumentParser:
    """The parser a script's `main` builds, caught as `main(["--help"])` parses (its help goes to stdout)."""
    parsers: list[argparse.ArgumentParser] = []
    parse_args = argparse.ArgumentParser.parse_args

    def recording(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> object:
        parsers.append(self)
        return parse_args(self, *args, **kwargs)

    argparse.ArgumentParser.parse_args = recording  # type: ignore[method-assign]
    try:
        for module in _load(path):
            with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as exit_info:
                module.main(["--help"])  # main(argv), as `creditgym bench` calls it
    finally:
        argparse.ArgumentParser.parse_args = parse_args  # type: ignore[method-assign]
    assert exit_info.value.code == 0 and "usage:" in out.getvalue(), f"{path.name} --help"
    return parsers[0]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_help_documents_every_flag(path: Path) -> None:
    undocumented = [action.option_strings or action.dest for action in script_parser(path)._actions
                    if not action.help or action.help == argparse.SUPPRESS]
    assert not undocumented, f"{path.name}: flags without help= {undocumented}"


# Each is refused before any work starts; before the checks these ended in a traceback or ran to a wrong end.
BAD_INPUT = [
    ("benchmarks/dialogue_throughput.py", ["--seconds", "0"]),
    ("benchmarks/env_soak.py", ["--env", "creditgym/NoSuchEnv-v0"]),
    ("benchmarks/env_soak.py", ["--env", "--extra"]),
    ("benchmarks/env_soak.py", ["--env", "creditgym/Sanity-Bandit-v0", "--steps", "0"]),
    ("benchmarks/tooluse_throughput.py", ["--env-id", "creditgym/NoSuchEnv-v0"]),
    ("benchmarks/shop_throughput.py", ["--queries", "0"]),
    ("benchmarks/sokoban_throughput.py", ["--device", "gpu"]),
    ("benchmarks/ppo_learning.py", ["--env", "creditgym/NoSuchEnv-v0"]),
    ("benchmarks/ppo_learning.py", ["--episodes", "0"]),
    ("benchmarks/ppo_throughput.py", ["--config", '{"no_such_field": 1}']),
    ("benchmarks/trajectory_io.py", ["--env", "creditgym/NoSuchEnv-v0"]),
    ("benchmarks/trajectory_io.py", ["--env-kwargs", "{obs_mode: text}"]),
    ("benchmarks/trajectory_io.py", ["--episodes", "0"]),
    ("benchmarks/llm_iteration.py", ["--iterations", "0"]),
    ("benchmarks/llm_iteration.py", ["--tiny", "--config", '{"no_such_field": 1}']),
    ("examples/shaping_invariance.py", ["--gamma", "1"]),
    ("examples/shaping_invariance.py", ["--bank", "3x3-9b"]),
    ("examples/spa_estimator_fit.py", ["--checkpoints", "no/such/checkpoint.pt"]),
    ("examples/learned_rewards_sokoban.py", ["--env", "creditgym/NoSuchEnv-v0"]),
    ("examples/llm_grpo.py", ["--algo", "ppo"]),
    ("examples/llm_process_rewards.py", ["--iterations", "0"]),
    ("examples/llm_reward_design.py", ["--train-steps", "10"]),
]


@pytest.mark.parametrize(("script", "argv"), BAD_INPUT, ids=lambda value: " ".join(value) if isinstance(value, list)
                         else value.split("/")[-1])
def test_bad_input_is_one_line(script: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    for module in _load(ROOT / script):
        with pytest.raises(SystemExit) as exit_info:
            module.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in error, error


def test_llm_iteration_times_every_part_of_a_ppo_llm_iteration() -> None:
    """A smoke run on the tiny model: ppo_llm has a scoring pass and always a backward (its value loss)."""
    for module in _load(ROOT / "benchmarks/llm_iteration.py"):
        with contextlib.redirect_stdout(io.StringIO()):
            result = module.main(["--tiny", "--algo", "ppo_llm", "--episodes", "4", "--max-turns", "2",
                                  "--max-new-tokens", "4", "--micro-batch", "3", "--iterations", "2"])
    assert len(result["iterations"]) == 2
    for figures in result["iterations"]:
        parts = [figures[name] for name in module.PARTS]
        assert all(value > 0 for value in parts), figures
        assert figures["other_s"] >= -0.01 and figures["update_s"] <= figures["iteration_s"]


def test_a_figure_left_unmeasured_is_no_missed_target() -> None:
    from creditgym.benchmarking import target_report

    report = target_report({"fast": 5.0, "skipped": None}, {"fast": 4.0, "skipped": 4.0, "absent": 1.0})
    assert report["fast"] == {"target": 4.0, "measured": 5.0, "met": True}
    assert report["skipped"]["met"] is None and report["absent"] == {"target": 1.0, "measured": None, "met": None}


class _SoakPlayer:
    """What env_soak.soak plays: ten-step episodes that keep 1,000 bytes at each of the first `keeping` steps."""

    kind = "test"

    def __init__(self, keeping: float) -> None:
        self.keeping, self.kept = keeping, []
        self.steps = self.episodes = self.invalid_actions = 0

    def step(self) -> bool:
        self.steps += 1
        if self.steps <= self.keeping:
            self.kept.append(bytearray(1000))  # the leak under test
        self.episodes += self.steps % 10 == 0
        return self.steps % 10 == 0

    def close(self) -> None:
        pass


def test_env_soak_flags_a_leak_names_its_line_and_passes_a_cache_that_fills() -> None:
    args = argparse.Namespace(steps=3000, seconds=30.0, warmup_steps=200, warmup_seconds=5.0, samples=20, frames=4,
                              top=3, max_growth_per_1k_steps=2000.0, max_rss_growth_per_1k_steps=float("inf"))
    for module in _load(ROOT / "benchmarks/env_soak.py"):
        leaking = module.soak("leaks", lambda: _SoakPlayer(float("inf")), args)
        steady = module.soak("steady", lambda: _SoakPlayer(0), args)
        cache = module.soak("cache", lambda: _SoakPlayer(1200), args)  # full 1,000 steps into the measured 3,000
    assert leaking["steps"] == steady["steps"] == cache["steps"] == 3000
    assert leaking["leak_suspected"] and leaking["leak_evidence"] == ["heap"]
    # bytearray(1000) is 1,057 bytes; the list that holds them adds 8 a step, with some slack for its growth
    assert 1_000_000 < leaking["heap_growth_per_1k_steps_second_half"] < 1_200_000
    line = next(number for number, text in enumerate(Path(__file__).read_text().splitlines(), start=1)
                if "# the leak under test" in text)
    assert leaking["top_growth_sites"][0]["site"] == f"tests/test_scripts.py:{line}"
    assert not steady["leak_suspected"] and steady["heap_growth_per_1k_steps_second_half"] < 100
    # the cache grew by about a megabyte, but not in the second half: it is listed, not flagged
    assert cache["heap_growth_bytes"] > 1_000_000 and cache["top_growth_sites"][0]["site"].endswith(f":{line}")
    assert not cache["leak_suspected"] and abs(cache["heap_growth_per_1k_steps_second_half"]) < 100


def test_trajectory_io_measures_the_format_it_writes() -> None:
    """A smoke run: both files are written and read back, at a few bytes a step once gzipped."""
    for module in _load(ROOT / "benchmarks/trajectory_io.py"):
        with contextlib.redirect_stdout(io.StringIO()):
            result = module.main(["--episodes", "3", "--repeats", "1", "--env", "creditgym/Sokoban-6x6-1b-v0"])
    assert result["format"] == "creditgym.trajectory/2" and result["steps"] > 3
    assert 0 < result["gzip_bytes_per_step"] < result["plain_bytes_per_step"]
    assert all(result[f"{name}_{what}_us_per_step"] > 0 for name in ("plain", "gzip") for what in ("write", "read"))
