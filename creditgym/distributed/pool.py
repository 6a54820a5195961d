"""Env pools for the LLM trainers: many single envs stepped with one action each, locally or in Ray actors.

Both pools index envs like a list (`pool[i].reset(seed=...)`, `pool[i].step(text)`) and also take whole
batches (`reset_many`, `step_many`), which a Ray pool sends as one call per worker, run in parallel. With
`with_state=True` each result comes with the env's `unwrapped.state()` after the call, read where the env is: what a
recording LLM collector keeps (a Sokoban board, say), which a Ray pool's envs cannot be asked for afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gymnasium as gym
from ray.actor import ActorHandle

from creditgym.distributed.group import WorkerGroup, init_ray, slice_starts, split_evenly, wait_for_replay
from creditgym.envs import env_state

ResetResult = tuple[Any, dict[str, Any]]
StepResult = tuple[Any, float, bool, bool, dict[str, Any]]
EnvState = dict[str, Any] | None


def with_state_after(call: Callable[[], Any], env: gym.Env) -> tuple[Any, EnvState]:
    """`call()`'s result, and the env's state after it."""
    return call(), env_state(env)


class LocalEnvPool:
    """The pool interface over envs in this process."""

    def __init__(self, envs: Sequence[gym.Env]) -> None:
        self.envs = list(envs)

    def __len__(self) -> int:
        return len(self.envs)

    def __getitem__(self, index: int) -> gym.Env:
        return self.envs[index]

    def __iter__(self) -> Iterator[gym.Env]:
        return iter(self.envs)

    def reset_many(self, indices: Sequence[int], seeds: Sequence[int | None], *,
                   with_state: bool = False) -> list[Any]:
        results = [self.envs[i].reset(seed=seed) for i, seed in zip(indices, seeds, strict=True)]
        return [(r, env_state(self.envs[i])) for i, r in zip(indices, results, strict=True)] if with_state else results

    def step_many(self, indices: Sequence[int], actions: Sequence[Any], *, with_state: bool = False) -> list[Any]:
        results = [self.envs[i].step(action) for i, action in zip(indices, actions, strict=True)]
        return [(r, env_state(self.envs[i])) for i, r in zip(indices, results, strict=True)] if with_state else results

    def close(self) -> None:
        for env in self.envs:
            env.close()


class EnvPoolWorker:
    """`num_envs` envs made by `make_env` inside one Ray actor, addressed by their index in this slice."""

    def __init__(self, make_env: Callable[[], gym.Env], num_envs: int, first_env: int = 0) -> None:
        self.make_env, self.num_envs, self.first_env = make_env, num_envs, first_env
        self.envs: list[gym.Env] = []

    def start(self) -> gym.envs.registration.EnvSpec | None:
        """Makes the envs (once); returns their spec."""
        import torch

        torch.set_num_threads(1)  # Ray reserves cpus_per_worker cores for this actor
        if not self.envs:
            self.envs = [self.make_env() for _ in range(self.num_envs)]
        return self.envs[0].spec

    def reset(self, requests: Sequence[tuple[int, int | None]], with_state: bool = False) -> list[Any]:
        return self._run([(i, functools.partial(self.envs[i].reset, seed=seed)) for i, seed in requests], with_state)

    def step(self, requests: Sequence[tuple[int, Any]], with_state: bool = False) -> list[Any]:
        return self._run([(i, functools.partial(self.envs[i].step, action)) for i, action in requests], with_state)

    def _run(self, calls: Sequence[tuple[int, Callable[[], Any]]], with_state: bool) -> list[Any]:
        """Each env's call (with its state after it, `with_state`), as `run_each` runs them."""
        if with_state:
            calls = [(i, functools.partial(with_state_after, call, self.envs[i])) for i, call in calls]
        return run_each([call for _, call in calls], [self.first_env + i for i, _ in calls])


def run_each(calls: Sequence[Callable[[], Any]], envs: Sequence[int]) -> list[Any]:
    """Every call's result; when some raise, the first error, raised after the other calls have run. The driver
    then knows that every env of the batch ran its call, as it records them for replay."""
    results, errors = [], []
    for call, env in zip(calls, envs, strict=True):
        try:
            results.append(call())
        except Exception as err:  # noqa: BLE001 (raised below)
            err.add_note(f"raised by env {env} of the pool")
            errors.append(err)
    if errors:
        raise errors[0]
    return results


class RayEnvPool:
    """`num_envs` envs made by `make_env` inside `num_workers` Ray actors, used like a list of envs.

    `make_env` is sent to the workers, so it must pickle (cloudpickle: a lambda or a `functools.partial` of
    `gym.make` does). Env `i` lives in the worker whose contiguous slice holds `i`.

    Fault tolerance: the pool remembers each env's last reset (with its seed) and the actions since. When a
    call finds a worker dead, a new actor makes its envs again and replays those resets and actions, which
    gives back the same episodes as long as an env is a function of its reset seed and its actions (true of
    creditgym's envs; an env reset without a seed gets a fresh random one). When an env raises, the other envs
    of the batch still run their call, and every call is remembered, the raising one too: replayed, it raises
    again at the same point and leaves the env where the first one did.

    `wait_for_cpus`: see `WorkerGroup` (by default, wait for an autoscaler that can add the CPUs, and refuse at once
    where Ray reports none; wait 600 s for CPUs that other jobs hold). It holds for replacement workers too.
    """

    def __init__(self, make_env: Callable[[], gym.Env], num_envs: int, num_workers: int = 2, *,
                 address: str | None = None, cpus_per_worker: float = 1.0, wait_for_cpus: float | None = None
                 ) -> None:
        self.sizes = split_evenly(num_envs, num_workers)
        self._starts = slice_starts(self.sizes)
        self._worker_of = [w for w, size in enumerate(self.sizes) for _ in range(size)]
        self._calls: list[list[tuple[str, Any]]] = [[] for _ in range(num_envs)]
        init_ray(address)
        args = [(make_env, size, start) for size, start in zip(self.sizes, self._starts, strict=True)]
        self.workers = WorkerGroup(EnvPoolWorker, args, restore=self._restore, cpus_per_worker=cpus_per_worker,
                                   wait_for_cpus=wait_for_cpus)
        self.spec = self.workers.started[0]

    def __len__(self) -> int:
        return len(self._worker_of)

    def __getitem__(self, index: int) -> PooledEnv:
        if not -len(self) <= index < len(self):
            raise IndexError(f"env {index} is out of range for a pool of {len(self)}")
        return PooledEnv(self, index % len(self))

    def __iter__(self) -> Iterator[PooledEnv]:
        return (PooledEnv(self, i) for i in range(len(self)))

    @property
    def restarts(self) -> int:
        """Workers replaced after dying, since construction."""
        return self.workers.restarts

    def reset_many(self, indices: Sequence[int], seeds: Sequence[int | None], *,
                   with_state: bool = False) -> list[Any]:
        """`envs[i].reset(seed=seed)` for each pair, one call per worker, in parallel; results in `indices` order,
        each as `(result, env.unwrapped.state())` with `with_state` (the state None where the env declares none)."""
        results = self._call("reset", indices, seeds, with_state)
        for i in indices:
            # A reset that went through starts afresh: nothing before it needs replaying.
            self._calls[i] = self._calls[i][-1:]
        return results

    def step_many(self, indices: Sequence[int], actions: Sequence[Any], *, with_state: bool = False) -> list[Any]:
        """`envs[i].step(action)` for each pair, one call per worker, in parallel; results in `indices` order, each
        as `(result, env.unwrapped.state())` with `with_state`."""
        return self._call("step", indices, actions, with_state)

    def close(self) -> None:
        self.workers.close()

    def _call(self, method: str, indices: Sequence[int], args: Sequence[Any], with_state: bool = False) -> list[Any]:
        indices = list(indices)
        if len(set(indices)) != len(indices) or not all(0 <= i < len(self) for i in indices):
            raise ValueError(f"{method}_many takes distinct env indices in [0, {len(self)}); got {indices}")
        requests: list[list[tuple[int, Any]]] = [[] for _ in self.sizes]
        for i, arg in zip(indices, args, strict=True):
            worker = self._worker_of[i]
            requests[worker].append((i - self._starts[worker], arg))
        try:
            # The state rides along only when asked for: a board or world copied and sent back on every call
            # would slow the pool for nothing. Replays (`_restore`) never ask for it.
            results = self.workers.call(method, [(r, with_state) if r else None for r in requests])
        finally:
            # Recorded even when an env raised: WorkerGroup.call raises only after every worker has run the call,
            # and each env of a worker's batch runs its own (run_each).
            for i, arg in zip(indices, args, strict=True):
                self._calls[i].append((method, arg))
        by_worker = [iter(r or []) for r in results]
        return [next(by_worker[self._worker_of[i]]) for i in indices]

    def _restore(self, worker: int, actor: ActorHandle) -> None:
        """Replays, into a replacement actor, each of the worker's envs since that env's last reset."""
        start = self._starts[worker]
        refs = [getattr(actor, method).remote([(i - start, arg)])
                for i in range(start, start + self.sizes[worker]) for method, arg in self._calls[i]]
        wait_for_replay(refs)


class PooledEnv:
    """Env `index` of a `RayEnvPool`, with the `reset`/`step` of a gymnasium env (one remote call each)."""

    def __init__(self, pool: RayEnvPool, index: int) -> None:
        self.pool, self.index = pool, index
        self.spec = pool.spec

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult:
        if options:
            raise ValueError("RayEnvPool envs reset from a seed only (options are not replayed after a failure)")
        return self.pool.reset_many([self.index], [seed])[0]

    def step(self, action: Any) -> StepResult:
        return self.pool.step_many([self.index], [action])[0]
