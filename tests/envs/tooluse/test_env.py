"""ToolUseEnv: tasks and plans, tool turns and their ToolRL reward, errors, answers, expert and random play."""

from __future__ import annotations

import copy
import json
import pickle

import gymnasium as gym
import numpy as np
import pytest

import creditgym  # noqa: F401  (registers the ids)
from creditgym.envs.tooluse import tasks as tasks_module
from creditgym.envs.tooluse import world as world_module
from creditgym.envs.tooluse.env import TEST_WORLD_OFFSET, ToolUseEnv
from creditgym.envs.tooluse.expert import ToolUseExpert
from creditgym.envs.tooluse.reward import answer_matches
from creditgym.envs.tooluse.tasks import FAMILIES, WORLD_FREE, Task, generate_task, question_split
from creditgym.envs.tooluse.tools import Call, run_tool
from creditgym.envs.tooluse.world import World


def _call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def _turn(*calls: Call) -> str:
    return "".join(f"<tool_call>{json.dumps(call.to_dict())}</tool_call>" for call in calls)


def _task(family: str, *, where=lambda task: True) -> Task:
    """The first task of `family` (train split, world 0) that satisfies `where`."""
    rng, calls = np.random.default_rng(0), next(n for n, fs in FAMILIES.items() if family in {f.__name__ for f in fs})
    tasks = (generate_task(rng, 0, min_calls=calls, max_calls=calls) for _ in range(2000))
    return next(task for task in tasks if task.family == family and where(task))


def _episode(env: gym.Env, policy, seed: int) -> tuple[float, dict, int]:
    env.reset(seed=seed)
    total, steps, terminated, truncated = 0.0, 0, False, False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(policy(env))
        total += reward
        steps += 1
    return total, info, steps


@pytest.mark.parametrize("env_id", ["creditgym/ToolUse-v1", "creditgym/ToolUse-Easy-v1", "creditgym/ToolUse-Hard-v1"])
def test_expert_succeeds(env_id: str) -> None:
    env, expert = gym.make(env_id), ToolUseExpert(think=True)
    results = [_episode(env, expert, seed) for seed in range(50)]
    assert np.mean([info["success"] for _, info, _ in results]) >= 0.95
    for total, info, steps in results:
        plan = info["reference_plan"]
        assert steps == len(plan) + 1  # one turn per plan turn, then the answer
        assert total == pytest.approx(1.0 + 0.05 * 4 * len(plan))  # every turn an exact ToolRL match


def test_random_and_garbage_policies_score_near_zero() -> None:
    env, rng = gym.make("creditgym/ToolUse-v1"), np.random.default_rng(0)
    tools = [_call("calculator", expression="2 + 2"), _call("date_add", date="2024-01-01", days=3),
             _call("query_inventory", color="red"), "<answer>42</answer>", "<answer>Oslo</answer>", "", "hello"]
    results = [_episode(env, lambda _: tools[rng.integers(len(tools))], seed) for seed in range(100)]
    assert np.mean([info["success"] for _, info, _ in results]) <= 0.05
    assert np.mean([info["reward_components"]["task"] for _, info, _ in results]) <= 0.05
    garbage = [_episode(env, lambda _: "".join(rng.choice(list("<>{}answer tool_call"), 20)), s) for s in range(10)]
    assert all(total < 0 and not info["success"] for total, info, _ in garbage)


def test_every_family_generates_consistent_tasks() -> None:
    rng = np.random.default_rng(0)
    for calls, families in FAMILIES.items():
        for _ in range(30):
            task = generate_task(rng, 3, min_calls=calls, max_calls=calls)
            assert task.num_calls == calls and task.family in {f.__name__ for f in families}
            assert task.question.endswith("?")
            if task.plan[-1][0].name != "query_inventory":  # replaying the last call reproduces the answer
                result = run_tool(task.plan[-1][0], World.get(3))
                assert any(answer_matches(str(value), task.answer) for value in result.values())


def test_tool_turn_returns_results_and_errors_as_observations() -> None:
    env = ToolUseEnv(min_calls=1, max_calls=1)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(
        _call("calculator", expression="__import__('os')") + _call("calculator", expression="6 * 7")
    )
    assert not info["invalid_action"] and info["tool_errors"] == 1 and not terminated
    blocks = obs.split("</tool_response>")
    assert '"error": "calculator: unknown function' in blocks[0] and '"result": 42' in blocks[1]
    assert env.state()["turns"][0]["results"][1] == {"content": {"result": 42}}
    assert set(info["reward_components"]) == {"task", "tool", "format"} and reward == info["reward_components"]["tool"]


@pytest.mark.parametrize(
    ("action", "message", "tool_penalty"),
    [
        ("<tool_call>{not json}</tool_call>", "not valid JSON", True),
        (_call("web_search", query="x"), "unknown tool 'web_search'", True),
        (_call("calculator", expr="1"), "no argument 'expr'", True),
        (_call("convert_units", value="3", from_unit="lb", to_unit="kg"), "must be a finite number", True),
        ("The answer is 42.", "no <tool_call>", False),
        ("<answer></answer>", "answer is empty", False),
    ],
)
def test_invalid_actions_explain_penalise_and_change_nothing(action: str, message: str, tool_penalty: bool) -> None:
    env = ToolUseEnv()
    env.reset(seed=1)
    env.step(ToolUseExpert()(env))
    before = env.state()
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["invalid_action"] and "Invalid action" in obs and message in obs and "Question: " in obs
    assert env.state() == before and not (terminated or truncated)
    tool = pytest.approx(-0.15 if tool_penalty else 0.0)
    assert info["reward_components"] == {"task": 0.0, "tool": tool, "format": -0.1}
    assert "reference_plan" not in info


def test_reference_plan_is_revealed_only_at_the_end() -> None:
    env = gym.make("creditgym/ToolUse-Hard-v1")
    _, info = env.reset(seed=2)
    assert "reference_plan" not in info and "reference_answer" not in info
    assert {"instructions", "tools", "question"} <= set(info) and len(info["tools"]) == 6
    assert "query_inventory" in info["instructions"]
    expert = ToolUseExpert()
    for _ in range(len(env.unwrapped.task.plan)):
        *_, info = env.step(expert(env))
        assert "reference_plan" not in info
    obs, reward, terminated, _, info = env.step("<answer>-1</answer>")
    assert terminated and not info["success"] and info["reference_answer"] == env.unwrapped.task.answer_text()
    assert "incorrect; the expected answer was" in obs and info["reward_components"]["task"] == 0.0
    capped = ToolUseEnv(max_invalid_actions=3)
    capped.reset(seed=3)
    for step in range(3):
        *_, truncated, info = capped.step("<think>hmm</think>")
        assert ("reference_plan" in info) == (step == 2) == truncated


def test_tool_reward_prefers_the_plan_and_penalises_extra_calls() -> None:
    env = ToolUseEnv(min_calls=2, max_calls=2)
    env.reset(seed=4)
    plan = env.task.plan
    first = plan[0][0]
    mangled = {key: (value + "x" if isinstance(value, str) else value) for key, value in first.arguments.items()}
    partial = env.step(f"<tool_call>{json.dumps({'name': first.name, 'arguments': mangled})}</tool_call>")[1]
    assert -0.15 < partial < 0.2  # same tool and keys, some values wrong
    env.reset(seed=4)
    expert = ToolUseExpert()
    assert [env.step(expert(env))[1] for _ in plan] == [pytest.approx(0.2)] * len(plan)
    assert env.potential() == 1.0
    assert {call.name for turn in plan for call in turn} == {"query_inventory"}
    # The calculator shares no tool with this plan: ToolRL's -3, plus 1 for a clean format.
    assert env.step(_call("calculator", expression="1 + 1"))[1] == pytest.approx(0.05 * (1 - 3))
    assert env.step("Sure! " + _call("calculator", expression="1 + 1"))[1] == pytest.approx(0.05 * (0 - 3))
    assert env.step(_turn(*plan[0]))[1] == 0.0  # a repeat of a plan turn improves on nothing
    assert env.potential() == 1.0


def test_tool_results_restate_the_question() -> None:
    # With the LLM trainer's default history of 2 turns, the question was gone from the prompt by the third turn.
    env, expert = ToolUseEnv(min_calls=4, max_calls=4), ToolUseExpert()
    env.reset(seed=0)
    for _ in env.task.plan:
        obs = env.step(expert(env))[0]
        assert obs.endswith(f"</tool_response>\nQuestion: {env.task.question}\nCall more tools or give your <answer>.")


def test_a_call_sharing_no_tool_with_the_plan_is_not_progress() -> None:
    # Every call turn used to use up a plan turn: shaping on potential() paid junk calls as much as the expert's,
    # and the exact plan afterwards scored against the wrong turns.
    env = ToolUseEnv(min_calls=3, max_calls=3)
    env.reset(seed=0)
    plan = env.task.plan
    assert "date_diff" not in {call.name for turn in plan for call in turn}
    for _ in range(3):
        junk = env.step(_call("date_diff", start_date="2020-01-01", end_date="2020-01-02"))[1]
        assert junk == pytest.approx(0.05 * (1 - 3)) and env.potential() == 0.0
    assert [env.step(_turn(*turn))[1] for turn in plan] == [pytest.approx(0.2)] * len(plan)
    assert env.potential() == 1.0


def test_a_retry_pays_only_what_it_adds_to_the_plan_turn() -> None:
    env = ToolUseEnv()
    env.reset(options={"task": _task("cheapest_in_currency")})
    (query,), (convert,) = env.task.plan
    typo = Call(convert.name, {**convert.arguments, "to_currency": "EURO"})  # a tool error; 2 of 3 values right
    rewards = [env.step(_turn(call))[1] for call in (query, typo, convert)]
    partial = 1 + 6 * (1 + 1 + 2) / (1 + 1 + 3) - 3  # format + ToolRL: names 1, keys 1, 2 values of S_max 5
    assert rewards == [pytest.approx(0.2), pytest.approx(0.05 * partial), pytest.approx(0.05 * (4 - partial))]
    assert sum(rewards) == pytest.approx(0.4)  # what the exact plan alone earns (was 0.2 + 0.14 - 0.1)
    assert env.potential() == 1.0
    assert [env.step(_turn(call))[1] for call in (typo, convert, query)] == [0.0, 0.0, 0.0]  # nothing new


def test_the_potential_is_the_mean_best_score_of_the_plan_turns() -> None:
    env = ToolUseEnv()
    env.reset(options={"task": _task("cheapest_in_currency")})
    (query,), (convert,) = env.task.plan
    env.step(_turn(Call(convert.name, {**convert.arguments, "to_currency": "EURO"})))
    partial = 1 + 6 * 4 / 5 - 3
    assert env.potential() == pytest.approx((partial + 3) / 7 / 2)
    assert env.state()["plan_turns_matched"] == 1
    env.step("Now: " + _turn(query))  # the right call without the format point: 3 of 4
    assert env.potential() == pytest.approx(((partial + 3) / 7 + 6 / 7) / 2)


def test_calls_split_over_turns_add_up_to_the_plan_turn() -> None:
    # larger_stock's plan is one turn of two look-ups; making them one per turn used to pay 0.05, then -0.1.
    env = ToolUseEnv()
    env.reset(options={"task": _task("larger_stock")})
    ((first, second),) = env.task.plan
    rewards = [env.step(_turn(call))[1] for call in (first, second, first, second)]
    # alone, each scores format 1 + ToolRL 6 * (1/2 + 1 + 3) / 9 - 3 = 1; the second adds nothing over the first
    assert rewards == [pytest.approx(0.05), 0.0, 0.0, 0.0]
    assert env.step(_turn(first, second))[1] == pytest.approx(0.05 * (4 - 1))  # the whole turn adds the rest


def test_potential_counts_matched_plan_turns() -> None:
    env, expert = ToolUseEnv(min_calls=4, max_calls=4), ToolUseExpert()
    env.reset(seed=5)
    potentials = [env.potential()]
    for _ in env.task.plan:
        env.step(expert(env))
        potentials.append(env.potential())
    assert potentials == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_same_seed_gives_different_tasks_on_the_two_splits() -> None:
    # Half the families never read the world, so test tasks used to repeat train tasks: 30% with the same seed.
    train, test = ToolUseEnv(), ToolUseEnv(split="test")
    for seed in range(200):
        train.reset(seed=seed)
        test.reset(seed=seed)
        assert train.task.to_dict() | {"world": 0} != test.task.to_dict() | {"world": 0}


def test_world_free_questions_belong_to_one_split() -> None:
    questions: dict[str, set[str]] = {}
    for split in ("train", "test"):
        env = ToolUseEnv(min_calls=1, max_calls=3, split=split)
        questions[split] = set()
        for seed in range(400):
            env.reset(seed=seed)
            if env.task.family in {family.__name__ for family in WORLD_FREE}:
                assert question_split(env.task.question) == split
                questions[split].add(env.task.question)
    assert len(questions["test"]) > 100 and not questions["train"] & questions["test"]
    test_share = np.mean([question_split(question) == "test" for question in questions["train"] | questions["test"]])
    assert 0.3 < test_share < 0.7  # about half here: 400 draws of each split


@pytest.mark.parametrize("family", [family for families in FAMILIES.values() for family in families],
                         ids=lambda family: family.__name__)
def test_world_free_lists_exactly_the_families_that_ignore_the_world(family) -> None:
    # A family that reads no world must be split by its question; one that does is split by its world.
    same = []
    for seed in range(20):
        drawn = []
        for world in (1, TEST_WORLD_OFFSET + 1):
            try:
                drawn.append(family(np.random.default_rng(seed), World.get(world)))
            except tasks_module._Retry:
                drawn.append(None)
        same.append(drawn[0] == drawn[1])
    assert all(same) == (family in WORLD_FREE)


def test_a_family_that_cannot_give_a_task_of_the_split_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def fixed(rng: np.random.Generator, world: World) -> tuple:
        return "What is 1% of 1?", 0.01, ((Call("calculator", {"expression": "1 * 1 / 100"}),),)

    monkeypatch.setitem(tasks_module.FAMILIES, 1, (fixed,))
    monkeypatch.setattr(tasks_module, "WORLD_FREE", frozenset({fixed}))
    split = question_split("What is 1% of 1?")
    other = "test" if split == "train" else "train"
    assert generate_task(np.random.default_rng(0), 0, min_calls=1, max_calls=1, split=split).family == "fixed"
    with pytest.raises(RuntimeError, match=f"task family 'fixed' gave no usable {other} task in world 0 after"):
        generate_task(np.random.default_rng(0), 0, min_calls=1, max_calls=1, split=other)
    with pytest.raises(ValueError, match="split must be one of"):
        generate_task(np.random.default_rng(0), 0, split="validation")


def test_splits_use_disjoint_worlds() -> None:
    train, test = ToolUseEnv(), ToolUseEnv(split="test")
    worlds = {}
    for name, env in (("train", train), ("test", test)):
        worlds[name] = {env.reset(seed=seed) and env.task.world for seed in range(20)}
    assert max(worlds["train"]) < 16 <= TEST_WORLD_OFFSET <= min(worlds["test"])


def test_counts_must_be_exact_and_money_keeps_its_tolerance() -> None:
    # 0.5% of every number used to be accepted: an off-by-one day count passed on 68% of date_span tasks.
    env = ToolUseEnv()
    days = _task("date_span", where=lambda task: task.answer >= 200)  # where 0.5% is a whole day or more
    assert days.exact
    for answer, success in ((days.answer + 1, False), (days.answer - 1, False), (days.answer, True)):
        env.reset(options={"task": days})
        assert env.step(f"<answer>{answer} days</answer>")[4]["success"] is success
    money = _task("currency", where=lambda task: task.answer >= 100)
    assert not money.exact
    env.reset(options={"task": money})
    assert env.step(f"<answer>{money.answer * 1.004:.2f}</answer>")[4]["success"]
    families = [family.__name__ for families in FAMILIES.values() for family in families]
    assert {family for family in families if _task(family).exact} == {"date_span", "whole_weeks", "stock",
                                                                       "total_stock"}
    assert "Counts (days, weeks, items in stock) must be exact" in env.instructions
    assert "0.5% or 0.01, whichever is larger" in env.instructions


def test_the_world_cache_keeps_only_the_most_recently_used_worlds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every world built used to stay: 10,000 worlds took about 0.8 GB in each process.
    monkeypatch.setattr(world_module, "MAX_CACHED_WORLDS", 3)
    monkeypatch.setattr(World, "_cache", type(World._cache)())
    first = World.get(900)
    for index in (901, 902, 900, 903):  # 900 is used again, so 901 is the oldest when 903 comes
        World.get(index)
    assert sorted(index for _, index in World._cache) == [900, 902, 903]
    assert World.get(900) is first
    assert World.get(901).rows == World(901).rows  # an evicted world comes back the same


def test_copies_and_same_seed_continue_identically() -> None:
    env, expert = ToolUseEnv(min_calls=3, max_calls=4), ToolUseExpert()
    env.reset(seed=6)
    env.step(expert(env))
    clones = [pickle.loads(pickle.dumps(env)), copy.deepcopy(env)]
    actions = [expert(env)]
    expected = [env.step(actions[0])]
    while not expected[-1][2]:
        actions.append(expert(env))
        expected.append(env.step(actions[-1]))
    for clone in clones:
        assert [clone.step(action) for action in actions] == expected
    a, b = ToolUseEnv(), ToolUseEnv()
    assert a.reset(seed=7) == b.reset(seed=7) and a.task == b.task
    assert len({ToolUseEnv().reset(seed=s)[0] for s in range(20)}) == 20


def test_custom_task_and_arguments() -> None:
    env = ToolUseEnv(render_mode="ansi")
    task = generate_task(np.random.default_rng(0), 0, min_calls=1, max_calls=1)
    obs, info = env.reset(options={"task": task})
    assert obs == f"Question: {task.question}" == env.render() and env.task is task
    with pytest.raises(ValueError, match="min_calls"):
        ToolUseEnv(min_calls=3, max_calls=2)
    with pytest.raises(TypeError, match="options\\['task'\\]"):
        env.reset(options={"task": "what is 2 + 2?"})
    env.step(f"<answer>{task.answer_text()}</answer>")
    assert env.step(_call("calculator", expression="1"))[4]["invalid_action"]  # after the answer
    assert Call("calculator", {"expression": "1"}).to_dict() == {"name": "calculator", "arguments": {"expression": "1"}}


@pytest.mark.parametrize("max_episode_steps", [None, 3, 15])
def test_reference_plan_is_revealed_when_the_time_limit_ends_the_episode(max_episode_steps: int | None) -> None:
    # gym.make's max_episode_steps used to be ignored above the env's own 10 turns, and below them the reveal was lost
    env = gym.make("creditgym/ToolUse-v1", max_episode_steps=max_episode_steps)
    limit = max_episode_steps or 10
    env.reset(seed=0)
    for step in range(limit):
        _, _, terminated, truncated, info = env.step('<tool_call>{"name": "calculator", "arguments": '
                                                     '{"expression": "1 + 1"}}</tool_call>')
        assert not terminated
        assert truncated == (step == limit - 1)
        assert ("reference_plan" in info) == truncated
    assert info["reference_answer"] == env.unwrapped.task.answer_text()
    assert gym.make(env.spec).spec == env.spec  # the reveal survives a rebuild from the spec


def test_reference_answer_is_always_text_so_vector_envs_can_batch_it() -> None:
    # Numbers, names and dates used to go out as int, float or str; gymnasium's vector envs type each info key by
    # its first value, so the batch raised "could not convert string to float" or cut 86.058 to 86.
    envs = gym.make_vec("creditgym/ToolUse-v1", num_envs=4, vectorization_mode="sync")
    envs.reset(seed=0)
    info = envs.step(["<answer>1</answer>"] * 4)[4]
    answers = [task.answer for task in envs.get_attr("task")]
    assert {type(answer) for answer in answers} == {int, float, str}  # seed 0 draws all three kinds
    assert list(info["reference_answer"]) == [task.answer_text() for task in envs.get_attr("task")]
    envs.close()
