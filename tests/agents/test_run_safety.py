"""Run folders keep their data: a fresh run never replaces an earlier one unasked, Ctrl-C saves a checkpoint that
resumes exactly, resuming never duplicates metrics rows, and bad checkpoints give errors that say what is wrong."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import creditgym  # noqa: F401
from creditgym.agents import ppo
from creditgym.agents.evaluate import evaluate
from creditgym.agents.llm import trainer as llm_trainer
from creditgym.agents.ppo import PPO, PPOConfig
from creditgym.cli import main as cli_main
from creditgym.demo import demo_config

from .llm.helpers import make_trainer

ENV = "creditgym/Sokoban-6x6-1b-v0"
CLI_FLAGS = ["--env", ENV, "--num-envs", "8", "--num-steps", "16", "--hidden", "16", "--no-progress",
             "--no-tensorboard"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _config(tmp_path: Path, **overrides: Any) -> PPOConfig:
    values: dict[str, Any] = dict(env_id=ENV, num_envs=8, num_steps=16, total_steps=1024, hidden=16, progress=False,
                                  tensorboard=False, runs_dir=str(tmp_path), run_name="run", checkpoint_every=0)
    return PPOConfig(**{**values, **overrides})


def _rows(run_dir: Path, key: str = "global_step") -> list[float]:
    return [json.loads(line)[key] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_weights(a: PPO, b: PPO) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.agent.parameters(), b.agent.parameters(), strict=True))


def _cli(args: list[str]) -> int:
    try:
        return cli_main(args)
    except KeyboardInterrupt:  # escaping, it would stop the whole test session
        pytest.fail("Ctrl-C left the command line as a KeyboardInterrupt traceback")


def _ctrl_c_after(module: Any, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Press Ctrl-C (call the SIGINT handler, as Python does on a signal) once `count` updates are logged."""
    advance = module._Progress.advance
    calls = []

    def advance_then_ctrl_c(self: Any, *args: Any) -> None:
        advance(self, *args)
        calls.append(1)
        if len(calls) == count:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

    monkeypatch.setattr(module._Progress, "advance", advance_then_ctrl_c)


# -- 1. a fresh run refuses a folder that holds a run ---------------------------------------------------------------
def test_a_fresh_run_refuses_a_folder_that_holds_a_run_and_keeps_it(tmp_path: Path) -> None:
    PPO(_config(tmp_path, checkpoint_every=2, keep_checkpoints=True)).learn()
    run = tmp_path / "run"
    before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl", "checkpoint.pt")}
    with pytest.raises(ValueError, match="already holds a run") as err:
        PPO(_config(tmp_path, seed=2, total_steps=512)).learn()
    for hint in (f"--resume {run}", "--run-name", "--overwrite"):
        assert hint in str(err.value)
    assert {name: (run / name).read_bytes() for name in before} == before


def test_overwrite_replaces_the_earlier_run_and_its_kept_checkpoints(tmp_path: Path) -> None:
    PPO(_config(tmp_path, checkpoint_every=2, keep_checkpoints=True)).learn()
    PPO(_config(tmp_path, total_steps=512, overwrite=True)).learn()
    run = tmp_path / "run"
    assert _rows(run) == [128, 256, 384, 512]
    assert not list(run.glob("checkpoint-*.pt"))
    assert torch.load(run / "checkpoint.pt", weights_only=False)["global_step"] == 512


def test_cli_refuses_a_reused_run_name_and_the_flag_replaces_it(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", *CLI_FLAGS, "--runs-dir", str(tmp_path), "--run-name", "x", "--total-steps", "512"]
    assert cli_main(args) == 0
    assert cli_main([*args[:-1], "256"]) == 2
    out = capsys.readouterr().out
    assert "already holds a run" in out and "Traceback" not in out
    assert _rows(tmp_path / "x") == [128, 256, 384, 512]
    assert cli_main([*args[:-1], "256", "--overwrite"]) == 0
    assert _rows(tmp_path / "x") == [128, 256]


@pytest.mark.parametrize("name", ["", ".", "..", "../elsewhere", "/tmp/abs", "nested/run"])
def test_a_run_name_cannot_leave_the_runs_folder(name: str) -> None:
    from creditgym.agents.llm import LLMTrainConfig
    from creditgym.wrappers.llm_reward.designer import DesignerConfig

    # before, "" or "." wrote the run into runs_dir itself; the reward designer wrote "../x" beside runs_dir
    for config in (PPOConfig, LLMTrainConfig, DesignerConfig):
        with pytest.raises(ValueError, match="run_name must be a plain folder name"):
            config(run_name=name)


def test_a_runs_dir_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    from creditgym.agents.llm import LLMTrainConfig
    from creditgym.wrappers.llm_reward.designer import DesignerConfig

    (tmp_path / "afile").write_text("")
    for config in (PPOConfig, LLMTrainConfig, DesignerConfig):  # the designer found it after loading its model
        with pytest.raises(ValueError, match="runs_dir .* is a file"):
            config(runs_dir=str(tmp_path / "afile"))


def test_llm_trainer_refuses_a_folder_that_holds_a_run(tmp_path: Path) -> None:
    make_trainer(tmp_path, iterations=1).learn()
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        make_trainer(tmp_path, iterations=1).learn()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    make_trainer(tmp_path, iterations=1, overwrite=True).learn()


def test_the_demo_replaces_its_own_runs_on_purpose() -> None:
    assert demo_config(8192, 1, "runs/demo").overwrite


# -- 2. Ctrl-C saves the last completed update ------------------------------------------------------------------------
def test_ctrl_c_saves_the_update_it_stops_after_and_resumes_exactly(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    straight = PPO(_config(tmp_path, run_name="straight"))
    straight.learn()
    _ctrl_c_after(ppo, monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        PPO(_config(tmp_path)).learn()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["global_step"] == 3 * 128
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 1000  # the curve so far
    monkeypatch.undo()
    resumed = PPO(_config(tmp_path), resume=tmp_path / "run")
    resumed.learn()
    assert _same_weights(straight, resumed)
    assert _rows(tmp_path / "run") == _rows(tmp_path / "straight") == [128 * i for i in range(1, 9)]


def test_cli_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _ctrl_c_after(ppo, monkeypatch, 2)
    args = ["train", *CLI_FLAGS, "--runs-dir", str(tmp_path), "--run-name", "x", "--total-steps", "512"]
    assert _cli(args) == 130
    out = capsys.readouterr().out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1
    command = out.split("continue it with: ")[1].strip()
    assert command == f"creditgym train --resume {shlex.quote(str(tmp_path / 'x'))}"
    monkeypatch.undo()
    assert cli_main(shlex.split(command)[1:]) == 0
    assert _rows(tmp_path / "x") == [128, 256, 384, 512]


def test_cli_ctrl_c_before_any_checkpoint_says_to_start_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ppo.PPO, "_updates", interrupted)
    assert _cli(["train", *CLI_FLAGS, "--runs-dir", str(tmp_path), "--run-name", "x"]) == 130
    out = capsys.readouterr().out
    assert "had a checkpoint" in out and "--overwrite" in out and "Traceback" not in out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_llm_ctrl_c_saves_the_iteration_it_stops_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = make_trainer(tmp_path / "a", iterations=3)
    straight.learn()
    _ctrl_c_after(llm_trainer, monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path / "b", iterations=3).learn()
    assert torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=False)["iteration"] == 1
    assert (tmp_path / "b" / "run" / "learning_curve.png").exists()
    monkeypatch.undo()
    resumed = make_trainer(tmp_path / "b", iterations=3, resume=tmp_path / "b" / "run")
    resumed.learn()
    for a, b in zip(straight.policy.model.parameters(), resumed.policy.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert _rows(tmp_path / "b" / "run", "charts/iteration") == [1, 2, 3]


# -- 3. resuming never duplicates metrics rows ----------------------------------------------------------------------
def test_resume_after_a_hard_stop_drops_only_the_rows_past_the_checkpoint(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A second Ctrl-C (a bare KeyboardInterrupt) stops mid-update 6: the checkpoint of update 4 is the last one.
    trainer = PPO(_config(tmp_path, checkpoint_every=2))
    step, calls = trainer.envs.step, []

    def step_then_stop(action: torch.Tensor) -> Any:
        calls.append(1)
        if len(calls) == 5 * 16 + 3:
            raise KeyboardInterrupt
        return step(action)

    monkeypatch.setattr(trainer.envs, "step", step_then_stop)
    with pytest.raises(KeyboardInterrupt):
        trainer.learn()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _rows(tmp_path / "run") == [128 * i for i in range(1, 6)]
    resumed = PPO(_config(tmp_path, checkpoint_every=2), resume=tmp_path / "run")
    assert resumed.global_step == 4 * 128
    resumed.learn()
    assert _rows(tmp_path / "run") == [128 * i for i in range(1, 9)]


def test_resume_sets_aside_a_metrics_line_cut_short_by_a_crash(tmp_path: Path) -> None:
    # The resumed run's rows used to be appended after the cut-short line, leaving metrics.jsonl broken for good.
    PPO(_config(tmp_path, total_steps=256, checkpoint_every=1)).learn()
    metrics = tmp_path / "run" / "metrics.jsonl"
    cut = '{"global_step": 384, "charts/sps": 12'
    metrics.write_text(metrics.read_text() + cut)
    with pytest.warns(UserWarning, match=r"metrics.jsonl held a line cut short .*: moved to .*metrics.jsonl.partial"):
        PPO(_config(tmp_path, total_steps=512, checkpoint_every=1), resume=tmp_path / "run").learn()
    assert _rows(tmp_path / "run") == [128, 256, 384, 512]  # every line parses again
    assert (tmp_path / "run" / "metrics.jsonl.partial").read_text() == cut + "\n"
    PPO(_config(tmp_path, total_steps=256, overwrite=True)).learn()  # an overwritten run drops it with the rest
    assert not (tmp_path / "run" / "metrics.jsonl.partial").exists()


def test_llm_resume_from_an_earlier_checkpoint_drops_the_later_iterations(tmp_path: Path) -> None:
    make_trainer(tmp_path, iterations=3, checkpoint_every=1, keep_checkpoints=True).learn()
    resumed = make_trainer(tmp_path, iterations=3, resume=tmp_path / "run" / "checkpoint-1.pt")
    resumed.learn()
    assert _rows(tmp_path / "run", "charts/iteration") == [1, 2, 3]


# -- 4. corrupt and mismatched checkpoints ----------------------------------------------------------------------------
@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    PPO(_config(tmp_path, total_steps=256)).learn()
    return tmp_path / "run"


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[:200], "is truncated or damaged"),
    (lambda data: b"", "is truncated or damaged"),
    (lambda data: b"not a checkpoint\n", "is not a checkpoint written by creditgym"),
])
def test_damaged_checkpoints_give_an_error_naming_the_file(run_dir: Path, damage: Any, message: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = run_dir / "checkpoint.pt"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as err:
        PPO(_config(run_dir.parent), resume=run_dir)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=message):
        evaluate(run_dir, episodes=2)
    for args in (["train", "--resume", str(run_dir)], ["eval", str(run_dir), "--episodes", "2"]):
        assert cli_main(args) == 2
        out = capsys.readouterr().out
        assert message in out and "Traceback" not in out


@pytest.mark.parametrize(("damage", "message"), [
    # These loaded, then failed inside PPOConfig(**config) or load_state_dict with a TypeError or AttributeError.
    (lambda state: state.update(config=["env_id"]), "its 'config' is a list, not a mapping"),
    (lambda state: state.update(model=None), "its weights are not a mapping of parameter names to tensors"),
    (lambda state: state.update(model=list(state["model"].values())), "its weights are not a mapping"),
    # NaN weights used to evaluate without an error, as a policy that always takes its first action.
    (lambda state: next(iter(state["model"].values())).fill_(float("nan")), "holds NaN or infinite values"),
])
def test_checkpoints_with_damaged_contents_say_so(run_dir: Path, damage: Any, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = run_dir / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    damage(state)
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"checkpoint {path} is damaged: .*{message}"):
        evaluate(run_dir, episodes=2)
    with pytest.raises(ValueError, match=message):
        PPO(_config(run_dir.parent), resume=run_dir)
    assert cli_main(["eval", str(run_dir), "--episodes", "2"]) == 2
    assert message.split(",")[0] in capsys.readouterr().out


@pytest.mark.parametrize(("edit", "message"), [
    # A config.json edited by hand or by another version: these were a TypeError or AttributeError traceback.
    (lambda record: record["config"].update(n_envs=8), "has config keys ['n_envs'] that PPOConfig does not take"),
    (lambda record: record["config"].update(algo="a2c"), "names algo 'a2c', not one of ppo, grpo"),
    (lambda record: record.update(device=0), "records the device 0, which is not a torch device"),
    (lambda record: record.update(device="tpu"), "records the device 'tpu', which is not a torch device"),
])
def test_resuming_an_edited_config_json_says_what_is_wrong(run_dir: Path, edit: Any, message: str,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    record = json.loads((run_dir / "config.json").read_text())
    edit(record)
    (run_dir / "config.json").write_text(json.dumps(record))
    assert cli_main(["train", "--resume", str(run_dir), "--total-steps", "512"]) == 2
    out = capsys.readouterr().out
    assert f"{run_dir / 'config.json'} " in out and message in out


def test_files_that_are_not_ppo_checkpoints_say_so(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a PPO checkpoint: it holds no 'config'"):
        evaluate(tmp_path / "other.pt", episodes=2)
    make_trainer(tmp_path, iterations=1).learn()
    with pytest.raises(ValueError, match="not a PPO checkpoint: it holds no 'model'"):
        evaluate(tmp_path / "run", episodes=2)


def test_a_checkpoint_of_another_network_names_the_shapes(run_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"torso.*\[16, .*\] there but \[32, .*\] here.*hidden=16 there, 32 here"):
        PPO(_config(run_dir.parent, hidden=32), resume=run_dir)
    with pytest.raises(ValueError, match="env_id='creditgym/Sokoban-6x6-1b-v0', this config has 'creditgym/Sanity"):
        PPO(_config(run_dir.parent, env_id="creditgym/Sanity-Bandit-v0"), resume=run_dir)
    # A checkpoint whose config no longer matches its weights (or an env whose observations changed) fails alike.
    path = run_dir / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    state["config"]["hidden"] = 32
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"{path}.*different network or env.*\[16, .*\] there but \[32"):
        evaluate(run_dir, episodes=2)


# -- 4. a crash-safety audit: signals, concurrent trainers, atomic files, a full disk ------------------------------
def test_sigterm_saves_the_last_update_like_ctrl_c_and_exits_143(tmp_path: Path) -> None:
    """SIGTERM is what SLURM and Kubernetes preemption, `timeout` and `docker stop` send; it ended the process at
    once, losing every update since the last periodic checkpoint, without a word."""
    import os
    import subprocess
    import sys
    import time

    run = tmp_path / "x"
    process = subprocess.Popen(
        [sys.executable, "-m", "creditgym", "train", *CLI_FLAGS, "--runs-dir", str(tmp_path), "--run-name", "x",
         "--total-steps", "10000000", "--checkpoint-every", "100000", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ((run / "metrics.jsonl").exists()
                                                   and len(_rows(run)) >= 2):
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert "SIGTERM: stopping after this update" in err and "continue it with: creditgym train --resume" in out
    saved = torch.load(run / "checkpoint.pt", weights_only=False)["global_step"]
    assert saved == _rows(run)[-1] >= 256


def test_stop_after_update_takes_sigterm_and_sighup_only_while_they_have_their_default_handlers() -> None:
    import os

    from creditgym.agents.runs import StopAfterUpdate

    # Default handlers to start from, whatever the test runner inherited (under nohup, SIGHUP is ignored).
    inherited = {number: signal.signal(number, signal.SIG_DFL) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with StopAfterUpdate() as stop:
            assert signal.getsignal(signal.SIGTERM) == stop.request  # else the kill below would end the tests
            assert signal.getsignal(signal.SIGHUP) == stop.request
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and stop.signum == signal.SIGTERM
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a second SIGTERM stops at once
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL and signal.getsignal(signal.SIGINT) is \
            signal.default_int_handler
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # someone else's handlers are left alone
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with StopAfterUpdate():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGHUP) is \
                signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGHUP) is \
            signal.SIG_IGN
    finally:
        for number, handler in inherited.items():
            signal.signal(number, handler)


def test_a_run_being_trained_refuses_a_second_trainer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two resumes of one run: the second rewrote metrics.jsonl under the first, whose later rows were lost, and
    renamed checkpoints over its."""
    from creditgym.agents.runs import RunLock

    args = ["train", *CLI_FLAGS, "--runs-dir", str(tmp_path), "--run-name", "x", "--total-steps", "256"]
    assert cli_main(args) == 0
    run = tmp_path / "x"
    before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl", "checkpoint.pt")}
    with RunLock(run):  # as the other process holds it
        capsys.readouterr()
        assert cli_main(["train", "--resume", str(run), "--total-steps", "512", "--no-progress"]) == 2
        assert f"{run} is being trained by process" in capsys.readouterr().out.replace("\n", "")
        assert cli_main([*args, "--overwrite"]) == 2
        assert {name: (run / name).read_bytes() for name in before} == before
    assert cli_main(["train", "--resume", str(run), "--total-steps", "512", "--no-progress"]) == 0  # released
    assert _rows(run) == [128, 256, 384, 512]


def test_a_failed_write_leaves_the_previous_file_whole_and_names_the_file(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from creditgym.agents import runs
    from creditgym.agents.evaluate import write_result

    PPO(_config(tmp_path, total_steps=256)).learn()
    run = tmp_path / "run"
    write_result({"success_rate": 0.5}, run)
    before = {name: (run / name).read_bytes() for name in ("eval.json", "checkpoint.pt")}

    def disk_full(*args: Any, **kwargs: Any) -> None:  # torch.save reports a full disk as a RuntimeError
        Path(args[1]).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(runs.torch, "save", disk_full)
    with pytest.raises(OSError, match=rf"cannot write checkpoint {run / 'checkpoint.pt'} .*previous checkpoint.pt, "
                                      r"if any, is intact"):
        runs.write_checkpoint({"x": 1}, run / "checkpoint.pt")
    real_write_text = Path.write_text

    def half_then_full(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        real_write_text(self, text[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError, match=rf"cannot write evaluation result {run / 'eval.json'} \(No space left"):
        write_result({"success_rate": 0.9}, run)
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not list(run.glob("*.tmp"))


def test_a_kept_checkpoint_stays_as_it_was_when_later_checkpoints_replace_the_runs_own(tmp_path: Path) -> None:
    PPO(_config(tmp_path, total_steps=512, checkpoint_every=2, keep_checkpoints=True)).learn()
    run = tmp_path / "run"
    kept = sorted(run.glob("checkpoint-*.pt"))
    assert [p.name for p in kept] == ["checkpoint-256.pt", "checkpoint-512.pt"]
    assert torch.load(kept[0], weights_only=False)["global_step"] == 256
    assert torch.load(run / "checkpoint.pt", weights_only=False)["global_step"] == 512


def test_a_run_whose_config_json_was_lost_resumes_from_its_checkpoints_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", *CLI_FLAGS, "--runs-dir", str(tmp_path), "--run-name", "x", "--total-steps", "256"]
    assert cli_main(args) == 0
    run = tmp_path / "x"
    (run / "config.json").write_text("")  # as a kill mid-write of the old non-atomic write left it
    with pytest.warns(UserWarning, match="config.json is missing or damaged .* read from its checkpoint"):
        assert cli_main(["train", "--resume", str(run), "--total-steps", "512", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["total_steps"] == 512
    assert _rows(run) == [128, 256, 384, 512]


def test_compare_says_when_an_evaluation_file_cannot_be_read(tmp_path: Path) -> None:
    from creditgym.agents.compare import held_out_success

    (tmp_path / "eval.json").write_text("")
    with pytest.warns(UserWarning, match="eval.json cannot be read .* run creditgym eval"):
        assert held_out_success(tmp_path)["held_out_greedy"] is None
