"""PPO: config errors, learning on a sanity env, exact resume, reproducibility, run outputs, masks, interop."""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import creditgym
from creditgym.agents.config_cli import config_from_args
from creditgym.agents.evaluate import evaluate
from creditgym.agents.ppo import PPO, ActorCritic, PPOConfig, sample_actions
from creditgym.cli import main as cli_main


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _config(tmp_path: Path, **overrides) -> PPOConfig:
    values = dict(env_id="creditgym/Sokoban-6x6-1b-v0", num_envs=8, num_steps=16, total_steps=2048,
                  progress=False, tensorboard=False, runs_dir=str(tmp_path), run_name="run", checkpoint_every=0)
    values.update(overrides)
    return PPOConfig(**values)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_envs": 0}, "num_envs must be at least 1"),
        ({"num_envs": 3, "num_steps": 3, "num_minibatches": 4}, "must be divisible by num_minibatches"),
        ({"gamma": 1.5}, "gamma and gae_lambda must be in"),
        ({"policy": "transformer"}, "policy must be auto, cnn or mlp"),
        ({"device": "tpu"}, "device must be auto, cpu or cuda"),
        ({"learned_reward": "eureka"}, "learned_reward must be one of"),
        ({"learned_reward": "prime", "prm_beta": 0.0}, "prm_beta must be positive"),
        # Finite, so no non-finite check would catch them: they throw the weights away.
        ({"learning_rate": 2.0}, r"learning_rate must be in \(0, 1\]"),
        ({"learned_reward": "prime", "learned_reward_lr": 1e6}, r"learned_reward_lr must be in \(0, 1\].*got 1e\+06"),
        ({"learning_rate": 0.0}, r"learning_rate must be in \(0, 1\]"),
        ({"learned_reward": "oprl", "prm_score": "max"}, "prm_score must be sum or mean"),
        ({"activation": "gelu"}, "activation must be one of"),
        ({"precision": "float16"}, "precision must be auto, float32 or bfloat16"),
        ({"shaping": "box_distance", "shaping_scale": 0.0}, "shaping_scale must be a positive number"),
        ({"shaping": "box_distance", "shaping_gamma": 0.0}, "shaping_gamma must be in"),
        # the shaping wrappers refused the agent's discount 0 only once PPO had started
        ({"shaping": "box_distance", "gamma": 0.0}, r"gamma 0 with --shaping needs --shaping-gamma \(e.g. 1"),
        ({"shaping_gamma": 1.0}, r"shaping_gamma \(--shaping-gamma\) only applies with a shaping potential"),
        ({"learned_reward": "spa", "learned_reward_start": -1},
         "learned_reward_start and learned_reward_freeze are env steps"),
        ({"learned_reward": "spa", "learned_reward_freeze": -5},
         "learned_reward_start and learned_reward_freeze are env steps"),
        ({"learned_reward": "spa", "learned_reward_epochs": 0}, "learned_reward_epochs must be at least 1"),
        ({"num_envs": "sixteen"}, "num_envs must be a whole number, got 'sixteen'"),
        ({"num_envs": 16.5}, "num_envs must be a whole number, got 16.5"),
        ({"anneal_lr": "no"}, "anneal_lr must be true or false"),
        ({"env_kwargs": "split=test"}, "env_kwargs must be a mapping"),
        ({"ent_coef": float("nan")}, "ent_coef must be a finite number"),
        ({"seed": None}, "seed must be a whole number, not none"),
        ({"seed": -1}, "seed must be 0 or more"),
        ({"device": "cudax"}, "device must be auto, cpu or cuda"),
        ({"env_id": "nope/Foo-v0"}, "is not registered; `creditgym list` shows the ids"),
        ({"max_grad_norm": -1.0}, r"max_grad_norm \(--max-grad-norm\) must be positive"),
        ({"target_kl": -1.0}, "target_kl must be positive"),
        ({"checkpoint_every": -1}, "checkpoint_every must be 0"),
        ({"cnn_channels": 0}, "cnn_channels must be at least 1"),
        ({"env_kwargs": {"nokey": 1}}, "are not arguments of creditgym/Sokoban-6x6-1b-v0 .SokobanVectorEnv."),
        # PPO passes these to every env itself: they used to end in make_vec's "got multiple values" TypeError.
        ({"env_kwargs": {"device": "cpu"}}, r"env_kwargs \['device'\] are PPO's own settings.*use --device"),
        ({"env_kwargs": {"num_envs": 4}}, r"env_kwargs \['num_envs'\] are PPO's own settings.*use --num-envs"),
        # Settings that did nothing without the option they belong to.
        ({"shaping_scale": 5.0}, r"shaping_scale \(--shaping-scale\) only applies with a shaping potential "
                                 r"\(--shaping\); pass"),
        ({"learned_reward_coef": 2.0, "spa_grounding": 0.5, "prm_beta": 0.1},
         r"learned_reward_coef \(--learned-reward-coef\), spa_grounding \(--spa-grounding\), prm_beta "
         r"\(--prm-beta\) only apply with a learned reward \(--learned-reward\)"),
        ({"learned_reward_freeze": 1000}, r"learned_reward_freeze \(--learned-reward-freeze\) only applies"),
        # ... and settings that the chosen method does not read.
        ({"learned_reward": "prime", "spa_grounding": 0.5},
         r"spa_grounding \(--spa-grounding\) only applies to learned_reward spa, and this run's is prime"),
        ({"learned_reward": "prime", "prm_score": "mean"}, r"prm_score \(--prm-score\) only applies to learned_reward "
                                                           r"oprl"),
        ({"learned_reward": "spa", "learned_reward_freeze": 0}, "learned_reward_freeze 0 freezes the learned reward "
                                                                "model before it trains on any episode"),
        # A budget below one rollout used to train a whole rollout.
        ({"total_steps": 100}, r"total_steps \(100\) is less than one rollout.*at least 8192"),
        # Past float32's range these failed inside the update ("cannot be converted to type float without overflow").
        ({"clip_coef": 1e300}, r"clip_coef \(--clip-coef\) must be in \(0, 1\], got 1e\+300"),
        ({"clip_coef": 1.5}, r"clip_coef \(--clip-coef\) must be in \(0, 1\]"),
        ({"vf_coef": 1e300}, r"vf_coef \(--vf-coef\) is a loss weight: use 0 to 100, got 1e\+300"),
        ({"ent_coef": 1e300}, r"ent_coef \(--ent-coef\) is a loss weight: use 0 to 100"),
        ({"ent_coef": -0.1}, r"ent_coef \(--ent-coef\) is a loss weight: use 0 to 100"),
    ],
)
def test_config_errors_say_what_to_change(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PPOConfig(**overrides)


def test_learns_the_bandit_sanity_env(tmp_path: Path) -> None:
    # Optimal success is 1, random is 0.25: this fails if the policy gradient, sampling or advantages break.
    config = _config(tmp_path, env_id="creditgym/Sanity-Bandit-v0", num_envs=16, num_steps=16, total_steps=20_000,
                     hidden=32)
    metrics = PPO(config).learn()
    assert metrics["charts/success_rate"] >= 0.95


def test_learns_a_fixed_sokoban_level(tmp_path: Path) -> None:
    # Multi-step credit assignment with GAE: one 6x6 level is solved optimally within a few updates.
    from creditgym.envs.sokoban.bank import load_bank
    from creditgym.envs.sokoban.boxoban import write_boxoban
    from creditgym.envs.sokoban.solver import solve

    level = load_bank("6x6-1b")[0]
    write_boxoban(tmp_path / "one.txt", [level])
    config = _config(tmp_path, policy="mlp", num_envs=64, num_steps=32, total_steps=150_000,
                     env_kwargs={"levels": str(tmp_path / "one.txt")})
    metrics = PPO(config).learn()
    assert metrics["charts/success_rate"] >= 0.95
    assert metrics["charts/episodic_length"] <= len(solve(level)) + 2


def test_shaping_gamma_shapes_with_its_own_discount_and_a_myopic_agent_learns(tmp_path: Path) -> None:
    # With gamma 0 only each step's own reward reaches the policy, so this level is learned only if the shaping
    # (at shaping_gamma 1 with the exact potential) pays every step its share of the outcome.
    from creditgym.envs.sokoban.bank import load_bank
    from creditgym.envs.sokoban.boxoban import write_boxoban
    from creditgym.envs.sokoban.solver import solve
    from creditgym.wrappers.shaping import VectorPotentialShaping

    def shaping_discount(trainer: PPO) -> float:
        env = trainer.envs.env
        while not isinstance(env, VectorPotentialShaping):
            env = env.env
        return env.gamma

    assert shaping_discount(PPO(_config(tmp_path, shaping="box_distance", gamma=0.9))) == 0.9
    level = load_bank("6x6-1b")[0]
    write_boxoban(tmp_path / "one.txt", [level])
    config = _config(tmp_path, num_envs=64, num_steps=32, total_steps=150_000, gamma=0.0, shaping_gamma=1.0,
                     shaping="solver_distance_tight", shaping_scale=0.1,
                     env_kwargs={"levels": str(tmp_path / "one.txt"), "rewards": "outcome"})
    trainer = PPO(config)
    assert shaping_discount(trainer) == 1.0
    metrics = trainer.learn()
    assert metrics["charts/success_rate"] >= 0.95
    assert metrics["charts/episodic_length"] <= len(solve(level)) + 2
    sparse = PPO(replace(config, shaping=None, shaping_gamma=None, shaping_scale=1.0, run_name="sparse")).learn()
    assert sparse["charts/success_rate"] < 0.5


def _parameters(trainer: PPO) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.agent.parameters()]


@pytest.mark.parametrize("env_id", ["creditgym/Sokoban-6x6-1b-v0", "creditgym/Sanity-Bandit-v0"])
def test_resume_continues_exactly(tmp_path: Path, env_id: str) -> None:
    straight = PPO(_config(tmp_path, env_id=env_id, run_name="straight"))
    straight.learn()
    interrupted = PPO(_config(tmp_path, env_id=env_id, run_name="interrupted"))
    interrupted.learn(until_steps=1024)
    assert interrupted.global_step == 1024
    resumed = PPO(_config(tmp_path, env_id=env_id, run_name="interrupted"), resume=tmp_path / "interrupted")
    resumed.learn()
    assert resumed.global_step == straight.global_step == 2048
    for a, b in zip(_parameters(straight), _parameters(resumed), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("learned_reward", ["spa", "prime", "oprl"])
def test_resume_with_a_learned_reward_continues_exactly(tmp_path: Path, learned_reward: str) -> None:
    # The reward model's weights, optimiser, replay buffer and half-finished episodes all travel in the checkpoint.
    config = {"learned_reward": learned_reward, "total_steps": 4096,
              **({"spa_grounding": 0.1} if learned_reward == "spa" else {}),  # only SPA reads it
              "env_kwargs": {"obs_mode": "egocentric", "action_mask": True}}
    straight = PPO(_config(tmp_path, run_name="straight", **config))
    straight.learn()
    interrupted = PPO(_config(tmp_path, run_name="interrupted", **config))
    interrupted.learn(until_steps=2048)
    resumed = PPO(_config(tmp_path, run_name="interrupted", **config), resume=tmp_path / "interrupted")
    metrics = resumed.learn()
    assert f"reward/{straight.learned_reward.channel}_per_step" in metrics
    for a, b in zip(_parameters(straight), _parameters(resumed), strict=True):
        assert torch.equal(a, b)
    assert straight.learned_reward.replay.episodes and len(straight.learned_reward.replay.episodes) == len(
        resumed.learned_reward.replay.episodes)


def test_prm_settings_reach_the_grid_prm() -> None:
    from creditgym.agents.ppo import make_learned_reward

    config = PPOConfig(learned_reward="oprl", prm_score="mean", prm_beta=0.2)
    model = make_learned_reward(config, (4,), 2, torch.device("cpu"))
    assert (model.loss_kind, model.score, model.beta) == ("dpo", "mean", 0.2)


@pytest.mark.parametrize("learned_reward", ["spa", "prime"])
def test_learned_reward_pays_from_start_and_stops_training_at_freeze(tmp_path: Path, learned_reward: str) -> None:
    # SPA-RL's pipeline: the model learns from early rollouts, pays nothing until `start`, then stays fixed.
    from creditgym.agents.plots import read_metrics

    config = _config(tmp_path, learned_reward=learned_reward, total_steps=2048, learned_reward_start=1024,
                     learned_reward_freeze=1024, env_kwargs={"obs_mode": "egocentric", "action_mask": True})
    trainer = PPO(config)
    model = trainer.learned_reward
    weights = model.estimator if learned_reward == "spa" else model.network
    initial = [p.detach().clone() for p in weights.parameters()]
    trainer.learn(until_steps=1024)
    at_freeze = [p.detach().clone() for p in weights.parameters()]
    replayed = len(model.replay)
    trainer.learn()
    assert any(not torch.equal(a, b) for a, b in zip(initial, at_freeze, strict=True))  # it trained before freezing
    assert all(torch.equal(a, p) for a, p in zip(at_freeze, weights.parameters(), strict=True))  # and not after
    assert len(model.replay) == replayed > 0
    paid = {row["global_step"]: row[f"reward/{model.channel}_per_step"] for row in read_metrics(trainer.run_dir)}
    assert all(value == 0.0 for step, value in paid.items() if step <= 1024)
    assert all(value != 0.0 for step, value in paid.items() if step > 1024)


def test_learns_a_fixed_sokoban_level_with_spa_rewards(tmp_path: Path) -> None:
    # The learned progress reward rides on top of the env reward without breaking PPO's learning. (At
    # learned_reward_coef=10 it does break: the policy loops through states with positive ĉ instead of solving,
    # since SPA's step rewards are not potential-based; see docs/results.md.)
    from creditgym.envs.sokoban.bank import load_bank
    from creditgym.envs.sokoban.boxoban import write_boxoban

    write_boxoban(tmp_path / "one.txt", [load_bank("6x6-1b")[0]])
    config = _config(tmp_path, num_envs=64, num_steps=32, total_steps=150_000, learned_reward="spa",
                     env_kwargs={"levels": str(tmp_path / "one.txt")})
    trainer = PPO(config)
    metrics = trainer.learn()
    assert metrics["charts/success_rate"] >= 0.95
    assert metrics["progress/mse"] < 0.1  # Σ ĉ predicts the outcome of a level the policy now solves


def test_same_seed_is_bit_identical_and_seeds_differ(tmp_path: Path) -> None:
    runs = [PPO(_config(tmp_path, run_name=f"r{i}", seed=seed)) for i, seed in enumerate((1, 1, 2))]
    for run in runs:
        run.learn()
    first, again, other = (_parameters(run) for run in runs)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_run_directory_holds_config_metrics_events_and_curve(tmp_path: Path) -> None:
    PPO(_config(tmp_path, tensorboard=True, checkpoint_every=4)).learn()
    run = tmp_path / "run"
    record = json.loads((run / "config.json").read_text())
    assert record["seed"] == 1 and record["creditgym"] == creditgym.__version__
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2048 // 128
    for key in ("charts/sps", "losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/approx_kl"):
        assert key in rows[-1]
    finished = [row for row in rows if "charts/episodic_return" in row]
    assert finished and "reward/task" in finished[-1] and "charts/success_rate" in finished[-1]
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "learning_curve.png").stat().st_size > 1000
    assert (run / "checkpoint.pt").exists()


def test_keep_checkpoints_leaves_one_file_per_checkpoint_that_resumes_where_it_was(tmp_path: Path) -> None:
    PPO(_config(tmp_path, checkpoint_every=4)).learn()
    assert not list((tmp_path / "run").glob("checkpoint-*.pt"))
    PPO(_config(tmp_path, run_name="kept", checkpoint_every=4, keep_checkpoints=True)).learn()
    kept = sorted((tmp_path / "kept").glob("checkpoint-*.pt"), key=lambda path: int(path.stem.split("-")[1]))
    assert [path.name for path in kept] == [f"checkpoint-{steps}.pt" for steps in (512, 1024, 1536, 2048)]
    resumed = PPO(_config(tmp_path, run_name="kept"), resume=kept[1])
    assert resumed.global_step == 1024 and resumed.update == 8
    # A kept checkpoint evaluates on its own, and its result lands beside it, not over the run's eval.json.
    assert cli_main(["eval", str(kept[0]), "--episodes", "4"]) == 0
    assert json.loads((tmp_path / "kept" / "eval-checkpoint-512.json").read_text())["episodes"] == 4
    assert not (tmp_path / "kept" / "eval.json").exists()


def test_shared_torso_feeds_both_heads_and_separate_torsos_do_not() -> None:
    obs = torch.randn(16, 6)
    for shared in (True, False):
        agent = ActorCritic((6,), 4, kind="mlp", hidden=8, shared=shared)
        agent(obs)[1].sum().backward()  # the value loss alone
        policy_torso = agent.torso if shared else agent.actor[0]
        reached = [p.grad is not None and p.grad.abs().sum() > 0 for p in policy_torso.parameters()]
        assert all(reached) if shared else not any(reached)
    assert (sum(p.numel() for p in ActorCritic((6,), 4, kind="mlp", hidden=8, shared=True).parameters())
            < sum(p.numel() for p in ActorCritic((6,), 4, kind="mlp", hidden=8, shared=False).parameters()))


def test_bfloat16_autocast_stays_close_to_float32_and_keeps_float32_outputs() -> None:
    torch.manual_seed(0)
    agent = ActorCritic((7, 7, 7), 4, kind="mlp", hidden=64, precision="bfloat16")
    obs = torch.randint(0, 2, (32, 7, 7, 7), dtype=torch.uint8)
    logits, value = agent(obs)
    assert logits.dtype == value.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in agent.parameters())
    agent.bfloat16 = False
    exact_logits, exact_value = agent(obs)
    assert not torch.equal(logits, exact_logits)  # autocast really ran the products in bfloat16
    assert torch.allclose(logits, exact_logits, atol=0.05) and torch.allclose(value, exact_value, atol=0.05)


def test_auto_precision_picks_bfloat16_only_where_it_is_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    from creditgym.agents import ppo

    cpu = torch.device("cpu")
    assert ppo.resolve_precision("float32", cpu) == "float32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert ppo.resolve_precision("auto", cpu) == "bfloat16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    assert ppo.resolve_precision("auto", cpu) == "float32"


def test_checkpoints_from_before_the_network_options_still_load(tmp_path: Path) -> None:
    trainer = PPO(_config(tmp_path, activation="tanh", shared_torso=False, hidden=16, total_steps=256))
    trainer.learn()
    path = trainer.run_dir / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    for name in ("activation", "shared_torso", "precision"):
        del state["config"][name]
    torch.save(state, path)
    assert evaluate(trainer.run_dir, episodes=3)["episodes"] == 3
    # the old checkpoint rebuilds the network it was trained with (separate tanh torsos), not today's defaults
    from creditgym.agents.evaluate import load_policy

    config, agent = load_policy(trainer.run_dir, torch.device("cpu"))
    assert (config.activation, config.shared_torso) == ("tanh", False)
    obs = torch.rand(8, *trainer.envs.single_observation_space.shape) * 2
    trainer.agent.bfloat16 = False  # "auto" precision may train in bfloat16 on this CPU; evaluation runs float32
    with torch.no_grad():
        for got, expected in zip(agent(obs), trainer.agent(obs), strict=True):
            torch.testing.assert_close(got, expected)


def test_masked_actions_are_never_sampled() -> None:
    agent = ActorCritic((4,), 4, kind="mlp", hidden=8)
    mask = torch.tensor([[True, False, False, True]] * 500)
    logits, _ = agent(torch.randn(500, 4), mask)
    actions = sample_actions(logits, torch.Generator().manual_seed(0))
    assert set(actions.tolist()) == {0, 3}


def test_cli_train_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cfg.yaml").write_text("num_envs: 8\nnum_steps: 16\nhidden: 32\n")
    assert cli_main(["train", "--config", str(tmp_path / "cfg.yaml"), "--total-steps", "1024", "--no-progress",
                     "--no-tensorboard", "--runs-dir", str(tmp_path), "--run-name", "cli", "--env",
                     "creditgym/Sokoban-6x6-1b-v0"]) == 0
    record = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert record["config"]["hidden"] == 32 and record["config"]["total_steps"] == 1024
    result = evaluate(tmp_path / "cli", episodes=20)
    assert result["distinct_levels"] == 20 and 0.0 <= result["success_rate"] <= 1.0
    assert (result["seed"], result["device"], result["creditgym"]) == (0, "cpu", creditgym.__version__)
    assert cli_main(["eval", str(tmp_path / "cli"), "--episodes", "10"]) == 0
    assert "success_rate" in capsys.readouterr().out
    assert cli_main(["eval", str(tmp_path / "cli"), "--episodes", "3", "--record", str(tmp_path / "x.jsonl")]) == 0
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 3  # tests/agents/test_ppo_trajectories.py


def test_eval_plays_the_held_out_split_of_the_levels_the_run_trained_on(tmp_path: Path) -> None:
    # It used to play the registered id's shipped bank, whatever levels the run trained on.
    from creditgym.envs.sokoban.bank import load_bank
    from creditgym.envs.sokoban.boxoban import write_boxoban

    folder = tmp_path / "levels"
    for split, shipped in (("train", "train"), ("test", "test")):
        (folder / split).mkdir(parents=True)
        write_boxoban(folder / split / "000.txt", [load_bank("6x6-2b", shipped)[i] for i in range(20)])
    kwargs = {"levels": str(folder), "rewards": {"step": 0.0, "solved": 5.0}}
    PPO(_config(tmp_path, env_kwargs=kwargs, total_steps=256, checkpoint_every=1)).learn()
    result = evaluate(tmp_path / "run", episodes=5)
    assert result["levels"] == str(folder) and result["split"] == "test" and result["distinct_levels"] == 5
    # The run's reward sizes: no step penalty (the default's -0.1 a step would make unsolved returns negative).
    assert result["mean_return"] > -1.0
    with pytest.warns(UserWarning, match="22 episodes but .* has 20 levels, so 2 repeat"):
        assert evaluate(tmp_path / "run", episodes=22)["distinct_levels"] == 20
    flat = tmp_path / "flat"
    flat.mkdir()
    write_boxoban(flat / "000.txt", [load_bank("6x6-2b", "train")[i] for i in range(20)])
    PPO(_config(tmp_path, env_kwargs={"levels": str(flat)}, total_steps=256, checkpoint_every=1,
                run_name="flat")).learn()
    with pytest.warns(UserWarning, match="no held-out split"):
        evaluate(tmp_path / "flat", episodes=3)


def test_a_relative_levels_path_is_saved_absolute_so_eval_from_elsewhere_plays_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It was saved as given, so an eval started in another folder read another file (or none).
    from creditgym.envs.sokoban.bank import load_bank
    from creditgym.envs.sokoban.boxoban import write_boxoban

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "levels" / "test").mkdir(parents=True)
    (work / "levels" / "train").mkdir()
    elsewhere.mkdir()
    for split in ("train", "test"):
        write_boxoban(work / "levels" / split / "000.txt", [load_bank("6x6-2b", split)[i] for i in range(20)])
    monkeypatch.chdir(work)
    config = _config(tmp_path, env_kwargs={"levels": "levels"}, total_steps=256, checkpoint_every=1)
    assert config.env_kwargs["levels"] == str((work / "levels").resolve())
    assert _config(tmp_path, env_kwargs={"levels": "6x6-2b"}).env_kwargs["levels"] == "6x6-2b"  # a shipped bank
    PPO(config).learn()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["env_kwargs"]["levels"] == str(
        (work / "levels").resolve())
    monkeypatch.chdir(elsewhere)
    result = evaluate(tmp_path / "run", episodes=3)
    assert result["levels"] == str((work / "levels").resolve()) and result["distinct_levels"] == 3
    # A run saved before the fix (a relative path) resolves against the folder it is used from, as it did.
    assert _config(tmp_path, env_kwargs={"levels": "levels"}).env_kwargs["levels"] == "levels"


def test_progress_reports_episodes_and_return_on_an_env_without_success(tmp_path: Path) -> None:
    # CartPole reports no success: the bar said "success -" and the summary "no episode finished yet".
    from creditgym.agents.ppo import _Progress
    from creditgym.agents.runs import outcome_text

    metrics = PPO(_config(tmp_path, env_id="CartPole-v1", total_steps=128)).learn()
    assert "charts/success_rate" not in metrics and metrics["charts/episodes"] > 0
    assert outcome_text(metrics) == (f"{metrics['charts/episodes']:,.0f} episodes, mean return "
                                     f"{metrics['charts/episodic_return']:.3g}")
    assert outcome_text({"charts/success_rate": 0.25, "charts/episodes": 4.0}) == "success 25.0%"
    assert outcome_text({"charts/sps": 10.0}) is None
    progress = _Progress(True, total=256, start=0)
    try:
        assert progress.bar is not None and progress.bar.tasks[0].fields["outcome"] == "no episode finished yet"
        progress.advance(128, {"charts/sps": 1.0, "charts/episodes": 12.0, "charts/episodic_return": 20.5})
        assert progress.bar.tasks[0].fields["outcome"] == "12 episodes, mean return 20.5"
        progress.advance(256, {"charts/sps": 1.0})  # an update where none finished keeps the last
        assert progress.bar.tasks[0].fields["outcome"] == "12 episodes, mean return 20.5"
    finally:
        progress.close()


def test_eval_warns_when_it_plays_the_split_the_run_trained_on(tmp_path: Path) -> None:
    PPO(_config(tmp_path, env_kwargs={"split": "test"}, total_steps=256, checkpoint_every=1)).learn()
    with pytest.warns(UserWarning, match="trained on split 'test'.*--split train"):
        evaluate(tmp_path / "run", episodes=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(tmp_path / "run", episodes=3, split="train")


def test_eval_on_an_env_that_does_not_take_the_runs_env_kwargs_says_so(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    PPO(_config(tmp_path, env_kwargs={"obs_mode": "egocentric"}, total_steps=256, checkpoint_every=1)).learn()
    assert cli_main(["eval", str(tmp_path / "run"), "--env", "creditgym/ToolUse-v1"]) == 2  # was a TypeError
    assert "which does not take them" in capsys.readouterr().out.replace("\n", "")


def test_a_text_env_is_refused_with_a_pointer_to_the_llm_trainers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TextSpace observations and TextSpace actions .*--algo grpo"):
        PPO(_config(tmp_path, env_id="creditgym/ToolUse-v1"))


def test_yaml_values_take_their_fields_types(tmp_path: Path) -> None:
    # PyYAML reads 1e-3 as a string and 1.0e+4 as a float; both failed deep inside training.
    (tmp_path / "c.yaml").write_text("learning_rate: 1e-3\ntotal_steps: 1.0e+4\nseed: '7'\n")
    config = config_from_args(PPOConfig, argparse.Namespace(), str(tmp_path / "c.yaml"))
    assert (config.learning_rate, config.total_steps, config.seed) == (0.001, 10_000, 7)
    assert type(config.total_steps) is int and type(config.seed) is int


def test_bad_configs_and_paths_get_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("num_envz: 8\n")
    assert cli_main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown keys ['num_envz']" in capsys.readouterr().out
    assert cli_main(["train", "--num-envs", "0"]) == 2
    assert "num_envs must be at least 1" in capsys.readouterr().out
    # A missing path, a folder that is no run, a run without a checkpoint and one with kept checkpoints only.
    assert cli_main(["eval", str(tmp_path / "nope")]) == 2
    assert "nope does not exist" in capsys.readouterr().out
    assert cli_main(["eval", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().out.replace("\n", "")
    (tmp_path / "config.json").write_text("{}")
    assert cli_main(["eval", str(tmp_path)]) == 2
    assert "saved no checkpoint" in capsys.readouterr().out.replace("\n", "")
    (tmp_path / "checkpoint-8192.pt").write_bytes(b"")
    assert cli_main(["eval", str(tmp_path)]) == 2
    assert "only the kept checkpoint-8192.pt" in capsys.readouterr().out.replace("\n", "")
    assert cli_main(["eval", str(tmp_path / "checkpoint-100.pt")]) == 2
    assert "the checkpoints there: checkpoint-8192.pt" in capsys.readouterr().out.replace("\n", "")


def test_resume_and_eval_refuse_what_they_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    assert cli_main(["train", "--total-steps", "256", "--num-envs", "8", "--num-steps", "16", "--hidden", "16",
                     "--no-progress", "--no-tensorboard", "--runs-dir", str(tmp_path), "--run-name", "r"]) == 0
    capsys.readouterr()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    refused = [
        (["train", "--resume", str(run), "--num-envs", "16"], "--num-envs cannot change when resuming"),
        (["train", "--resume", str(run / "checkpoint.pt")], "--resume takes a run folder"),
        (["train", "--resume", str(run), "--algo", "grpo"], "is a ppo run; resume it without --algo"),
        (["train", "--resume", str(run), "--iterations", "5"],
         "error: --iterations only applies to LLM algos (grpo, drgrpo, rloo, reinforce_pp, ppo_llm); drop them: the "
         "run resumes as PPO (a PPO run's budget is --total-steps)"),
        (["train", "--resume", str(tmp_path / "broken")], "config.json is not valid JSON"),
        (["eval", str(run), "--episodes", "0"], "episodes must be at least 1"),
        (["eval", str(run), "--device", "bogus"], "device must be auto, cpu or cuda"),
        (["eval", str(run), "--env", "nope/X-v0"], "is not registered"),
        (["eval", str(run), "--env", "creditgym/Sanity-Bandit-v0"], "cannot play creditgym/Sanity-Bandit-v0"),
    ]
    for argv, message in refused:
        assert cli_main(argv) == 2, argv
        assert message in capsys.readouterr().out.replace("\n", ""), argv
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["config"]["device"] = "cuda"  # as if trained on a GPU; this machine may have none
    torch.save(state, run / "checkpoint.pt")
    # Each evaluation setting has its own file, so none overwrites the held-out greedy eval.json.
    assert cli_main(["eval", str(run), "--episodes", "4"]) == 0
    assert cli_main(["eval", str(run), "--episodes", "4", "--split", "train", "--sample"]) == 0
    assert json.loads((run / "eval-train-sampled.json").read_text())["greedy"] is False
    assert json.loads((run / "eval.json").read_text())["greedy"] is True


def test_stable_baselines3_trains_on_a_creditgym_env(tmp_path: Path) -> None:
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.logger import configure

    env = gym.make("creditgym/Sokoban-6x6-1b-v0")
    model = sb3.PPO("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.set_logger(configure(str(tmp_path), []))  # SB3's default logger leaves an empty /tmp/SB3-<time> per run
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=2048)
    assert model.num_timesteps >= 2048
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.policy.parameters(), strict=True))


def test_cli_resume_continues_a_run_to_a_longer_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--no-progress", "--no-tensorboard", "--num-envs", "8", "--num-steps", "16"]
    assert cli_main(["train", "--total-steps", "512", "--runs-dir", str(tmp_path), "--run-name", "r", *common]) == 0
    assert cli_main(["train", "--resume", str(tmp_path / "r"), "--total-steps", "1024", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [row["global_step"] for row in rows] == [128 * i for i in range(1, 9)]
    assert cli_main(["train", "--resume", str(tmp_path / "missing")]) == 2
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(tmp_path / "r"), "--no-progress"]) == 0  # already at its budget
    assert "nothing was trained; raise --total-steps" in capsys.readouterr().out.replace("\n", "")
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 8


def test_a_saved_run_with_options_that_did_nothing_still_evaluates_and_resumes(tmp_path: Path) -> None:
    """Runs from before unused options were refused hold them (the examples gave every variant every option).
    They did nothing when the run trained, so eval and resume warn and go on, where a new run is refused."""
    common = ["--no-progress", "--no-tensorboard", "--num-envs", "8", "--num-steps", "16"]
    assert cli_main(["train", "--total-steps", "256", "--runs-dir", str(tmp_path), "--run-name", "old", *common]) == 0
    run = tmp_path / "old"
    record = json.loads((run / "config.json").read_text())
    record["config"]["learned_reward_lr"] = 0.01  # no learned reward: an option of an older example's --config
    (run / "config.json").write_text(json.dumps(record))
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["config"]["learned_reward_lr"] = 0.01
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(ValueError, match="only applies with a learned reward"):
        PPOConfig(**{**record["config"], "device": "cpu"})
    with pytest.warns(UserWarning, match=r"checkpoint.pt: learned_reward_lr \(--learned-reward-lr\) only applies with "
                      r"a learned reward \(--learned-reward\)\. It did nothing when the run trained"):
        assert evaluate(run, episodes=2)["episodes"] == 2
    with pytest.warns(UserWarning, match="config.json: learned_reward_lr"):
        assert cli_main(["train", "--resume", str(run), "--total-steps", "512", "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
