"""Resuming on another device: refused unless --device asks for it, then warned about and recorded as not bit-exact;
a resume on the run's own device stays exact. Without a GPU, a CPU run's checkpoint is rewritten as a GPU run
writes it: tensors tagged cuda:0 and CUDA generator states, which a CPU generator cannot take."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

import creditgym  # noqa: F401
from creditgym import cli
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.cli import main as cli_main

from .llm.helpers import make_trainer

CLI_FLAGS = ["--env", "creditgym/Sokoban-6x6-1b-v0", "--num-envs", "8", "--num-steps", "16", "--hidden", "16",
             "--no-anneal-lr", "--no-progress", "--no-tensorboard"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _as_if_trained_on_cuda(run: Path, monkeypatch: pytest.MonkeyPatch, *, names_device: bool = True) -> None:
    """Rewrite the run's checkpoint and config.json as a run on "cuda" writes them. `names_device=False` leaves out
    the checkpoint's "device", as checkpoints from before it did."""
    path = run / "checkpoint.pt"

    def on_cuda(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        # torch.Generator("cuda").get_state(): the Philox seed and offset, 16 bytes
        return {key: torch.tensor([7, 0]).view(torch.uint8) if key == "generator" else on_cuda(item)
                for key, item in value.items()}

    state = on_cuda(torch.load(path, weights_only=False))
    state["device"] = "cuda"
    if not names_device:
        del state["device"]
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path)
    record = json.loads((run / "config.json").read_text())
    record["device"] = record["config"]["device"] = "cuda"
    (run / "config.json").write_text(json.dumps(record))


def _rows(run: Path) -> list[int]:
    return [json.loads(line)["global_step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=False)["model"]


def test_a_gpu_run_moves_to_the_cpu_only_with_device_and_is_recorded_as_not_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, even where one is
    run = tmp_path / "gpu"
    assert cli_main(["train", *CLI_FLAGS, "--total-steps", "256", "--runs-dir", str(tmp_path), "--run-name",
                     "gpu"]) == 0
    _as_if_trained_on_cuda(run, monkeypatch)
    shutil.copytree(run, tmp_path / "again")
    capsys.readouterr()
    resume = ["train", "--resume", str(run), "--total-steps", "512", "--no-progress"]
    assert cli_main(resume) == 2
    out = capsys.readouterr().out.replace("\n", "")
    assert "was trained on cuda, and torch sees no CUDA device here" in out and "pass --device cpu" in out

    with pytest.warns(UserWarning, match=r"saved on cuda: .* re-seeded .* not bit-exact"):
        assert cli_main([*resume, "--device", "cpu"]) == 0
    assert _rows(run) == [128, 256, 384, 512]
    record = json.loads((run / "config.json").read_text())
    assert record["device"] == record["config"]["device"] == "cpu"
    assert record["device_changes"] == [{"from": "cuda", "to": "cpu", "update": 2, "global_step": 256}]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["device_changes"] == record["device_changes"]
    # The generators are re-seeded from the run's seed and update: the same move trains the same weights.
    with pytest.warns(UserWarning, match="not bit-exact"):
        assert cli_main(["train", "--resume", str(tmp_path / "again"), "--total-steps", "512", "--no-progress",
                         "--device", "cpu"]) == 0
    for name, value in _weights(run).items():
        assert torch.equal(value, _weights(tmp_path / "again")[name]), name


def test_a_resume_on_its_own_device_stays_exact_and_records_no_move(tmp_path: Path) -> None:
    common = [*CLI_FLAGS, "--runs-dir", str(tmp_path)]
    assert cli_main(["train", *common, "--total-steps", "512", "--run-name", "straight"]) == 0
    assert cli_main(["train", *common, "--total-steps", "256", "--run-name", "resumed"]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli_main(["train", "--resume", str(tmp_path / "resumed"), "--total-steps", "512", "--no-progress",
                         "--device", "cpu"]) == 0
    assert not [w for w in caught if "bit-exact" in str(w.message)]
    for name, value in _weights(tmp_path / "straight").items():
        assert torch.equal(value, _weights(tmp_path / "resumed")[name]), name
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["device_changes"] == []


@pytest.mark.parametrize(("setting", "used", "cuda", "expected"), [
    ("auto", "cpu", True, "cpu"),  # auto would move a CPU run onto the GPU that is here now
    ("auto", "cuda", True, "auto"),
    ("auto", "cpu", False, "auto"),
    ("cuda:1", "cuda:1", True, "cuda:1"),
])
def test_a_resume_without_device_stays_on_the_runs_device(monkeypatch: pytest.MonkeyPatch, setting: str, used: str,
                                                           cuda: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert cli._resume_device(Path("run"), {"config": {"device": setting}, "device": used}) == expected


def test_llm_trainer_resumes_an_older_gpu_checkpoint_on_the_cpu_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_trainer(tmp_path, iterations=2).learn(until_iteration=1)
    # Without a saved "device", the tensors' own location (cuda:0) tells where it was saved.
    _as_if_trained_on_cuda(tmp_path / "run", monkeypatch, names_device=False)
    with pytest.warns(UserWarning, match="saved on cuda:0.*not bit-exact"):
        resumed = make_trainer(tmp_path, iterations=2, resume=tmp_path / "run")
    assert resumed.iteration == 1
    resumed.learn()
    assert resumed.iteration == 2
    changes = json.loads((tmp_path / "run" / "config.json").read_text())["device_changes"]
    assert [{k: v for k, v in change.items() if k != "global_step"} for change in changes] == [
        {"from": "cuda:0", "to": "cpu", "iteration": 1}]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_ppo_moves_between_cuda_and_the_cpu(tmp_path: Path) -> None:
    def config(device: str, name: str) -> PPOConfig:
        return PPOConfig(num_envs=8, num_steps=16, total_steps=512, hidden=16, progress=False, tensorboard=False,
                         runs_dir=str(tmp_path), run_name=name, checkpoint_every=0, device=device)

    PPO(config("cuda", "gpu")).learn(until_steps=256)
    shutil.copytree(tmp_path / "gpu", tmp_path / "moved")
    with warnings.catch_warnings(record=True) as caught:  # the CUDA generators restore: no move, no warning
        warnings.simplefilter("always")
        same = PPO(config("cuda", "gpu"), resume=tmp_path / "gpu")
    assert not [w for w in caught if "bit-exact" in str(w.message)]
    same.learn()
    assert same.global_step == 512 and same.device_changes == []
    with pytest.warns(UserWarning, match="not bit-exact"):
        moved = PPO(config("cpu", "moved"), resume=tmp_path / "moved")
    moved.learn()
    assert moved.global_step == 512 and [c["to"] for c in moved.device_changes] == ["cpu"]
    with pytest.warns(UserWarning, match="not bit-exact"):
        back = PPO(replace(config("cuda", "moved"), total_steps=640), resume=tmp_path / "moved")
    back.learn()
    assert [c["to"] for c in back.device_changes] == ["cpu", "cuda"]

