"""Every text env survives arbitrary strings: no exception, invalid input changes nothing and is explained."""

from __future__ import annotations

import copy
import functools
import json

import gymnasium as gym
import pytest
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditgym.envs import obs_modes, registered_ids


def _text_cases() -> list[tuple[str, dict]]:
    """Every registered env with text actions: natively text envs, and grid envs in their text view."""
    cases = []
    for env_id in registered_ids():
        kwargs = {"obs_mode": "text"} if "text" in obs_modes(env_id) else {}
        env = gym.make(env_id, disable_env_checker=True, **kwargs)
        if isinstance(env.action_space, spaces.Text):
            cases.append((env_id, kwargs))
        env.close()
    return cases


@functools.cache
def _env(env_id: str, kwargs_json: str) -> gym.Env:
    env = gym.make(env_id, disable_env_checker=True, **json.loads(kwargs_json))
    assert isinstance(env.action_space, spaces.Text)
    env.reset(seed=0)
    return env


_json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
).map(json.dumps)
_code = st.sampled_from(
    ["import os\nos.system('rm -rf /')", "while True: pass", "__import__('subprocess')", "lambda: 0", "def f(): ..."]
)
ARBITRARY_TEXT = st.one_of(
    st.text(),  # any unicode, including the empty string
    st.text(alphabet=st.characters(codec="ascii"), max_size=300),
    _json_text,
    _code,
    st.sampled_from(["", " ", "\x00", "<answer></answer>", "\\boxed{}", "<answer>up down</answer>"]),
)


def _check_one(env: gym.Env, text: str) -> None:
    state_before = copy.deepcopy(env.unwrapped.state())
    obs, reward, terminated, truncated, info = env.step(text)
    assert sum(info["reward_components"].values()) == pytest.approx(reward)
    if info["invalid_action"]:
        assert env.unwrapped.state() == state_before
        assert "invalid" in obs.lower()
    assert env.observation_space.contains(obs)
    if terminated or truncated:
        env.reset()


@pytest.mark.parametrize(("env_id", "kwargs"), _text_cases())
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
@given(text=ARBITRARY_TEXT)
def test_arbitrary_strings(env_id: str, kwargs: dict, text: str) -> None:
    _check_one(_env(env_id, json.dumps(kwargs)), text)


@pytest.mark.parametrize(("env_id", "kwargs"), _text_cases())
def test_huge_strings(env_id: str, kwargs: dict) -> None:
    env = _env(env_id, json.dumps(kwargs))
    megabyte = 1 << 20
    for text in ("x" * megabyte, "<answer>" * (megabyte // 8), "up " * (megabyte // 3), "é" * megabyte):
        _check_one(env, text)
