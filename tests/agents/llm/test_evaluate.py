"""Evaluating LLM trainer runs: a saved run plays as the live policy did, LoRA, Sokoban's held-out levels, errors."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch

from creditgym.agents.llm import LLMPolicy, LLMTrainConfig, LLMTrainer
from creditgym.agents.llm.evaluate import evaluate_llm, evaluate_policy, is_llm_checkpoint, load_llm_policy
from creditgym.agents.llm.trainer import training_seeds
from creditgym.agents.ppo import PPOConfig
from creditgym.agents.runs import write_checkpoint
from creditgym.envs.sokoban.bank import load_bank
from creditgym.envs.sokoban.boxoban import write_boxoban
from creditgym.envs.sokoban.env import SokobanEnv
from creditgym.llm import tiny_test_model

from .helpers import LetterCountEnv, make_trainer

# A registered id for the helpers' env, whose reward (the share of lower-case letters in each reply) tells apart
# almost any two sets of replies: equal metrics then mean equal episodes.
LETTERS = "creditgym-tests/LetterCount-v0"
if LETTERS not in gym.registry:
    gym.register(LETTERS, entry_point=LetterCountEnv)
SOKOBAN = "creditgym/Sokoban-6x6-1b-v0"
PLAY = {"episodes": 6, "batch_size": 4, "greedy": False, "seed": 3}  # two batches, the second smaller
METADATA = ("run_dir", "env_id", "greedy", "seed", "batch_size", "device", "creditgym", "algo", "model", "iteration",
            "max_turns")


def _tiny() -> dict[str, Any]:
    model, tokenizer = tiny_test_model(seed=0)  # the base every test run starts from
    return {"model": model, "tokenizer": tokenizer}


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key not in METADATA}


def _weights(policy: LLMPolicy) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in policy.model.named_parameters()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> LLMTrainer:
    torch.set_num_threads(1)
    trainer = make_trainer(tmp_path_factory.mktemp("full"), env_id=LETTERS, iterations=2, learning_rate=1e-2,
                           checkpoint_every=1, keep_checkpoints=True)
    trainer.learn()
    return trainer


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> LLMTrainer:
    torch.set_num_threads(1)
    trainer = make_trainer(tmp_path_factory.mktemp("lora"), env_id=LETTERS, iterations=1, lora_rank=4,
                           learning_rate=1e-2)
    trainer.learn()
    return trainer


def test_a_saved_run_plays_as_the_live_policy(full_run: LLMTrainer) -> None:
    _, loaded = load_llm_policy(full_run.run_dir, "cpu", **_tiny())
    trained, fresh = _weights(full_run.policy), _weights(LLMPolicy(*tiny_test_model(seed=0)))
    assert not loaded.model.training and loaded.temperature == full_run.config.temperature
    assert all(torch.equal(value, trained[name]) for name, value in _weights(loaded).items())
    assert any(not torch.equal(value, fresh[name]) for name, value in trained.items())  # training moved them
    for greedy in (False, True):
        saved = evaluate_llm(full_run.run_dir, **{**PLAY, "greedy": greedy}, **_tiny())
        live = evaluate_policy(full_run.policy, full_run.config, **{**PLAY, "greedy": greedy})
        assert _metrics(saved) == live
    assert saved["episodes"] == 6 and 0 < saved["mean_return"] and saved["mean_steps"] == 2  # LetterCount: 2 turns
    assert (saved["algo"], saved["model"], saved["iteration"], saved["env_id"]) == ("grpo", "tiny", 2, LETTERS)
    # A kept checkpoint evaluates its own iteration's weights.
    kept = evaluate_llm(full_run.run_dir / "checkpoint-1.pt", **PLAY, **_tiny())
    assert kept["iteration"] == 1 and _metrics(kept) != _metrics(evaluate_llm(full_run.run_dir, **PLAY, **_tiny()))


def test_record_writes_the_played_episodes_as_trajectory_records(full_run: LLMTrainer, tmp_path: Path) -> None:
    from creditgym.trajectories import load_trajectories, summarize

    path = tmp_path / "eval.jsonl.gz"  # gzip-compressed, as the name ends in .gz
    path.write_text("an older evaluation's file is replaced\n")
    recorded = evaluate_llm(full_run.run_dir, **PLAY, **_tiny(), record=path)
    assert recorded["recorded"] == str(path)
    assert _metrics({k: v for k, v in recorded.items() if k != "recorded"}) == _metrics(
        evaluate_llm(full_run.run_dir, **PLAY, **_tiny()))  # recording changes nothing that is played
    episodes = load_trajectories(path)
    assert [e.metadata["episode"] for e in episodes] == list(range(PLAY["episodes"]))
    assert [e.seed for e in episodes] == [PLAY["seed"] + i for i in range(PLAY["episodes"])]
    assert all(e.env_id == LETTERS and len(e.steps) == 2 for e in episodes)
    assert all(step.response_ids and len(step.logprobs) == len(step.response_ids) for e in episodes for step in e.steps)
    summary = summarize(episodes)
    assert abs(summary["return"] - recorded["mean_return"]) < 1e-9
    assert summary["success"] == recorded["success_rate"] and summary["length"] == recorded["mean_steps"]


def test_a_lora_run_loads_only_its_adapters_and_plays_as_the_live_policy(lora_run: LLMTrainer) -> None:
    saved = torch.load(lora_run.run_dir / "checkpoint.pt", weights_only=False)["trainable"]
    assert saved and all("lora_" in name for name in saved)
    config, loaded = load_llm_policy(lora_run.run_dir, "cpu", **_tiny())
    assert config.lora_rank == 4
    live = _weights(lora_run.policy)
    assert all(torch.equal(value, live[name]) for name, value in _weights(loaded).items())
    assert _metrics(evaluate_llm(lora_run.run_dir, **PLAY, **_tiny())) == evaluate_policy(
        lora_run.policy, lora_run.config, **PLAY)


def test_a_run_trained_on_another_device_evaluates_here(full_run: LLMTrainer, tmp_path: Path) -> None:
    state = torch.load(full_run.run_dir / "checkpoint.pt", weights_only=False)
    state["config"]["device"], state["device"] = "cuda:0", "cuda:0"
    write_checkpoint(state, tmp_path / "checkpoint.pt")
    result = evaluate_llm(tmp_path, **PLAY, **_tiny())
    assert result["device"] == "cpu"
    assert _metrics(result) == _metrics(evaluate_llm(full_run.run_dir, **PLAY, **_tiny()))


def test_sokoban_plays_distinct_held_out_levels_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = LLMTrainConfig(model="tiny", env_id=SOKOBAN, iterations=1, num_groups=1, group_size=2, max_turns=2,
                            max_new_tokens=4, runs_dir=str(tmp_path), run_name="sokoban", progress=False,
                            tensorboard=False, checkpoint_every=0, device="cpu")
    LLMTrainer(config, **_tiny()).learn()
    played: list[bytes] = []
    reset = SokobanEnv.reset

    def recording(self: SokobanEnv, *, seed: int | None = None, options: dict | None = None) -> Any:
        played.append(options["level"].tiles.tobytes())
        return reset(self, seed=seed, options=options)

    monkeypatch.setattr(SokobanEnv, "reset", recording)
    run = tmp_path / "sokoban"
    first = evaluate_llm(run, episodes=5, batch_size=3, seed=0, **_tiny())
    test, train = load_bank("6x6-1b", "test"), load_bank("6x6-1b", "train")
    assert played == [test[i].tiles.tobytes() for i in range(5)]
    assert not set(played) & {train[i].tiles.tobytes() for i in range(len(train))}
    assert (first["split"], first["levels"], first["distinct_levels"], first["mean_steps"]) == ("test", "6x6-1b", 5, 2)
    # Greedy play is deterministic, and the levels do not depend on the seed.
    again = evaluate_llm(run, episodes=5, batch_size=5, seed=7, **_tiny())
    assert played[5:] == played[:5] and _metrics(again) == _metrics(first)
    # A level file plays its levels in order, wrapping when asked for more episodes than it holds.
    write_boxoban(tmp_path / "two.txt", [test[7], test[9]])
    played.clear()
    from_file = evaluate_llm(run, episodes=3, levels=str(tmp_path / "two.txt"), **_tiny())
    assert played == [test[i].tiles.tobytes() for i in (7, 9, 7)]
    assert (from_file["split"], from_file["distinct_levels"]) == ("file", 2)


def _ppo_run(folder: Path) -> Path:
    config = asdict(PPOConfig())
    write_checkpoint({"config": config, "model": {}, "update": 1, "global_step": 8}, folder / "checkpoint.pt")
    (folder / "config.json").write_text(json.dumps({"config": config}))
    return folder


def test_is_llm_checkpoint_tells_the_trainers_apart(full_run: LLMTrainer, tmp_path: Path) -> None:
    assert is_llm_checkpoint(full_run.run_dir) and is_llm_checkpoint(full_run.run_dir / "checkpoint-1.pt")
    assert not is_llm_checkpoint(_ppo_run(tmp_path / "ppo"))
    alone = tmp_path / "copied.pt"  # no config.json beside it: the checkpoint's own config decides
    shutil.copyfile(full_run.run_dir / "checkpoint.pt", alone)
    assert is_llm_checkpoint(alone)
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        is_llm_checkpoint(tmp_path / "missing")


def test_bad_inputs_say_what_to_change(full_run: LLMTrainer, lora_run: LLMTrainer, tmp_path: Path) -> None:
    run = full_run.run_dir
    with pytest.raises(ValueError, match=r"PPO checkpoint.*creditgym\.agents\.evaluate\.evaluate"):
        evaluate_llm(_ppo_run(tmp_path / "ppo"), **_tiny())
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        evaluate_llm(tmp_path / "missing", **_tiny())
    for bad, message in (({"episodes": 0}, "episodes must be a whole number of at least 1"),
                         ({"batch_size": 0}, "batch_size must be"), ({"seed": -1}, "seed must be a whole number"),
                         ({"split": "valid"}, "split must be one of"),
                         ({"env_id": "nope-v0"}, "'nope-v0' is not registered"),
                         ({"levels": "6x6-1b"}, "levels applies to Sokoban ids only"),
                         ({"device": "tpu"}, "device must be auto, cpu or cuda")):
        with pytest.raises(ValueError, match=message):
            evaluate_llm(run, **bad, **_tiny())
    # A LoRA checkpoint whose config lost its lora_rank, and a run loaded into another model.
    state = torch.load(lora_run.run_dir / "checkpoint.pt", weights_only=False)
    state["config"]["lora_rank"] = 0
    write_checkpoint(state, tmp_path / "edited" / "checkpoint.pt")
    with pytest.raises(ValueError, match="holds LoRA adapters, but its config says lora_rank=0"):
        load_llm_policy(tmp_path / "edited", "cpu", **_tiny())
    model, tokenizer = tiny_test_model(num_layers=1)
    with pytest.raises(ValueError, match=r"not this model's: model\.layers\.1\..* is not in this model"):
        load_llm_policy(run, "cpu", model=model, tokenizer=tokenizer)
    model, tokenizer = tiny_test_model(hidden_size=32)
    with pytest.raises(ValueError, match=r"different network.*has shape .*\(the run trained 'tiny' with lora_rank=0"):
        load_llm_policy(run, "cpu", model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="trained from model 'tiny', which does not load here"):
        load_llm_policy(run, "cpu")


def test_evaluation_seeds_the_run_trained_on_are_counted_and_warned_about(full_run: LLMTrainer) -> None:
    # An env without a held-out split: a run trained with --seed S reset its groups with seeds from S * 1,000,003
    # on, so evaluating it from there replayed its training tasks as if they were new
    first = full_run.config.seed * 1_000_003
    with pytest.warns(UserWarning, match=r"evaluation episodes reset .* with seeds the run trained on .* pass --seed"):
        replayed = evaluate_llm(full_run.run_dir, **{**PLAY, "seed": first}, **_tiny())
    assert replayed["episodes_with_training_seeds"] == 2 * full_run.config.num_groups  # 2 iterations' groups
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = evaluate_llm(full_run.run_dir, **{**PLAY, "seed": first + 100}, **_tiny())
    assert fresh["episodes_with_training_seeds"] == 0
    low, high = fresh["success_rate_ci95"]  # Wilson's interval, as the PPO evaluation's
    assert 0 <= low <= fresh["success_rate"] <= high <= 1 and high - low > 0.1  # 6 episodes say little
    # By default the evaluation starts after the training seeds: tasks the run never saw, without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default = evaluate_llm(full_run.run_dir, **{**PLAY, "seed": None}, **_tiny())
    assert default["seed"] == training_seeds(full_run.config).stop and default["episodes_with_training_seeds"] == 0
