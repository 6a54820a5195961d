"""RewardDesigner (issue 9): the properties of reward-methods.md, "LLM-written reward code".

A program that fails to parse, times out or raises is never selected and gets fitness -inf with its error recorded;
selection is the argmax of fitness; every program is stored with its prompt, model, iteration and fitness. Most
tests draw candidates from `ScriptedChat`, a test double that returns HAND-WRITTEN programs (good, hostile,
unparseable, NaN-returning, raising late); one runs the real transformers back end on a tiny random model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import creditgym  # noqa: F401  (registers the envs)
from creditgym.envs.sokoban.level import Level
from creditgym.wrappers.llm_reward.describe import SOKOBAN_FIELDS, SokobanBatchStates, describe_env
from creditgym.wrappers.llm_reward.designer import (
    CRITIC_PROMPT,
    Candidate,
    DesignerConfig,
    RewardDesigner,
    _DesignProgress,
    extract_code,
    parse_verdict,
)
from creditgym.wrappers.llm_reward.sandbox import SandboxLimits
from creditgym.wrappers.llm_reward.wrapper import VectorLLMCodeReward

torch.set_num_threads(1)
ENV = "creditgym/Sokoban-6x6-2b-v0"
FAST = SandboxLimits(cpu_seconds=1, wall_seconds=3.0, memory_bytes=256 << 20)

# --- hand-written candidate programs (not model output) --------------------------------------------------------
GOOD = '''```python
def targets(board):
    return [[r, c] for r, row in enumerate(board) for c, ch in enumerate(row) if ch in ".*+"]

def distance(state):
    goals = targets(state["board"])
    return sum(min(abs(b[0] - g[0]) + abs(b[1] - g[1]) for g in goals) for b in state["boxes"])

def compute_dense_reward(state, action, next_state):
    closer = 0.1 * (distance(state) - distance(next_state))
    placed = 0.5 * (next_state["boxes_on_target"] - state["boxes_on_target"])
    return closer + placed, {"closer": closer, "placed": placed}
```'''
GOOD_BARE = '''Here is my reward.
def compute_dense_reward(state, action, next_state):
    placed = next_state["boxes_on_target"] - state["boxes_on_target"]
    return 0.3 * placed, {"placed": 0.3 * placed}
I hope this helps!'''
HOSTILE = "```python\nimport os\ndef compute_dense_reward(state, action, next_state):\n    os.system('id')\n" \
          "    return 0.0, {}\n```"
LOOPS = "```python\ndef compute_dense_reward(state, action, next_state):\n    while True:\n        pass\n```"
PROSE = "I am not sure how to write this reward, sorry."
BROKEN = "```python\ndef compute_dense_reward(state, action:\n    return 1\n```"
NAN = "```python\ndef compute_dense_reward(state, action, next_state):\n    return float('nan'), {}\n```"
# Passes the 16-transition dry run, then raises once training has fed it more transitions.
RAISES_LATER = '''```python
SEEN = []

def compute_dense_reward(state, action, next_state):
    SEEN.append(1)
    if len(SEEN) > 100:
        raise RuntimeError("late failure")
    return 0.0, {}
```'''
CANDIDATES = [GOOD, GOOD_BARE, HOSTILE, LOOPS, PROSE, BROKEN, NAN, RAISES_LATER]


class ScriptedChat:
    """Test double: sample k of a design call gets CANDIDATES[k]; the critic fails programs that mention SEEN; asked
    to revise a program (a turn after its design conversation), it returns the program unchanged."""

    model = "scripted-hand-written"

    def __init__(self) -> None:
        self.calls: list[list[list[dict]]] = []

    def generate(self, batch: list[list[dict]], **sampling: object) -> list[str]:
        self.calls.append(batch)
        if batch[0][0]["content"] == CRITIC_PROMPT:
            return ["Looks wrong.\nVERDICT: FAIL" if "SEEN" in m[1]["content"] else "Fine.\nVERDICT: PASS"
                    for m in batch]
        if len(batch[0]) > 2:
            return [messages[-2]["content"] for messages in batch]
        return [CANDIDATES[k % len(CANDIDATES)] for k in range(len(batch))]


def config(tmp_path: Path, **overrides: object) -> DesignerConfig:
    base = {"env_id": ENV, "iterations": 1, "samples": len(CANDIDATES), "dry_run_transitions": 16,
            "train_steps": 1024, "num_envs": 16, "num_steps": 16, "sandbox": FAST, "runs_dir": str(tmp_path),
            "run_name": "design", "ppo_kwargs": {"device": "cpu", "num_minibatches": 2, "update_epochs": 2},
            # Episodes must end inside the 64-step fitness runs whatever the policy does, so that the trajectory
            # analysis always has episodes to report on.
            "env_kwargs": {"obs_mode": "egocentric", "action_mask": True, "max_episode_steps": 30}}
    return DesignerConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def two_iterations(tmp_path_factory: pytest.TempPathFactory) -> tuple[RewardDesigner, ScriptedChat, object]:
    chat = ScriptedChat()
    designer = RewardDesigner(chat, config(tmp_path_factory.mktemp("two"), iterations=2))
    return designer, chat, designer.run()


def test_failures_get_minus_inf_with_recorded_error(two_iterations: tuple) -> None:
    _, _, result = two_iterations
    by_sample = {c.sample: c for c in result.candidates if c.iteration == 0}
    expected_stage = {2: "static", 3: "dry_run", 4: "extract", 5: "static", 6: "dry_run", 7: "train"}
    for sample, stage in expected_stage.items():
        candidate = by_sample[sample]
        assert candidate.fitness == -math.inf
        assert candidate.stages[stage]["passed"] is False and candidate.errors[0].startswith(stage)
    assert "os" in by_sample[2].errors[0]
    assert "CPU time" in by_sample[3].errors[0] or "wall time" in by_sample[3].errors[0]
    assert "nan" in by_sample[6].errors[0].lower()
    assert "late failure" in by_sample[7].errors[0]
    for sample in (0, 1):
        assert math.isfinite(by_sample[sample].fitness) and 0.0 <= by_sample[sample].fitness <= 1.0


def test_selection_is_argmax_and_never_a_failure(two_iterations: tuple) -> None:
    _, _, result = two_iterations
    finite = [c for c in result.candidates if math.isfinite(c.fitness)]
    assert result.best is not None and result.best.fitness == max(c.fitness for c in result.candidates)
    assert result.best in finite and not result.best.errors
    assert result.stage_counts == {"generated": 16, "extract": 14, "critic": 12, "static": 10, "dry_run": 6,
                                   "train": 4}


def test_every_program_stored_with_prompt_model_iteration_fitness(two_iterations: tuple) -> None:
    designer, _, result = two_iterations
    files = sorted((result.run_dir / "candidates").glob("*.json"))
    assert len(files) == len(result.candidates) == 16
    for path in files:
        record = json.loads(path.read_text())
        assert record["model"] == "scripted-hand-written"
        assert record["iteration"] in (0, 1) and record["prompt"][0]["role"] == "system"
        assert record["response"] and "fitness" in record and "errors" in record
        stored = next(c for c in result.candidates if c.id == record["id"])
        # A disqualified candidate's -inf is stored as null, which strict JSON parsers read.
        assert record["fitness"] == (stored.fitness if math.isfinite(stored.fitness) else None)
        assert record["source"] == stored.source
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["stage_counts"] == result.stage_counts and report["best"]["id"] == result.best.id


def test_critic_verdict_recorded_and_feedback_reaches_next_prompt(two_iterations: tuple) -> None:
    designer, chat, result = two_iterations
    late = next(c for c in result.candidates if c.sample == 7)
    assert late.stages["critic"]["verdict"] == "fail" and late.stages["critic"]["passed"] is False
    assert next(c for c in result.candidates if c.sample == 0).stages["critic"]["verdict"] == "pass"
    # not the critic's calls, nor the revision requests (a turn after the design conversation)
    design_calls = [batch for batch in chat.calls if batch[0][0]["content"] != CRITIC_PROMPT and len(batch[0]) == 2]
    first, second = design_calls[0][0][1]["content"], design_calls[1][0][1]["content"]
    assert "best program so far" not in first
    assert "best program so far" in second and "Per-component statistics" in second
    assert "training episodes ended" in second and "avoid these errors" in second
    best_iteration0 = max((c for c in result.candidates if c.iteration == 0), key=lambda c: c.fitness)
    assert best_iteration0.source in second


def test_critic_rejects_when_asked(tmp_path: Path) -> None:
    designer = RewardDesigner(ScriptedChat(), config(tmp_path, samples=len(CANDIDATES), dry_run_transitions=4,
                                                     critic_rejects=True))
    fresh = Candidate(id="x", iteration=0, sample=0, model="m", prompt=[], response=RAISES_LATER)
    candidate = designer.evaluate(fresh, extract_code(RAISES_LATER))
    assert candidate.fitness == -math.inf and candidate.stages["critic"]["passed"] is False
    assert candidate.errors == ["critic: the critic rejected the program"] and "static" not in candidate.stages
    assert (tmp_path / "design" / "candidates" / "x.json").exists()


def test_real_transformers_garbage_survives(tmp_path: Path) -> None:
    from creditgym.llm import HFChatModel, tiny_test_model

    chat = HFChatModel(*tiny_test_model(), max_new_tokens=32)
    designer = RewardDesigner(chat, config(tmp_path, samples=2, max_new_tokens=32, temperature=1.0))
    result = designer.run()
    assert result.stage_counts["generated"] == 2
    assert set(result.stage_counts) == {"generated", "extract", "critic", "static", "dry_run", "train"}
    assert all(c.fitness == -math.inf and c.errors for c in result.candidates) and result.best is None
    # Strict JSON (jq, JavaScript): a disqualified fitness is null, not -Infinity.
    strict = {"parse_constant": lambda name: pytest.fail(f"non-standard JSON constant {name}")}
    stored = [json.loads(p.read_text(), **strict) for p in (result.run_dir / "candidates").glob("*.json")]
    assert len(stored) == 2 and all(r["model"].startswith("HFChatModel") and r["fitness"] is None for r in stored)
    report = json.loads((result.run_dir / "report.json").read_text(), **strict)
    assert report["stage_counts"] == result.stage_counts and set(report["fitness"].values()) == {None}


@pytest.mark.parametrize(("reply", "expected"), [
    ("```python\ndef compute_dense_reward(s, a, n):\n    return 0.0, {}\n```", "return 0.0, {}"),
    ("```\nx = 1\n```\n```py\ndef compute_dense_reward(s, a, n):\n    return 1.0, {}\n```", "return 1.0, {}"),
    ("text\n```python\ndef compute_dense_reward(s, a, n):\n    return 2.0, {}", "return 2.0, {}"),
    (GOOD_BARE, "0.3 * placed}"),
])
def test_extract_code(reply: str, expected: str) -> None:
    code = extract_code(reply)
    assert code is not None and code.rstrip().endswith(expected) and "```" not in code
    assert "hope" not in code and "Here is" not in code


def test_extract_code_none_and_verdicts() -> None:
    assert extract_code(PROSE) is None
    assert parse_verdict("ok\nVERDICT: pass") == "pass"
    assert parse_verdict("VERDICT: PASS\nno wait\nVERDICT: FAIL") == "fail"
    assert parse_verdict("no idea") == "unclear"


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="train_steps"):
        DesignerConfig(train_steps=10)
    with pytest.raises(ValueError, match="batched env"):
        DesignerConfig(env_id="creditgym/Shop-v1")
    with pytest.raises(ValueError, match="seed"):
        DesignerConfig(ppo_kwargs={"seed": 3})
    with pytest.raises(ValueError, match="temperature must be"):
        DesignerConfig(temperature=float("nan"))
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):  # was found only after generating
        DesignerConfig(ppo_kwargs={"device": "bogus"})
    for negative in ({"seed": -1}, {"seeds": (1, -2)}):
        with pytest.raises(ValueError, match="must be ≥ 0"):
            DesignerConfig(**negative)


def test_sokoban_description_matches_state() -> None:
    env = gym.make(ENV)
    env.reset(seed=0)
    assert set(env.unwrapped.state()) == set(SOKOBAN_FIELDS)
    text = describe_env(ENV)
    assert all(f"    {name}: " in text for name in SOKOBAN_FIELDS) and "Task:" in text
    generic = describe_env("creditgym/Shop-v1")
    assert "    page: str" in generic and "Task:" in generic


@pytest.mark.parametrize(("env_id", "kwargs", "says", "never"), [
    (ENV, {}, ["-0.1 per step", "+1 for a box pushed onto a target", "+10 when solved", "after 120 steps"], []),
    ("creditgym/Sokoban-10x10-3b-v0", {}, ["after 200 steps"], ["120"]),
    (ENV, {"rewards": "outcome"}, ["-0.1 per step, +10 when solved;"], ["box pushed"]),
    (ENV, {"rewards": {"solved": 5.0}, "max_episode_steps": 40}, ["+5 when solved", "after 40 steps"], ["+10"]),
])
def test_the_sokoban_task_text_states_this_envs_time_limit_and_rewards(env_id: str, kwargs: dict, says: list[str],
                                                                        never: list[str]) -> None:
    task = describe_env(env_id, kwargs).split("Task: ", 1)[1]
    assert all(part in task for part in says), task
    assert not any(part in task for part in never), task


def test_batch_states_equal_single_env_states_including_final() -> None:
    venv = gym.make_vec(ENV, num_envs=4, vectorization_mode="vector_entry_point", max_episode_steps=12)
    states = SokobanBatchStates(venv.unwrapped)
    venv.reset(seed=0, options={"level_index": torch.arange(4)})
    current = states.observe()
    singles = []
    for i in range(4):
        env = gym.make(ENV).unwrapped
        env.reset(seed=0, options={"level": Level(env.bank.tiles[i])})
        assert env.state() == current[i]
        singles.append(env)
    rng = np.random.default_rng(0)
    for _ in range(12):  # the last step truncates every episode, so next states are rebuilt final boards
        actions = rng.integers(4, size=4)
        _, _, terminated, truncated, _ = venv.step(torch.as_tensor(actions))
        next_states, _ = states.step(actions, (terminated | truncated).numpy())
        for i, env in enumerate(singles):
            env.step(int(actions[i]))
            assert env.state() == next_states[i]
    assert bool(truncated.all())


def test_vector_wrapper_adds_channel_and_keeps_sum() -> None:
    program = extract_code(GOOD)
    venv = gym.make_vec(ENV, num_envs=8, vectorization_mode="vector_entry_point")
    wrapped = VectorLLMCodeReward(venv, program, limits=FAST)
    replaced = VectorLLMCodeReward(gym.make_vec(ENV, num_envs=8, vectorization_mode="vector_entry_point"),
                                   program, limits=FAST, replace_task_reward=True)
    try:
        for env in (wrapped, replaced):
            env.reset(seed=0)
        rng = np.random.default_rng(1)
        for _ in range(20):
            actions = torch.as_tensor(rng.integers(4, size=8))
            _, reward, _, _, info = wrapped.step(actions)
            assert torch.allclose(reward, sum(info["reward_components"].values()))
            _, reward2, _, _, info2 = replaced.step(actions)
            assert torch.allclose(reward2, info2["reward_components"]["llm_reward"])
            assert torch.allclose(reward2, sum(info2["reward_components"].values()))
        assert wrapped.error is None and wrapped.transitions == 160
        assert wrapped.stats.summary()["closer"]["nonzero"] > 0
    finally:
        wrapped.close()
        replaced.close()


def test_progress_bar_counts_candidates_and_shows_the_best_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    progress = _DesignProgress(enabled=True, total=2)
    progress.show("it0-s0: PPO seed 1, 1,024 env steps")
    for fitness in (0.25, -math.inf):
        progress.advance(Candidate(id="c", iteration=0, sample=0, model="m", prompt=[], response="", fitness=fitness))
    progress.close()
    captured = capsys.readouterr()
    assert captured.out == "" and "2/2" in captured.err and "best 0.250" in captured.err
