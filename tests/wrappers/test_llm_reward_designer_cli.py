"""`creditgym design-reward`: its flags reach DesignerConfig, --compare-sparse is saved, a used folder needs
--overwrite. The model is a test double returning HAND-WRITTEN prose (no program reaches training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from creditgym.cli import main
from tests.wrappers.test_llm_reward_designer import PROSE


class ProseChat:
    model = "prose"

    def generate(self, batch: list[list[dict]], **sampling: object) -> list[str]:
        return [PROSE] * len(batch)


@pytest.fixture
def design(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr("creditgym.llm.HFChatModel.from_pretrained", lambda *args, **kwargs: ProseChat())

    def run(*flags: str) -> tuple[int, str]:
        code = main(["design-reward", "--iterations", "1", "--samples", "2", "--train-steps", "256", "--num-envs",
                     "16", "--num-steps", "16", "--runs-dir", str(tmp_path), "--run-name", "cli", "--no-progress",
                     *flags])
        return code, capsys.readouterr().out

    return run


def test_design_reward_flags_reach_the_config_and_sparse_is_saved(design, tmp_path: Path) -> None:
    code, out = design("--no-critic", "--fitness-window", "0.25", "--max-abs-reward", "10", "--compare-sparse",
                       "--seeds", "3", "--final-seeds", "4", "--critic-revisions", "2")
    assert code == 0, out
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    config = report["config"]
    assert (config["critic"], config["num_steps"], config["fitness_window"], config["max_abs_reward"]) == (
        False, 16, 0.25, 10.0)
    assert config["critic_revisions"] == 2
    assert config["final_seeds"] == [4] and report["final"] is None  # no program passed, nothing to re-train
    assert report["sparse"]["seeds"] == [3] and 0.0 <= report["sparse"]["fitness"] <= 1.0
    assert "sparse task reward alone, selection seeds" in out


def test_design_reward_refuses_a_used_folder_without_overwrite(design) -> None:
    assert design()[0] == 0
    code, out = design()
    assert code == 2 and "already holds a design run" in out and "--overwrite" in out
    assert design("--overwrite")[0] == 0


def test_design_reward_refuses_repeated_seeds(design) -> None:
    code, out = design("--seeds", "1", "1")
    assert code == 2 and "repeats a seed" in out


def test_design_reward_refuses_negative_critic_revisions(design) -> None:
    code, out = design("--critic-revisions", "-1")
    assert code == 2 and "critic_revisions must be an integer ≥ 0" in out


def test_design_reward_passes_the_token_limit_field_to_a_server_model(design, monkeypatch) -> None:
    # OpenAI's reasoning models refuse max_tokens; the CLI had no way to ask for max_completion_tokens.
    built = {}

    class ServerChat(ProseChat):
        def __init__(self, url: str, **kwargs: object) -> None:
            built.update(kwargs, url=url)

    monkeypatch.setattr("creditgym.llm.OpenAIChatModel", ServerChat)
    code, out = design("--model", "http://localhost:1/v1", "--server-model", "o4-mini",
                       "--token-limit-field", "max_completion_tokens")
    assert code == 0, out
    assert built["token_limit_field"] == "max_completion_tokens" and built["model"] == "o4-mini"
