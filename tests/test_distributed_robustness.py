"""Ray pools under bad input and misbehaving envs: an unreachable cluster, envs that fail to build or to step inside
a worker, and pools used after `close()`. Ray runs locally on 2 CPUs and is always shut down."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import ray
import torch

import creditgym  # noqa: F401
from creditgym.distributed import RayEnvPool, RayVecEnv

ROOT = Path(__file__).resolve().parents[1]
BANDIT = "creditgym/Sanity-Bandit-v0"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _wait_for_free_cpus(cpus: float = 2, seconds: float = 20) -> None:
    """A failed or closed pool's actors are killed; one left holding its CPU would make later pools wait for ever."""
    deadline = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0) < cpus:
        assert time.monotonic() < deadline, "a killed worker still holds its CPU"
        time.sleep(0.1)


def test_an_unreachable_cluster_is_reported_at_once_without_starting_ray() -> None:
    # In a fresh interpreter: this process may be connected to a Ray already, and ray.init used to retry the
    # address for minutes (the timeout turns that into a failure).
    script = textwrap.dedent(f"""
        import functools, time
        import gymnasium as gym, ray
        from creditgym.distributed import RayEnvPool, RayVecEnv
        makers = [lambda: RayVecEnv({BANDIT!r}, 2, 1, address="127.0.0.1:1"),
                  lambda: RayEnvPool(functools.partial(gym.make, {BANDIT!r}), 2, 1, address="ray://127.0.0.1:1")]
        for make in makers:
            start = time.monotonic()
            try:
                make()
            except ConnectionError as err:
                print("refused after", round(time.monotonic() - start), "s:", err)
        print("ray initialized:", ray.is_initialized())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=90)
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout + done.stderr
    for line, address in zip(lines, ["127.0.0.1:1", "ray://127.0.0.1:1"], strict=False):
        assert line.startswith("refused after 0 s: no Ray cluster answers at " + address), line
        assert "ray start --head --port 1" in line and "leave the address unset" in line
    assert lines[2] == "ray initialized: False"


def test_more_workers_than_envs_is_refused_before_starting_ray() -> None:
    ray_was_up = ray.is_initialized()
    with pytest.raises(ValueError, match="use fewer workers or more envs"):
        RayEnvPool(functools.partial(gym.make, BANDIT), 2, 3)
    assert ray.is_initialized() == ray_was_up


def test_an_env_that_cannot_be_built_in_the_worker_raises_its_own_error(local_ray: None) -> None:
    with pytest.raises(gym.error.NameNotFound, match="Nope"):
        RayEnvPool(functools.partial(gym.make, "creditgym/Nope-v0"), 2, 2)
    _wait_for_free_cpus()


def test_an_env_that_raises_in_a_worker_reaches_the_driver_and_the_pool_goes_on(local_ray: None) -> None:
    class Fragile(gym.Env):  # defined here, so that Ray ships it to the workers by value
        observation_space = gym.spaces.Discrete(3)
        action_space = gym.spaces.Discrete(3)

        def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[int, dict]:
            super().reset(seed=seed)
            self.t = 0
            return 0, {}

        def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
            if action == 2:
                raise ValueError(f"action {action} breaks this env")
            self.t += 1
            return self.t, float(action), False, False, {}

    pool = RayEnvPool(Fragile, 3, 2)
    try:
        pool.reset_many([0, 1, 2], [1, 2, 3])
        start = time.monotonic()
        with pytest.raises(ValueError, match="action 2 breaks this env"):
            pool.step_many([0, 2], [1, 2])
        assert time.monotonic() - start < 10 and pool.restarts == 0  # an env error is not a dead worker
        assert pool[1].step(1) == (1, 1.0, False, False, {})
        assert pool[2].reset(seed=5) == (0, {})
    finally:
        pool.close()
    _wait_for_free_cpus()


def test_pools_closed_twice_and_used_after_close(local_ray: None) -> None:
    pool = RayEnvPool(functools.partial(gym.make, BANDIT), 2, 1)
    envs = RayVecEnv(BANDIT, 2, 1)  # the two pools hold both CPUs
    envs.reset(0)
    for closeable in (pool, envs):
        closeable.close()
        closeable.close()
    with pytest.raises(RuntimeError, match=r"reset\(\) on Ray workers that were closed; make a new pool"):
        pool[0].reset(seed=1)
    with pytest.raises(RuntimeError, match=r"step\(\) on Ray workers that were closed"):
        pool.step_many([0, 1], [0, 0])
    with pytest.raises(RuntimeError, match=r"step\(\) on Ray workers that were closed"):
        envs.step(torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"get_state\(\) on Ray workers that were closed"):
        envs.get_state()
    _wait_for_free_cpus()



def test_more_workers_than_the_cluster_has_cpus_is_refused_instead_of_waiting_for_ever() -> None:
    # In a fresh interpreter with its own 2-CPU Ray, as Ray used to wait for ever for the missing CPUs.
    script = textwrap.dedent(f"""
        import functools
        import gymnasium as gym, ray
        from creditgym.distributed import RayEnvPool, RayVecEnv
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for make in [lambda: RayVecEnv({BANDIT!r}, 4, 3),
                         lambda: RayEnvPool(functools.partial(gym.make, {BANDIT!r}), 2, 1, cpus_per_worker=2.5)]:
                try:
                    make()
                except ValueError as err:
                    print(err)
            pool = RayEnvPool(functools.partial(gym.make, {BANDIT!r}), 2, 2)  # what fits still starts
            print("started", len(pool))
            pool.close()
        finally:
            ray.shutdown()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout + done.stderr
    assert lines[0].startswith("3 Ray workers x 1 CPU(s) need 3 CPUs and the Ray cluster has 2; use fewer workers")
    assert lines[1].startswith("1 Ray workers x 2.5 CPU(s) need 2.5 CPUs and the Ray cluster has 2")
    assert lines[2] == "started 2"
