"""Every LLM trainer: one step on the tiny model changes the weights with a finite loss; LoRA, KL, resume."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from creditgym.agents.config_cli import saved_run_config
from creditgym.agents.llm import LLMTrainConfig, LLMTrainer
from creditgym.agents.llm import trainer as trainer_module
from creditgym.agents.llm.rollout import Episode

from .helpers import make_trainer

CASES = [
    ("grpo", "episode"), ("grpo", "turn"), ("grpo", "gigpo"), ("drgrpo", "episode"), ("rloo", "turn"),
    ("reinforce_pp", "turn"), ("reinforce_pp", "episode"), ("ppo_llm", "turn"),
]


def _weights(trainer) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {name: p.detach().clone() for name, p in trainer.policy.model.named_parameters()}


@pytest.mark.parametrize(("algo", "advantage"), CASES)
def test_one_step_changes_weights_with_a_finite_loss(tmp_path: Path, algo: str, advantage: str) -> None:
    trainer = make_trainer(tmp_path, algo=algo, advantage=advantage, iterations=1)
    before = _weights(trainer)
    metrics = trainer.learn()
    after = _weights(trainer)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    losses = {k: v for k, v in metrics.items() if k.startswith("losses/")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert metrics["charts/advantage_abs_mean"] > 0
    assert metrics["charts/logprob_diff_max"] < 1e-4
    if algo == "ppo_llm":
        assert trainer.value_head is not None and trainer.value_head.weight.abs().sum() > 0
        assert "losses/value_loss" in metrics


def test_run_dir_has_the_ppo_logging(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, iterations=2, tensorboard=True)
    trainer.learn()
    run = tmp_path / "run"
    record = json.loads((run / "config.json").read_text())
    assert record["seed"] == 1 and record["creditgym"] and record["config"]["algo"] == "grpo"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[-1]["global_step"] > rows[0]["global_step"]
    for key in ("charts/success_rate", "charts/tokens_per_s", "losses/policy_loss", "reward/task"):
        assert key in rows[0]
    assert (run / "learning_curve.png").stat().st_size > 0
    assert (run / "checkpoint.pt").exists() and list(run.glob("events.out.tfevents*"))


def test_keep_checkpoints_leaves_one_file_per_checkpoint(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, iterations=2, checkpoint_every=1, keep_checkpoints=True)
    trainer.learn()
    run = tmp_path / "run"
    assert sorted(path.name for path in run.glob("checkpoint-*.pt")) == ["checkpoint-1.pt", "checkpoint-2.pt"]
    first = torch.load(run / "checkpoint-1.pt", weights_only=False)
    assert first["iteration"] == 1 and torch.load(run / "checkpoint.pt", weights_only=False)["iteration"] == 2


def test_resume_continues_exactly(tmp_path: Path) -> None:
    straight = make_trainer(tmp_path / "a", iterations=2, algo="rloo")
    straight.learn()
    first = make_trainer(tmp_path / "b", iterations=2, algo="rloo")
    first.learn(until_iteration=1)
    resumed = make_trainer(tmp_path / "c", iterations=2, algo="rloo", resume=tmp_path / "b" / "run")
    assert resumed.iteration == 1
    resumed.learn()
    for (name, a), (_, b) in zip(_weights(straight).items(), _weights(resumed).items(), strict=True):
        assert torch.equal(a, b), name


def test_lora_trains_only_adapters_and_uses_the_base_as_reference(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, lora_rank=4, kl_coef=0.1, iterations=1, learning_rate=1e-2)
    before = _weights(trainer)
    metrics = trainer.learn()
    after = _weights(trainer)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("lora_" in name for name in changed)
    assert math.isfinite(metrics["losses/kl_ref"]) and metrics["losses/kl_ref"] >= 0


def test_kl_to_a_frozen_reference_without_lora(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, kl_coef=0.5, iterations=2, learning_rate=1e-2)
    trainer.learn()
    assert trainer.reference is not None
    reference = dict(trainer.reference.model.named_parameters())
    policy = dict(trainer.policy.model.named_parameters())
    assert not all(torch.equal(reference[n], policy[n]) for n in policy)  # the policy moved, the reference did not


@pytest.mark.parametrize(("overrides", "message"), [
    ({"algo": "a2c"}, "algo must be one of"),
    ({"group_size": 1}, "group_size to 2 or more"),
    ({"algo": "rloo", "advantage": "gigpo"}, "use one of those algos"),
    ({"algo": "ppo_llm", "advantage": "episode"}, "set advantage='turn'"),
    ({"temperature": 0.0}, "temperature must be positive"),
    # REINFORCE++-baseline subtracts the group mean: a group of one trained on the KL penalty alone.
    ({"algo": "reinforce_pp", "advantage": "episode", "group_size": 1}, "leaves nothing of a group of one"),
    ({"learning_rate": 10.0}, r"learning_rate must be in \(0, 1\]"),
    ({"history_turns": -1}, "history_turns"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"iterations": "ten"}, "iterations must be a whole number"),
    # It used to fail later with "env_kwargs ['expose_ground_truth'] are not arguments of ...", never passed.
    ({"env_id": "creditgym/Sokoban-6x6-1b-v0", "learned_reward": "igpo", "advantage": "turn"},
     "igpo needs an env that can hand the trainer its ground-truth answer"),
    # LoRA scales its update by alpha / rank: 0 trained nothing, and both were accepted.
    ({"lora_rank": 8, "lora_alpha": 0}, r"lora_alpha \(--lora-alpha\) must be positive.*got 0"),
    ({"lora_rank": 8, "lora_alpha": -16}, r"lora_alpha \(--lora-alpha\) must be positive.*got -16"),
    # Learned-reward settings did nothing without a learned reward.
    ({"prm_beta": 0.1}, r"prm_beta \(--prm-beta\) only applies with a learned reward \(--learned-reward\)"),
    ({"learned_reward_coef": 2.0, "spa_grounding": 0.5},
     r"learned_reward_coef \(--learned-reward-coef\), spa_grounding \(--spa-grounding\) only apply with a learned "
     r"reward"),
    # Past float32's range these failed inside the update.
    ({"clip_coef": 1e300}, r"clip_coef \(--clip-coef\) must be in \(0, 1\]"),
    ({"kl_coef": 1e300}, r"kl_coef \(--kl-coef\) is a loss weight: use 0 to 100"),
    ({"vf_coef": -1.0}, r"vf_coef \(--vf-coef\) is a loss weight: use 0 to 100"),
    ({"max_grad_norm": 0.0}, r"max_grad_norm \(--max-grad-norm\) must be positive"),
    ({"weight_decay": 1e300}, r"weight_decay \(--weight-decay\) must be in \[0, 1\]"),
])
def test_config_errors_say_what_to_change(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLMTrainConfig(**overrides)


@pytest.mark.parametrize("overrides", [{"prm_beta": 0.1}, {"learned_reward": "prime", "spa_grounding": 0.5}])
def test_a_saved_runs_options_that_did_nothing_warn_instead(overrides: dict) -> None:
    """Eval and resume build a finished run's config inside `saved_run_config`: what did nothing is named, not
    refused."""
    with saved_run_config("runs/x/config.json"), pytest.warns(UserWarning, match=r"runs/x/config.json: .*only appl"):
        config = LLMTrainConfig(**overrides)
    assert all(getattr(config, name) == value for name, value in overrides.items())
    with pytest.raises(ValueError, match="only appl"):  # outside it, refused as ever
        LLMTrainConfig(**overrides)


def test_a_relative_levels_path_is_saved_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Saved as given, a later eval or resume from another folder would read another file.
    from creditgym.envs.sokoban.bank import BANK_DIR

    (tmp_path / "mine.txt").write_text((BANK_DIR / "6x6-1b-train.txt").read_text())
    monkeypatch.chdir(tmp_path)
    assert LLMTrainConfig(env_kwargs={"levels": "mine.txt"}).env_kwargs["levels"] == str((tmp_path / "mine.txt")
                                                                                         .resolve())
    assert LLMTrainConfig(env_kwargs={"levels": "6x6-1b"}).env_kwargs["levels"] == "6x6-1b"
    assert LLMTrainConfig(env_kwargs={"levels": "missing.txt"}).env_kwargs["levels"] == "missing.txt"


def test_the_discount_defaults_to_each_advantage_reference_value() -> None:
    assert LLMTrainConfig(advantage="gigpo").gamma == 0.95  # verl-agent's GiGPO step returns
    assert LLMTrainConfig(advantage="turn").gamma == 1.0
    assert LLMTrainConfig(advantage="gigpo", gamma=1.0).gamma == 1.0
    with pytest.raises(ValueError, match="gamma must be in"):
        LLMTrainConfig(gamma=0.0)


def test_reward_wrappers_apply_unchanged_to_text_envs(tmp_path: Path) -> None:
    # PBRS on Sokoban's text view, through the LLM trainer: the shaping channel reaches the logs next to task.
    import json

    import gymnasium as gym

    from creditgym.agents.llm import LLMTrainConfig, LLMTrainer
    from creditgym.llm import tiny_test_model
    from creditgym.wrappers.shaping import PotentialShaping

    def make_env() -> gym.Env:
        return PotentialShaping(gym.make("creditgym/Sokoban-6x6-1b-v0", obs_mode="text"), "box_distance", 0.99)

    model, tokenizer = tiny_test_model(seed=0)
    config = LLMTrainConfig(model="tiny", env_id="creditgym/Sokoban-6x6-1b-v0", iterations=1, num_groups=1,
                            group_size=2, max_turns=2, max_new_tokens=4, runs_dir=str(tmp_path), run_name="pbrs",
                            progress=False, tensorboard=False, checkpoint_every=0, device="cpu")
    LLMTrainer(config, model=model, tokenizer=tokenizer, make_env=make_env).learn()
    row = json.loads((tmp_path / "pbrs" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"reward/task", "reward/format", "reward/shaping"} <= set(row)


def test_prompts_too_long_for_any_generation_give_a_clear_error(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_prompt_tokens=4)
    with pytest.raises(ValueError, match="raise --max-prompt-tokens"):
        trainer.learn()


def test_an_unknown_env_fails_before_the_model_loads(tmp_path: Path) -> None:
    config = LLMTrainConfig(model="no-such-model", env_id="nope-v0", runs_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="'nope-v0' is not registered"):
        LLMTrainer(config)
    with pytest.raises(ValueError, match=r"env_kwargs \['nokey'\] are not arguments"):
        LLMTrainer(replace(config, env_id="creditgym/Sanity-WordBandit-v0", env_kwargs={"nokey": 1}))


def test_an_episode_that_never_played_leaves_its_groups_baseline_alone(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An episode whose first prompt was too long has no tokens; packed as a group member with return 0 it moved
    every other member's GRPO advantage (and PRIME's accuracy filter) as a failure would."""
    trainer = make_trainer(tmp_path, iterations=1)
    real_collect, packed = trainer.collector.collect, []

    def collect(*args, **kwargs):
        episodes = real_collect(*args, **kwargs)
        return [*episodes, Episode(group=0, seed=episodes[0].seed, instructions="", truncated=True,
                                   final_observation="turn 0")]

    def pack(episodes, *args, **kwargs):
        packed.append(list(episodes))
        return real_pack(episodes, *args, **kwargs)

    real_pack = trainer_module.pack_episodes
    monkeypatch.setattr(trainer.collector, "collect", collect)
    monkeypatch.setattr(trainer_module, "pack_episodes", pack)
    metrics = trainer.learn()
    assert len(packed) == 1 and len(packed[0]) == 8 and all(ep.turns for ep in packed[0])
    assert metrics["charts/unplayed_episodes"] == 1 and metrics["charts/trained_episodes"] == 8


def test_ppo_llm_bootstraps_cut_episodes_from_the_value_of_their_next_prompt(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make_trainer(tmp_path, algo="ppo_llm", advantage="turn", max_turns=1, iterations=1)
    assert trainer.value_head is not None
    with torch.no_grad():  # a zero head would give 0 whatever it read
        trainer.value_head.weight.normal_(generator=torch.Generator().manual_seed(0))
    seen = []
    real = trainer_module.advantages

    def spy(config, batch, **kwargs):
        assert all(prompt is not None for prompt in batch.next_prompts)  # 2-turn episodes cut after 1 turn
        with torch.no_grad():  # the weights the update starts from
            hidden = trainer.policy.prompt_end_hidden(batch.next_prompts, batch_size=8)
            seen.append((kwargs["bootstrap_values"], trainer.value_head(hidden).squeeze(-1)))
        return real(config, batch, **kwargs)

    monkeypatch.setattr(trainer_module, "advantages", spy)
    trainer.learn()
    (bootstrap, expected), = seen
    assert bootstrap is not None and bootstrap.abs().max() > 1e-3
    torch.testing.assert_close(bootstrap, expected, atol=1e-5, rtol=1e-4)


def test_a_run_saved_before_turn_normalization_resumes_as_it_trained() -> None:
    from creditgym.agents.llm.config import saved_before_fields

    old = {"algo": "grpo", "advantage": "turn", "learned_reward": "igpo", "env_id": "creditgym/ToolUse-v1",
           "model": "tiny"}
    assert LLMTrainConfig(**old).turn_normalization == "rewards"  # the new default with igpo
    assert LLMTrainConfig(**saved_before_fields(old)).turn_normalization == "returns"  # what it trained with
    new = {**old, "turn_normalization": "rewards"}
    assert saved_before_fields(new) == new
    episode = {"algo": "grpo", "advantage": "episode", "model": "tiny"}
    assert saved_before_fields(episode) == episode  # nothing to normalise per turn: left alone


def test_the_advantage_defaults_to_turn_where_episode_would_be_refused() -> None:
    """ppo_llm and the per-turn learned rewards (spa, igpo) need turn advantages: the default used to be episode,
    which refused `--algo ppo_llm` and `--learned-reward igpo` as the README wrote them."""
    assert LLMTrainConfig(model="tiny").advantage == "episode"
    assert LLMTrainConfig(model="tiny", algo="ppo_llm").advantage == "turn"
    assert LLMTrainConfig(model="tiny", learned_reward="spa").advantage == "turn"
    igpo = LLMTrainConfig(model="tiny", env_id="creditgym/ToolUse-v1", learned_reward="igpo")
    assert (igpo.advantage, igpo.turn_normalization) == ("turn", "rewards")
    assert LLMTrainConfig(model="tiny", learned_reward="prime").advantage == "episode"  # sets its own advantages
