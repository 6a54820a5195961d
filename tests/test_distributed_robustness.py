"""Ray pools under bad input and misbehaving envs: an unreachable cluster, envs that fail to build or to step inside
a worker, and pools used after `close()`. Ray runs locally on 2 CPUs and is always shut down."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import ray
import torch

import creditgym  # noqa: F401
from creditgym.agents.vec import make_vec_env
from creditgym.distributed import RayEnvPool, RayVecEnv

ROOT = Path(__file__).resolve().parents[1]
BANDIT = "creditgym/Sanity-Bandit-v0"
SOKOBAN = "creditgym/Sokoban-6x6-1b-v0"
CPU = torch.device("cpu")


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
                  lambda: RayEnvPool(functools.partial(gym.make, {BANDIT!r}), 2, 1, address="ray://127.0.0.1:1"),
                  lambda: RayVecEnv({BANDIT!r}, 2, 1, address="auto")]
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
    assert len(lines) == 4, done.stdout + done.stderr
    for line, address in zip(lines, ["127.0.0.1:1", "ray://127.0.0.1:1"], strict=False):
        assert line.startswith("refused after 0 s: no Ray cluster answers at " + address), line
        assert "ray start --head --port 1" in line and "leave the address unset" in line
    # "auto" with no `ray start` cluster on this machine: Ray's own advice named its --address flag, not ours.
    assert "no running Ray cluster found for address 'auto'" in lines[2] and "no --ray-address" in lines[2]
    assert lines[3] == "ray initialized: False"


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



def test_more_workers_than_the_cluster_has_cpus_is_refused_instead_of_waiting_for_ever(tmp_path: Path) -> None:
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
            try:  # asked to, it waits for nodes that Ray knows nothing of
                RayVecEnv({BANDIT!r}, 3, 3, wait_for_cpus=1)
            except TimeoutError as err:
                print(err)
            from creditgym.agents.ppo import PPO, PPOConfig
            try:  # the trainers pass their ray_wait_for_cpus on
                PPO(PPOConfig(env_id="creditgym/Sokoban-6x6-1b-v0", num_envs=3, num_steps=4, num_minibatches=1,
                              rollout_backend="ray", num_workers=3, ray_wait_for_cpus=1, progress=False,
                              tensorboard=False, runs_dir={str(tmp_path)!r}))
            except TimeoutError as err:
                print(err)
        finally:
            ray.shutdown()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert len(lines) == 5, done.stdout + done.stderr
    assert lines[0].startswith("3 Ray workers x 1 CPU(s) need 3 CPUs and the Ray cluster has 2; use fewer workers")
    assert lines[0].endswith("pass wait_for_cpus=SECONDS to wait for them; --ray-wait-for-cpus in `creditgym train`)")
    assert lines[1].startswith("1 Ray workers x 2.5 CPU(s) need 2.5 CPUs and the Ray cluster has 2")
    assert lines[2] == "started 2"
    for line in lines[3:]:
        assert line.startswith("3 Ray workers x 1 CPU(s) did not start within 1 s; the Ray cluster has 2 of the 3")


# -- an env error in one worker: the record of what each worker ran must hold for a replacement ----------------------
def _kill(actor: Any) -> None:
    """`ray.kill`, then wait until the actor is gone: a call sent just after `ray.kill` may still run on it."""
    ray.kill(actor)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            ray.get(actor.start.remote())  # makes the envs once: a no-op on a live worker
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("a killed worker still answers")


def _counter_env() -> type[gym.Env]:
    """An env class whose state is the sum of its reset draw and its actions; seed 13 and action 7 raise after
    changing the state, as an env that fails half-way through a call does; action 9 takes 3 s. Made in a function,
    so that Ray ships it to the workers by value."""

    class Counter(gym.Env):
        observation_space = gym.spaces.Discrete(10_000)
        action_space = gym.spaces.Discrete(10)

        def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[int, dict]:
            super().reset(seed=seed)
            self.total = int(self.np_random.integers(100))
            if seed == 13:
                raise ValueError("seed 13 breaks this env")
            return self.total, {}

        def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
            self.total += int(action)
            if action == 7:
                raise ValueError("action 7 breaks this env")
            if action == 9:
                time.sleep(3)
            return self.total, float(action), False, False, {}

    return Counter


def test_envs_beside_one_that_raises_are_replayed_as_they_ran(local_ray: None) -> None:
    counter = _counter_env()
    local = [counter() for _ in range(4)]
    pool = RayEnvPool(counter, 4, 2)

    def both(method: str, indices: list[int], args: list[Any]) -> None:
        """The call on the pool and, one env at a time, on the local envs: the same results, or both raise."""
        expected, error = [], None
        for i, arg in zip(indices, args, strict=True):
            try:
                expected.append(local[i].reset(seed=arg) if method == "reset" else local[i].step(arg))
            except ValueError as err:
                error = err
        if error is None:
            assert getattr(pool, f"{method}_many")(indices, args) == expected
        else:
            with pytest.raises(ValueError, match="breaks this env"):
                getattr(pool, f"{method}_many")(indices, args)

    try:
        both("reset", [0, 1, 2, 3], [1, 2, 3, 4])
        both("step", [0, 1, 2, 3], [1, 2, 3, 4])
        both("step", [0, 1, 2, 3], [7, 1, 2, 3])  # env 0 raises; 1 (same worker) and 2, 3 (the other) step
        both("reset", [0, 1, 2, 3], [5, 13, 6, 8])  # env 1 raises half-way through its reset
        both("step", [0, 1, 2, 3], [1, 1, 1, 1])
        both("step", [2, 3], [7, 2])
        for actor in pool.workers.actors:
            _kill(actor)
        both("step", [0, 1, 2, 3], [2, 3, 4, 5])
        assert pool.restarts == 2
    finally:
        pool.close()
    _wait_for_free_cpus()


def test_a_step_that_raises_in_one_worker_is_replayed_as_it_ran(local_ray: None) -> None:
    # Worker 1's slice gets an illegal move at step 3, so its step raises while worker 0's goes on: replacements
    # for both must come back to where each slice was. The reference is one local env per slice, stepped alike.
    kwargs = {"max_episode_steps": 6}
    actions = torch.randint(4, (8, 8), generator=torch.Generator().manual_seed(7))
    actions[3, 6] = 99
    slices = [make_vec_env(SOKOBAN, 4, CPU, {**kwargs, "first_env": first, "total_envs": 8}) for first in (0, 4)]
    envs = RayVecEnv(SOKOBAN, 8, 2, env_kwargs=kwargs)
    try:
        assert torch.equal(envs.reset(3)[0], torch.cat([part.reset(seed=3)[0] for part in slices]))
        for t, action in enumerate(actions):
            if t == 5:
                for actor in envs.workers.actors:
                    _kill(actor)
            expected = []
            for part, rows in zip(slices, action.split(4), strict=True):
                try:
                    expected.append(part.step(rows))
                except ValueError:
                    pass
            if len(expected) < len(slices):
                with pytest.raises(ValueError, match="actions must be the moves 0-3"):
                    envs.step(action)
                continue
            got = envs.step(action)
            for k in range(4):  # observations, rewards, terminations, truncations
                assert torch.equal(got[k], torch.cat([part[k] for part in expected])), (t, k)
        assert envs.restarts == 2
    finally:
        envs.close()


def test_a_reset_that_raises_in_one_worker_is_replayed_as_it_ran(local_ray: None) -> None:
    # Worker 0 resets its gymnasium vector env with seed -2 (refused), worker 1 with -2 + 2 = 0 (accepted). The
    # reference is one local env per slice, called alike.
    envs = RayVecEnv(BANDIT, 4, 2)
    slices = [make_vec_env(BANDIT, 2, CPU, {}) for _ in range(2)]
    try:
        envs.reset(5)
        slices[0].reset(seed=5)
        slices[1].reset(seed=7)
        for reset in (lambda: envs.reset(-2), lambda: slices[0].reset(seed=-2)):
            with pytest.raises(gym.error.Error, match="Seed must be greater or equal to zero"):
                reset()
        slices[1].reset(seed=0)
        for actor in envs.workers.actors:
            _kill(actor)
        for action in torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]):  # the second step resets the envs, from their RNG
            got = envs.step(action)
            expected = [part.step(rows) for part, rows in zip(slices, action.split(2), strict=True)]
            for k in range(4):
                assert torch.equal(got[k], torch.cat([part[k] for part in expected])), k
        assert envs.restarts == 2
    finally:
        envs.close()


def test_closing_a_pool_during_a_step_fails_the_step_and_frees_the_workers(local_ray: None) -> None:
    pool = RayEnvPool(_counter_env(), 2, 2)
    pool.reset_many([0, 1], [1, 2])
    errors: list[BaseException] = []

    def step() -> None:
        try:
            pool.step_many([0, 1], [9, 9])  # 3 s each
        except BaseException as err:  # noqa: BLE001 (the test reports it)
            errors.append(err)

    stepping = threading.Thread(target=step)
    stepping.start()
    time.sleep(1)
    pool.close()
    stepping.join(30)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert "closed" in str(errors[0])
    assert pool.restarts == 0
    _wait_for_free_cpus()


def test_workers_and_their_replacements_wait_for_the_cpus_an_autoscaler_can_add_and_no_longer() -> None:
    # In a fresh interpreter with its own Ray: a 1-CPU head node and, as an autoscaler would publish it, a cluster
    # config that lets the cluster grow by one 1-CPU node, which "the autoscaler" adds 2 s after the pool asks.
    # Then that node leaves, taking a worker with it: its replacement waits for the autoscaler too, here 1 s, and
    # where Ray reports no autoscaler it is refused at once. Ray would wait for ever in both cases.
    script = textwrap.dedent(f"""
        import functools, threading, time
        import gymnasium as gym, ray
        from ray.cluster_utils import Cluster
        from ray.core.generated import autoscaler_pb2
        from creditgym.distributed import RayEnvPool, group
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "include_dashboard": False}})
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            groups = [autoscaler_pb2.NodeGroupConfig(name="head", resources={{"CPU": 1}}, min_count=1, max_count=1),
                      autoscaler_pb2.NodeGroupConfig(name="cpu", resources={{"CPU": 1}}, min_count=0, max_count=1)]
            config = autoscaler_pb2.ClusterConfig(node_group_configs=groups)
            ray._private.worker.global_worker.gcs_client.report_cluster_config(config.SerializeToString())
            make = functools.partial(gym.make, {BANDIT!r})
            for kwargs in [dict(num_envs=3, num_workers=3), dict(num_envs=2, num_workers=2, wait_for_cpus=2)]:
                start = time.monotonic()
                try:
                    RayEnvPool(make, **kwargs)
                except (ValueError, TimeoutError) as err:
                    print(type(err).__name__, "after", round(time.monotonic() - start), "s:", err)
            group.AUTOSCALER_WAIT_S = 60  # the default wait, shortened in case this test fails

            def start_pool():
                start = time.monotonic()
                pools.append(RayEnvPool(make, 2, 2))  # waits for the node, by default
                print("started", len(pools[0]), "after", round(time.monotonic() - start), "s")

            pools = []
            starting = threading.Thread(target=start_pool)
            starting.start()
            time.sleep(2)
            node = cluster.add_node(num_cpus=1)  # from the main thread, as Ray's Cluster wants
            starting.join()

            def lose_a_node(pool, node):
                pool.reset_many([0, 1], [1, 2])
                cluster.remove_node(node)
                start = time.monotonic()
                try:
                    pool.reset_many([0, 1], [3, 4])
                except (RuntimeError, TimeoutError) as err:
                    print(type(err).__name__, "after", round(time.monotonic() - start), "s:", err)
                assert pool.workers.closed

            pools[0].workers.wait_for_cpus = 1
            lose_a_node(pools[0], node)
            empty = autoscaler_pb2.ClusterConfig()  # Ray now reports no autoscaler
            ray._private.worker.global_worker.gcs_client.report_cluster_config(empty.SerializeToString())
            node = cluster.add_node(num_cpus=1)
            lose_a_node(RayEnvPool(make, 2, 2), node)
        finally:
            ray.shutdown()
            cluster.shutdown()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert len(lines) == 5, done.stdout + done.stderr
    seconds = [int(re.search(r"after (\d+) s", line)[1]) for line in lines]
    assert lines[0].startswith("ValueError after ") and seconds[0] <= 1, lines[0]  # refused at once
    assert lines[0].endswith(": 3 Ray workers x 1 CPU(s) need 3 CPUs and the Ray cluster has 1, and its autoscaler "
                             "can grow it to 2 at most; use fewer workers (--num-workers, num_workers) or, from "
                             "Python, less cpus_per_worker, or raise the autoscaler's limits (max_workers; "
                             "maxReplicas on KubeRay)"), lines[0]
    assert lines[1].startswith("TimeoutError after ") and 2 <= seconds[1] < 10, lines[1]
    assert ": 2 Ray workers x 1 CPU(s) did not start within 2 s; the Ray cluster has 1 of the 2 CPUs they need. Wait " \
           "longer (wait_for_cpus; --ray-wait-for-cpus in `creditgym train`)" in lines[1], lines[1]
    assert lines[2].startswith("started 2 after ") and 2 <= seconds[2] < 30, lines[2]  # the node came after 2 s
    # Either worker may have been on the node that left.
    died, lost = [re.sub(r"(?<=orker )[01]\b", "N", line) for line in lines[3:]]
    closed = ". The workers were closed, as the others have run reset() and worker N has not; make a new pool (or " \
             "env) to go on"
    assert died.startswith("TimeoutError after ") and 1 <= seconds[3] < 10, died
    assert died.endswith(": Ray worker N died during reset() and its replacement (1 CPU(s)) did not start within 1 s; "
                         "the Ray cluster has 1 of the 2 CPUs the workers need. Wait longer (wait_for_cpus; "
                         "--ray-wait-for-cpus in `creditgym train`), use fewer workers (--num-workers, num_workers) "
                         "or, from Python, less cpus_per_worker, or check that the autoscaler can add nodes "
                         "(`ray status`)" + closed), died
    assert lost.startswith("RuntimeError after ") and seconds[4] <= 1, lost
    assert lost.endswith(": Ray worker N died during reset() and no replacement can start: 2 Ray workers x 1 CPU(s) "
                         "need 2 CPUs and the Ray cluster has 1; use fewer workers (--num-workers, num_workers) or, "
                         "from Python, less cpus_per_worker, or add nodes to the cluster (if nodes are on their way, "
                         "pass wait_for_cpus=SECONDS to wait for them; --ray-wait-for-cpus in `creditgym train`)"
                         + closed), lost


def test_a_worker_that_keeps_dying_closes_the_pool(local_ray: None, tmp_path: Path) -> None:
    # Once the other workers have run a call that one worker cannot, their envs no longer go together.
    doomed = tmp_path / "doomed"

    def make_env() -> gym.Env:
        if doomed.exists():  # every replacement dies while it builds its envs
            os._exit(1)
        return gym.make(BANDIT)

    pool = RayEnvPool(make_env, 2, 2)
    pool.workers.max_restarts = 1  # gives up after 2 deaths instead of 4, to save time
    pool.reset_many([0, 1], [1, 2])
    doomed.touch()
    _kill(pool.workers.actors[0])
    with pytest.raises(RuntimeError, match="died 2 times in a row during reset.*the workers were closed"):
        pool.reset_many([0, 1], [3, 4])
    assert pool.workers.closed and pool.restarts == 1
    with pytest.raises(RuntimeError, match="closed"):
        pool[1].reset(seed=5)
    _wait_for_free_cpus()


# -- CPUs that other jobs hold: waited for up to wait_for_cpus, at the first start and at each replacement ------------
@ray.remote(num_cpus=1)
class _OtherJob:
    """Another job's actor, holding one CPU while it lives."""

    def ready(self) -> bool:
        return True


def _watchdog(actor: Any, seconds: float = 15) -> threading.Timer:
    """Kills `actor` after `seconds`: a start that waits for its CPU with no limit then goes through, and the test
    fails on the TimeoutError that did not come instead of hanging."""
    timer = threading.Timer(seconds, ray.kill, [actor])
    timer.start()
    return timer


def test_workers_wait_for_the_cpus_other_jobs_hold_and_no_longer(local_ray: None) -> None:
    make = functools.partial(gym.make, BANDIT)
    other = _OtherJob.remote()
    ray.get(other.ready.remote())  # 1 of the cluster's 2 CPUs: enough CPUs in all, too few free
    watchdog = _watchdog(other)
    try:
        start = time.monotonic()
        with pytest.warns(UserWarning, match=r"2 Ray worker\(s\) x 1 CPU\(s\) need 2 free CPUs and 1 of the Ray "
                                             r"cluster's 2 are free \(other jobs hold the rest\); waiting up to 1 s"), \
                pytest.raises(TimeoutError) as timeout:
            RayEnvPool(make, 2, 2, wait_for_cpus=1)
        assert time.monotonic() - start < 10
        assert str(timeout.value).startswith("2 Ray workers x 1 CPU(s) did not start within 1 s; the Ray cluster has "
                                             "the 2 CPUs they need, but other jobs hold them (")
        assert "Wait longer (wait_for_cpus; --ray-wait-for-cpus in `creditgym train`), stop the jobs" in \
            str(timeout.value)
        with pytest.raises(TimeoutError, match="did not start within 0 s"):  # 0 never waits
            RayEnvPool(make, 2, 2, wait_for_cpus=0)
        watchdog.cancel()
        threading.Timer(2.5, ray.kill, [other]).start()  # the other job ends within the wait: the pool starts
        with pytest.warns(UserWarning, match="waiting up to 30 s"):
            pool = RayEnvPool(make, 2, 2, wait_for_cpus=30)
        try:
            assert len(pool.reset_many([0, 1], [1, 2])) == 2
        finally:
            pool.close()
    finally:
        watchdog.cancel()
        ray.kill(other)
    _wait_for_free_cpus()


def test_a_replacement_waits_for_a_cpu_another_job_took_and_no_longer(local_ray: None) -> None:
    counter = _counter_env()
    local = [counter() for _ in range(2)]
    pool = RayEnvPool(counter, 2, 2, wait_for_cpus=30)
    others: list[Any] = []

    def lose_the_cpu_of(worker: int) -> Any:
        """Kills the worker while another job's actor waits for a CPU, which then takes the worker's."""
        others.append(_OtherJob.remote())
        _kill(pool.workers.actors[worker])
        ray.get(others[-1].ready.remote())
        return others[-1]

    try:
        assert pool.reset_many([0, 1], [1, 2]) == [local[0].reset(seed=1), local[1].reset(seed=2)]
        assert pool.step_many([0, 1], [3, 4]) == [local[0].step(3), local[1].step(4)]
        threading.Timer(2.5, ray.kill, [lose_the_cpu_of(1)]).start()  # freed within the wait
        with pytest.warns(UserWarning, match=r"1 Ray worker\(s\) x 1 CPU\(s\) need 1 free CPUs and 0 of the Ray "
                                             r"cluster's 2 are free \(other jobs hold the rest\); waiting up to 30 s"):
            assert pool.step_many([0, 1], [5, 6]) == [local[0].step(5), local[1].step(6)]  # replayed exactly
        assert pool.step_many([0, 1], [1, 2]) == [local[0].step(1), local[1].step(2)]
        assert pool.restarts == 1

        pool.workers.wait_for_cpus = 1
        watchdog = _watchdog(lose_the_cpu_of(0))
        start = time.monotonic()
        with pytest.warns(UserWarning, match="waiting up to 1 s"), pytest.raises(TimeoutError) as timeout:
            pool.step_many([0, 1], [3, 3])
        watchdog.cancel()
        assert time.monotonic() - start < 10
        assert str(timeout.value).startswith("Ray worker 0 died during step() and its replacement (1 CPU(s)) did not "
                                             "start within 1 s; the Ray cluster has the 2 CPUs the workers need, but "
                                             "other jobs hold them (")
        assert str(timeout.value).endswith("The workers were closed, as the others have run step() and worker 0 has "
                                           "not; make a new pool (or env) to go on")
        assert pool.workers.closed and pool.restarts == 2  # the pending replacement was killed with the rest
        with pytest.raises(RuntimeError, match="closed"):
            pool[1].step(1)
    finally:
        pool.close()
        for other in others:
            ray.kill(other)
    _wait_for_free_cpus()
