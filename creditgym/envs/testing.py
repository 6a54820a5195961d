"""The public conformance suite for creditgym-style environments (like `pettingzoo.test`).

Run it on any env of yours::

    from creditgym.envs.testing import check_conformance
    check_conformance("creditgym/Sokoban-6x6-1b-v0", obs_mode="text")

It raises `ConformanceError` naming the first contract the env breaks (the list is in `check_conformance`).
`check_step_before_reset` checks one more, which every creditgym env meets: a step before the first reset raises.
"""

from __future__ import annotations

import copy
import math
import pickle
import random
import string
import sys
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

EnvFactory = Callable[..., gym.Env]

#: Text that is not an action in any creditgym env; used to check the invalid-action contract.
INVALID_PROBES = ("", "@@@ not an action @@@", "{\"json\": [1, 2]}", "import os; os.remove('/')", "é" * 50)


class ConformanceError(AssertionError):
    """An env breaks a creditgym contract; the message says which and where."""


def check_conformance(env: str | EnvFactory, *, seed: int = 0, num_steps: int = 200, **kwargs: Any) -> None:
    """Check every creditgym env contract on `env` (a registered id or a factory taking `render_mode`).

    1. gymnasium's `check_env` on the unwrapped env;
    2. same seed and actions give identical observations, rewards, flags and infos; `reset()` without a seed after
       a seeded reset continues identically too; neither building nor playing the env touches the global RNGs
       (`random`, `numpy.random`, `torch`): randomness comes only from `np_random` or seeded generators;
    3. `observation_space.contains` at every step;
    4. `info["reward_components"]` present and summing to the reward at every step;
    5. `info["instructions"]` on reset;
    6. pickle and deepcopy round trips continue identically;
    7. every declared render mode returns the right type;
    8. text envs: invalid text never raises, leaves `state()` unchanged, sets `info["invalid_action"]` and
       explains itself in the next observation;
    9. a step after an episode terminated (checked where a random rollout of `num_steps` terminates one) either
       raises or is an invalid action that pays no task reward: the outcome is never paid twice;
    10. each info key keeps one type over the rollout's resets and steps (several episodes, each with its own
        seed), and a short rollout of gymnasium's `SyncVectorEnv` over three copies runs: gymnasium's vector envs
        type each info key by its first value, and cast or refuse later values of another type.
    """
    make = _factory(env, kwargs)
    before = _global_rng_states()  # before the first construction: a cache filled once per process counts too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(make().unwrapped, skip_render_check=True)
    first = _rollout(make, seed, num_steps)
    after = _global_rng_states()
    _check_info_types(first)
    if after[:3] != before[:3] or before[3] not in (None, after[3]):
        raise ConformanceError("building or playing the env used a global RNG (random, numpy.random or torch); draw "
                               "from self.np_random or a generator seeded from it instead")
    second = _rollout(make, seed, num_steps)
    _assert_same(first, second, "two rollouts with the same seed and actions differ")
    _assert_same(_seedless_resets(make, seed), _seedless_resets(make, seed),
                 "reset() without a seed after reset(seed=...) does not continue deterministically")
    _check_copies(make, seed)
    _check_render_modes(make, seed)
    _check_step_after_end(make, seed, num_steps)
    _check_sync_vector_env(make, seed)
    if isinstance(make().action_space, spaces.Text):
        _check_invalid_text(make, seed)


def _factory(env: str | EnvFactory, kwargs: dict[str, Any]) -> EnvFactory:
    if isinstance(env, str):
        return lambda **extra: gym.make(env, disable_env_checker=True, **kwargs, **extra)
    return lambda **extra: env(**kwargs, **extra)


def _actions(env: gym.Env, info: dict[str, Any], rng: np.random.Generator) -> Any:
    """A random action; for text envs, a mix of random strings and the currently valid actions."""
    if not isinstance(env.action_space, spaces.Text):
        return env.action_space.sample()
    valid = info.get("available_actions") or []
    if valid and rng.random() < 0.6:
        return str(valid[rng.integers(len(valid))])
    length = int(rng.integers(0, 40))
    return "".join(rng.choice(list(string.printable), size=length))


def _rollout(make: EnvFactory, seed: int, num_steps: int) -> list[tuple]:
    env = make()
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    _check_step_contract(env, obs, None, info, "reset")
    if "instructions" not in info or not isinstance(info["instructions"], str) or not info["instructions"]:
        raise ConformanceError("reset must return the task instructions (a non-empty str) in info['instructions']")
    record: list[tuple] = [(obs, info)]
    episodes = 0
    for t in range(num_steps):
        action = _actions(env, info, rng)
        obs, reward, terminated, truncated, info = env.step(action)
        _check_step_contract(env, obs, reward, info, f"step {t} (action {action!r})")
        record.append((action, obs, reward, terminated, truncated, info))
        if terminated or truncated:
            if "success" not in info:
                raise ConformanceError(f"step {t}: info['success'] must be set when an episode ends")
            episodes += 1
            obs, info = env.reset(seed=seed + episodes)
            record.append((obs, info))
    env.close()
    return record


def _seedless_resets(make: EnvFactory, seed: int) -> list[tuple]:
    """Observations and infos of `reset()` calls without a seed, a few steps apart, after `reset(seed=seed)`."""
    env = make()
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    record: list[tuple] = [(obs, info)]
    for _ in range(3):
        for _ in range(3):
            _, _, terminated, truncated, info = env.step(_actions(env, info, rng))
            if terminated or truncated:
                break
        obs, info = env.reset()
        record.append((obs, info))
    env.close()
    return record


def _global_rng_states() -> tuple:
    """The states of Python's, numpy's and torch's global generators (torch's None while it is not imported)."""
    _, keys, position, *_ = np.random.get_state()
    torch = sys.modules.get("torch")
    torch_state = torch.random.get_rng_state().numpy().tobytes() if torch is not None else None
    return random.getstate(), keys.tobytes(), position, torch_state


def _check_step_contract(env: gym.Env, obs: Any, reward: float | None, info: dict[str, Any], where: str) -> None:
    if not env.observation_space.contains(obs):
        raise ConformanceError(f"{where}: observation is outside observation_space {env.observation_space}")
    components = info.get("reward_components")
    if not isinstance(components, dict) or not components:
        raise ConformanceError(f"{where}: info['reward_components'] must be a non-empty dict of named floats")
    if reward is not None:
        total = sum(float(v) for v in components.values())
        if not math.isclose(total, float(reward), rel_tol=1e-9, abs_tol=1e-9):
            raise ConformanceError(f"{where}: reward {reward} != sum of reward_components {components}")


def _check_copies(make: EnvFactory, seed: int) -> None:
    copiers: dict[str, Callable[[gym.Env], gym.Env]] = {
        "pickle": lambda env: pickle.loads(pickle.dumps(env)),
        "deepcopy": copy.deepcopy,
    }
    for name, copier in copiers.items():
        env = make()
        env.action_space.seed(seed)
        rng = np.random.default_rng(seed)
        _, info = env.reset(seed=seed)
        for _ in range(5):
            _, _, terminated, truncated, info = env.step(_actions(env, info, rng))
            if terminated or truncated:
                _, info = env.reset()
        clone = copier(env)
        for step in range(10):
            action = _actions(env, info, rng)
            got = clone.step(action)
            expected = env.step(action)
            _assert_same([expected], [got], f"a {name} copy diverged from the original at step {step}")
            info = expected[4]
            if got[2] or got[3]:
                break


def _check_step_after_end(make: EnvFactory, seed: int, num_steps: int) -> None:
    env = make()
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    for _ in range(num_steps):
        _, _, terminated, truncated, info = env.step(_actions(env, info, rng))
        if terminated:
            break
        if truncated:
            _, info = env.reset()
    else:
        return
    if isinstance(env.action_space, spaces.Text):
        candidates = list(info.get("available_actions") or []) or [_actions(env, info, rng)]
    elif isinstance(env.action_space, spaces.Discrete):
        candidates = [int(env.action_space.start) + i for i in range(int(env.action_space.n))]
    else:
        candidates = [env.action_space.sample()]
    for action in candidates:  # every valid action, each on its own copy: one random action usually pays nothing
        clone = copy.deepcopy(env)
        try:
            _, reward, _, _, after = clone.step(action)
        except Exception:  # noqa: BLE001 - refusing to step is one of the two allowed answers
            continue
        task = after.get("reward_components", {}).get("task", 0.0)
        if not after.get("invalid_action") or task != 0.0:
            raise ConformanceError(f"step({action!r}) after the episode terminated returned reward {reward} "
                                   f"({after.get('reward_components')}); raise, or treat it as an invalid action")


def _info_kinds(info: dict[str, Any], path: str = "") -> list[tuple[str, str]]:
    """(key path, kind) for every value in `info`, looking into dicts as gymnasium's vector envs do when batching."""
    kinds = []
    for key, value in info.items():
        where = f"{path}[{key!r}]"
        if isinstance(value, dict):
            kinds += [(where, "dict")] + _info_kinds(value, where)
        elif isinstance(value, np.ndarray):
            kinds.append((where, f"ndarray of {value.dtype} {value.shape}"))
        else:
            kinds.append((where, type(value).__name__))
    return kinds


def _check_info_types(record: list[tuple]) -> None:
    first_kind: dict[str, str] = {}
    for entry in record:  # a reset's (obs, info) or a step's (..., info)
        for where, kind in _info_kinds(entry[-1]):
            if first_kind.setdefault(where, kind) != kind:
                raise ConformanceError(
                    f"info{where} is a {first_kind[where]} in one step and a {kind} in another; give each info key "
                    "one type (e.g. always str): gymnasium's vector envs type a key by its first value, then "
                    "silently cast the others (86.058 -> 86) or fail"
                )


def _check_sync_vector_env(make: EnvFactory, seed: int, num_steps: int = 15) -> None:
    envs = gym.vector.SyncVectorEnv([make] * 3)
    try:
        envs.action_space.seed(seed)
        envs.reset(seed=seed)
        for _ in range(num_steps):
            envs.step(envs.action_space.sample())
    except Exception as error:  # noqa: BLE001 - any failure here is the finding
        raise ConformanceError(f"gymnasium's SyncVectorEnv over three copies failed: {error!r}") from error
    finally:
        envs.close()


def check_step_before_reset(env: str | EnvFactory, **kwargs: Any) -> None:
    """Check that a step on the unwrapped env before any reset raises a RuntimeError that says to call reset().

    `gym.make`'s OrderEnforcing hides the mistake, but `env.unwrapped` and direct construction do not have it;
    there a step that plays an empty episode can pay a reward (Sokoban paid its solve bonus). Not yet part of
    `check_conformance`, so that envs checked with it before keep passing.
    """
    make = _factory(env, kwargs)
    env = make().unwrapped  # without gym.make's OrderEnforcing, which would answer first
    try:
        _, reward, _, _, _ = env.step(env.action_space.sample())
    except RuntimeError as error:  # creditgym.envs.lifecycle.ResetNeeded is one
        if "reset()" not in str(error):
            raise ConformanceError(f"step() before reset() raised {error!r}; say to call reset() first") from error
        return
    except Exception as error:  # noqa: BLE001 - reported below
        raise ConformanceError(f"step() before reset() raised {error!r}; raise a RuntimeError that says to call "
                               "reset() first (creditgym.envs.lifecycle.require_reset)") from error
    raise ConformanceError(f"step() before reset() returned reward {reward}; raise a RuntimeError that says to "
                           "call reset() first (creditgym.envs.lifecycle.require_reset)")


def _check_render_modes(make: EnvFactory, seed: int) -> None:
    for mode in make().metadata.get("render_modes", []):
        if mode == "human":
            continue
        env = make(render_mode=mode)
        env.reset(seed=seed)
        frame = env.render()
        if mode == "ansi" and not isinstance(frame, str):
            raise ConformanceError(f"render_mode 'ansi' must return str, got {type(frame).__name__}")
        if mode == "rgb_array" and not (
            isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        ):
            raise ConformanceError("render_mode 'rgb_array' must return an (H, W, 3) uint8 array")


def _check_invalid_text(make: EnvFactory, seed: int) -> None:
    env = make()
    env.reset(seed=seed)
    unwrapped = env.unwrapped
    if not hasattr(unwrapped, "state"):
        raise ConformanceError("text envs must define state() returning the current state as plain data")
    for probe in INVALID_PROBES:
        before = copy.deepcopy(unwrapped.state())
        obs, reward, terminated, truncated, info = env.step(probe)
        if not info.get("invalid_action"):
            raise ConformanceError(f"step({probe!r}) must set info['invalid_action'] = True")
        if unwrapped.state() != before:
            raise ConformanceError(f"step({probe!r}) changed the state; invalid input must leave it unchanged")
        if "invalid" not in str(obs).lower():
            raise ConformanceError(f"the observation after step({probe!r}) must explain that the action was invalid")
        if terminated or truncated:
            env.reset()


def _assert_same(a: Any, b: Any, message: str, path: str = "") -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            raise ConformanceError(f"{message}: keys at {path or 'top'} differ: {sorted(a)} vs {sorted(b)}")
        for key in a:
            _assert_same(a[key], b[key], message, f"{path}[{key!r}]")
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            raise ConformanceError(f"{message}: lengths at {path or 'top'} differ: {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, message, f"{path}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            raise ConformanceError(f"{message}: arrays at {path or 'top'} differ")
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        raise ConformanceError(f"{message}: {path or 'value'} is {a!r} vs {b!r}")
