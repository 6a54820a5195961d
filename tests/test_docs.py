"""The docs stay true: README's Python runs, and every command the docs show names flags and choices that exist.

Users copy these commands; a renamed flag in the code used to leave the docs pointing at one that argparse refuses.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex

import gymnasium as gym
import pytest

from creditgym.agents.config_cli import config_from_args
from creditgym.cli import build_parser
from tests.test_scripts import ROOT, SCRIPTS, script_parser

DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
# Arguments after these belong to another program (`creditgym bench --args ...` passes them to the benchmark).
PASS_THROUGH = {"--args"}
# scaling.md discusses these flags of vLLM's own OpenAI server, which is not ours to check.
VLLM_SERVER_FLAGS = {"--enforce-eager", "--load-format", "--served-model-name"}
COMMAND = re.compile(r"(?:^|\s|/)(creditgym [a-z][a-z-]*|python (?:examples|benchmarks)/\w+\.py)(.*)")


def _code(markdown: str) -> list[str]:
    """Code lines of fenced and indented blocks (continuations joined) and inline code spans."""
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", markdown, re.S | re.M)
    lines = [line for block in fenced for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"^```[a-z]*\n.*?^```", "", markdown, flags=re.S | re.M).replace("\\\n", " ")
    indented = [line for line in prose.splitlines() if line.startswith("    ")]
    return lines + indented + re.findall(r"`([^`\n]+)`", prose)


def _commands() -> list[tuple[str, str, list[str]]]:
    """(doc, program, arguments) of every `creditgym COMMAND ...` and `python examples|benchmarks/X.py ...`."""
    found = []
    for doc in DOCS:
        for code in _code(doc.read_text()):
            for match in COMMAND.finditer(code):
                try:
                    words = shlex.split(match.group(2).split("|")[0])
                except ValueError:  # an unbalanced quote in prose that merely mentions a command
                    words = match.group(2).split()
                found.append((doc.name, match.group(1), words))
    return found


COMMANDS = _commands()


def _parser(program: str) -> argparse.ArgumentParser | None:
    if program.startswith("python "):
        return script_parser(ROOT / program.split()[1])
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    return commands.get(program.split()[1])


def test_the_docs_show_commands() -> None:
    programs = {program for _, program, _ in COMMANDS}
    assert {"creditgym train", "creditgym eval", "python benchmarks/ppo_learning.py"} <= programs, programs


@pytest.mark.parametrize("program", sorted({program for _, program, _ in COMMANDS}))
def test_documented_flags_and_choices_exist(program: str) -> None:
    if program.startswith("python "):
        assert (ROOT / program.split()[1]).is_file(), f"the docs run {program}, which does not exist"
    parser = _parser(program)
    if parser is None:  # prose such as "creditgym needs": only real commands have flags to check
        assert all(not word.startswith("--") for _, p, words in COMMANDS if p == program for word in words), program
        return
    options = parser._option_string_actions
    wrong = []
    for doc, _, words in (command for command in COMMANDS if command[1] == program):
        for index, word in enumerate(words):
            if word in PASS_THROUGH:
                break
            if word.startswith("{") and "$" not in word:  # a shell variable is filled in when the command runs
                try:
                    json.loads(word)
                except ValueError as error:
                    wrong.append(f"{doc}: {program} ... {word} is not JSON ({error})")
                continue
            word = word.strip("[]")  # "[--levels PATH]": an optional flag in a synopsis
            flag = word.split("=")[0]
            if not re.fullmatch(r"--[a-z0-9][a-z0-9-]*", flag):
                continue
            if flag not in options:
                wrong.append(f"{doc}: {program} {flag} (no such flag)")
                continue
            choices = options[flag].choices
            value = word.split("=", 1)[1] if "=" in word else (words[index + 1] if index + 1 < len(words) else None)
            if choices and value is not None and value.islower() and value not in choices:
                wrong.append(f"{doc}: {program} {flag} {value} (choices: {', '.join(map(str, choices))})")
    assert not wrong, "\n".join(wrong)


def test_readme_python_runs_and_shows_what_it_says() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert len(blocks) >= 2
    namespace: dict[str, object] = {}
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
        info = namespace["info"]
        assert info["reward_components"] == {"task": -0.1, "format": 0.0}  # type: ignore[index]
        assert namespace["vec"].num_envs == 1024  # type: ignore[attr-defined]
        assert namespace["texts"].num_envs == 8  # type: ignore[attr-defined]
    finally:
        for name in ("env", "vec", "texts"):
            if isinstance(namespace.get(name), (gym.Env, gym.vector.VectorEnv)):
                namespace[name].close()  # type: ignore[union-attr]


def test_the_reward_methods_guide_runs_as_written() -> None:
    """docs/rewards.md shows the reward methods from Python, for users' own trainers; its blocks assert what they
    claim, and run in order in one namespace, as a reader pastes them."""
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "docs" / "rewards.md").read_text(), re.S | re.M)
    assert len(blocks) >= 5
    namespace: dict[str, object] = {}
    try:
        for block in blocks:
            exec(compile(block, "docs/rewards.md", "exec"), namespace)  # noqa: S102 - our own docs
        assert namespace["checkpoint"]["spa"]["replay"]  # type: ignore[index]  # SPA learned from finished episodes
    finally:
        for name in ("env", "vec"):
            if isinstance(namespace.get(name), (gym.Env, gym.vector.VectorEnv)):
                namespace[name].close()  # type: ignore[union-attr]


TRAIN = [(doc, words) for doc, program, words in COMMANDS if program == "creditgym train" and "--resume" not in words]


@pytest.mark.parametrize(("doc", "words"), TRAIN,
                         ids=lambda value: " ".join(value) if isinstance(value, list) else value)
def test_documented_train_commands_build_a_valid_config(doc: str, words: list[str]) -> None:
    """Values too: a documented `--learned-reward spa` must be one the config accepts, not only a known flag."""
    from creditgym.agents.llm.trainer import LLMTrainConfig
    from creditgym.agents.ppo import PPOConfig

    argv = ["train", *(word.strip("[]") for word in words if word != "...")]  # "..." and [...]: synopsis only
    args = build_parser().parse_args(argv)
    config_from_args(LLMTrainConfig if args.algo not in (None, "ppo") else PPOConfig, args, args.config)


def test_flags_quoted_alone_exist_somewhere() -> None:
    """Prose quotes flags on their own (`--update-epochs 4`); each must be a flag of some command or script."""
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    known = {flag for parser in commands.values() for flag in parser._option_string_actions}
    known |= {flag for path in SCRIPTS for flag in script_parser(path)._option_string_actions}
    quoted = {(doc.name, flag) for doc in DOCS for span in _code(doc.read_text()) if span.startswith("--")
              for flag in re.findall(r"(?:^|\s)(--[a-z0-9][a-z0-9-]*)", span)}
    assert quoted, "no flag quoted alone: the extraction broke"
    unknown = sorted(f"{doc}: {flag}" for doc, flag in quoted if flag not in known | VLLM_SERVER_FLAGS)
    assert not unknown, "\n".join(unknown)
