"""LLM runs play alike however they are batched or where their envs run: a sampled evaluation's episode k does not
depend on --batch-size or --episodes, and a run whose envs step in Ray workers records the env states a local run
records."""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch

from creditgym.agents.llm import LLMPolicy, LLMTrainConfig, LLMTrainer
from creditgym.agents.llm.evaluate import episode_generator, evaluate_llm
from creditgym.distributed import LocalEnvPool
from creditgym.llm import tiny_test_model
from creditgym.trajectories import RUN_TRAJECTORIES, load_trajectories
from tests.agents.llm.helpers import LetterCountEnv

torch.set_num_threads(1)
SOKOBAN = "creditgym/Sokoban-6x6-1b-v0"
LETTERS = "creditgym-tests/LetterCount-v0"
if LETTERS not in gym.registry:
    gym.register(LETTERS, entry_point=LetterCountEnv)


def _policy() -> LLMPolicy:
    """A tiny policy whose replies end at varied lengths: its stop token's logit is raised, so rows leave the batch
    early and the rows after them move up."""
    policy = LLMPolicy(*tiny_test_model(seed=0), max_new_tokens=6)
    stop = torch.tensor([policy.tokenizer.eos_token_id])
    policy.model.get_output_embeddings().register_forward_hook(
        lambda _module, _args, logits: logits.index_add(-1, stop, torch.full((*logits.shape[:-1], 1), 4.0)))
    return policy


def _same_replies(expected: list[Any], actual: list[Any]) -> None:
    """The same tokens; logprobs equal but for float rounding, which moves with the width of the padded batch."""
    assert [g.token_ids for g in expected] == [g.token_ids for g in actual]
    for want, got in zip(expected, actual, strict=True):
        assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(want.logprobs, got.logprobs, strict=True))


# -- sampling: one generator per prompt or episode ----------------------------------------------------------------
def test_a_prompt_sampled_with_its_own_generator_gets_the_same_reply_in_any_batch() -> None:
    policy = _policy()
    prompts = [policy.chat_prompt([{"role": "user", "content": text}]) for text in ("a", "bb cc", "d", "eee f g")]

    def own(rows: list[int]) -> list[Any]:
        generators = [torch.Generator().manual_seed(100 + row) for row in rows]
        return policy.generate([prompts[row] for row in rows], generator=generators)

    together = own([0, 1, 2, 3])
    alone = [own([row])[0] for row in range(4)]
    _same_replies(together, alone)
    _same_replies(together[::-1], own([3, 2, 1, 0]))  # a row's place in the batch changes nothing
    assert len({tuple(g.token_ids) for g in together}) > 1  # the rows did sample apart
    assert len({len(g.token_ids) for g in together}) > 1  # and some stopped before others
    # A one-prompt batch samples alike from the generator or from a list holding it.
    _same_replies([policy.generate(prompts[:1], generator=torch.Generator().manual_seed(100))[0]], alone[:1])
    with pytest.raises(ValueError, match="one per prompt"):
        policy.generate(prompts, generator=[torch.Generator()])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-iteration run folder on each env."""
    folder = tmp_path_factory.mktemp("runs")
    for name, env_id in (("letters", LETTERS), ("sokoban", SOKOBAN)):
        config = LLMTrainConfig(model="tiny", env_id=env_id, iterations=1, num_groups=1, group_size=2, max_turns=2,
                                max_new_tokens=8, runs_dir=str(folder), run_name=name, progress=False,
                                tensorboard=False, checkpoint_every=0, device="cpu")
        LLMTrainer(config, **_tiny(), make_env=LetterCountEnv if env_id == LETTERS else None).learn()
    return {LETTERS: folder / "letters", SOKOBAN: folder / "sokoban"}


def _tiny() -> dict[str, Any]:
    model, tokenizer = tiny_test_model(seed=0)
    return {"model": model, "tokenizer": tokenizer}


def _evaluate(run: Path, episodes: int, batch_size: int, tmp_path: Path) -> tuple[dict[str, Any], list[Any]]:
    path = tmp_path / f"{episodes}-{batch_size}.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the seeds LetterCount trained on; not what is tested
        result = evaluate_llm(run, episodes=episodes, batch_size=batch_size, greedy=False, seed=3, record=path,
                              **_tiny())
    return result, load_trajectories(path)


def _played(episode: Any) -> list[Any]:
    return [(step.action, step.response_ids, step.state) for step in episode.steps]


@pytest.mark.parametrize("env_id", [LETTERS, SOKOBAN])
def test_a_sampled_evaluation_plays_each_episode_alike_whatever_the_batch_size_and_count(
        runs: dict[str, Path], tmp_path: Path, env_id: str) -> None:
    whole, whole_records = _evaluate(runs[env_id], 6, 6, tmp_path)
    for episodes, batch_size in ((6, 2), (6, 4), (3, 3), (5, 1)):
        result, records = _evaluate(runs[env_id], episodes, batch_size, tmp_path)
        assert result["batch_size"] == batch_size  # recorded, as the seed is
        for number, (want, got) in enumerate(zip(whole_records[:episodes], records, strict=True)):
            assert _played(want) == _played(got), f"episode {number} at episodes={episodes} batch_size={batch_size}"
            for step, other in zip(want.steps, got.steps, strict=True):
                assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(step.logprobs, other.logprobs,
                                                                               strict=True))
        if episodes == 6:
            assert {k: v for k, v in result.items() if k not in ("batch_size", "recorded")} == \
                   {k: v for k, v in whole.items() if k not in ("batch_size", "recorded")}
    # The episodes sampled apart from each other (not one stream replayed for each).
    assert len({str(_played(episode)) for episode in whole_records}) == 6


# -- env states from Ray workers ----------------------------------------------------------------------------------
def test_a_local_pool_sends_each_env_state_with_its_result() -> None:
    pool = LocalEnvPool([gym.make(SOKOBAN, obs_mode="text") for _ in range(2)])
    plain = LocalEnvPool([gym.make(SOKOBAN, obs_mode="text") for _ in range(2)])
    reset = pool.reset_many([0, 1], [4, 5], with_state=True)
    assert [result for result, _ in reset] == plain.reset_many([0, 1], [4, 5])
    assert [state for _, state in reset] == [env.unwrapped.state() for env in plain]
    step = pool.step_many([1], ["<answer>up</answer>"], with_state=True)
    assert [result for result, _ in step] == plain.step_many([1], ["<answer>up</answer>"])
    assert step[0][1] == plain[1].unwrapped.state() and step[0][1]["board"]


def _recording_run(tmp_path: Path, name: str, **overrides: Any) -> list[dict[str, Any]]:
    model, tokenizer = tiny_test_model(seed=0)
    config = LLMTrainConfig(model="tiny", env_id=SOKOBAN, iterations=1, num_groups=2, group_size=2, max_turns=2,
                            max_new_tokens=6, runs_dir=str(tmp_path), run_name=name, progress=False,
                            tensorboard=False, checkpoint_every=0, device="cpu", record_trajectories=True,
                            **overrides)
    # gym.make itself, as make_text_env would call it: Ray's workers then need not import the trainer (torch and
    # transformers), which takes longer than the run.
    make_env = functools.partial(gym.make, SOKOBAN, obs_mode="text")
    trainer = LLMTrainer(config, model=model, tokenizer=tokenizer, make_env=make_env)
    try:
        trainer.learn()
    finally:
        trainer.close()
    return [episode.to_dict() for episode in load_trajectories(tmp_path / name / RUN_TRAJECTORIES)]


def test_an_llm_run_on_ray_workers_records_what_a_local_run_records(local_ray: None, tmp_path: Path) -> None:
    local = _recording_run(tmp_path, "local")
    remote = _recording_run(tmp_path, "ray", rollout_backend="ray", num_workers=2)
    assert len(local) == 4 and all(episode["state"] and all(step["state"] for step in episode["steps"])
                                   for episode in local)  # the boards, at reset and after every step
    assert remote == local


def test_each_evaluation_episode_samples_from_a_stream_of_its_seed_and_number() -> None:
    def draws(seed: int, episode: int) -> list[int]:
        generator = episode_generator(torch.device("cpu"), seed, episode)
        return torch.randint(0, 2**31, (4,), generator=generator).tolist()

    assert draws(3, 0) == draws(3, 0)
    assert len({tuple(draws(seed, episode)) for seed in (3, 4) for episode in (0, 1)}) == 4
