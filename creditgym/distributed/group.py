"""Ray actors that each own a slice of the envs, replaced and restored when one dies."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ObjectLostError, RayActorError

# A dead or unreachable actor, or a result lost with its node: the work is redone on a replacement actor.
# Errors raised by the env itself arrive as RayTaskError and propagate unchanged.
WORKER_LOST = (RayActorError, ObjectLostError)


def init_ray(address: str | None = None) -> None:
    """Connect to the Ray cluster at `address` ("auto": the one `ray start` runs on this machine; else the one
    in $RAY_ADDRESS, as under `ray job submit`), or start a private local Ray. Does nothing when this process
    is connected already (e.g. to a test's Ray)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None:
        # "local", not None: Ray would otherwise join whatever cluster `ray start` last ran on this machine.
        ray.init(address="local", include_dashboard=False)
    else:
        check_reachable(address)
        ray.init(address=address)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError unless something accepts connections at a `host:port` (or `ray://host:port`) Ray
    address; `ray.init` would otherwise retry an unreachable address for minutes. Other forms ("auto", "local")
    are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"no Ray cluster answers at {address} ({err or type(err).__name__}); start one there "
                              f"with `ray start --head --port {port}` and pass the address it prints, or leave the "
                              "address unset to run a private local Ray") from None


def split_evenly(total: int, parts: int) -> list[int]:
    """Sizes of `parts` contiguous slices of `total` items; the first `total % parts` get one more."""
    if parts < 1:
        raise ValueError(f"need at least 1 worker, got {parts}")
    if total < parts:
        raise ValueError(f"{total} envs cannot be split over {parts} workers: each worker needs at least one env; "
                         "use fewer workers or more envs")
    return [total // parts + (i < total % parts) for i in range(parts)]


def slice_starts(sizes: Sequence[int]) -> list[int]:
    """Index of the first item of each slice."""
    return [0, *itertools.accumulate(sizes)][:-1]


class WorkerGroup:
    """One Ray actor of `worker_class` per entry of `worker_args`; calls run on all of them in parallel.

    The worker class builds its envs in `start()` (so that a bad env id or argument raises its own error here,
    rather than killing the actor) and returns what the caller wants to know about them. When a call finds its
    actor dead, a new actor is started and handed to `restore(index, actor)`, which must bring it to the state
    the dead one had before the call; then the call is made again. When `max_restarts` replacements in a row die
    too, the group gives up with a RuntimeError.
    """

    def __init__(self, worker_class: type, worker_args: Sequence[tuple[Any, ...]], *,
                 restore: Callable[[int, ActorHandle], None], cpus_per_worker: float = 1.0,
                 max_restarts: int = 3) -> None:
        if cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be positive, got {cpus_per_worker}")
        needed, total = len(worker_args) * cpus_per_worker, ray.cluster_resources().get("CPU", 0.0)
        if needed > total:  # Ray would wait for ever for CPUs that no node has
            raise ValueError(f"{len(worker_args)} Ray workers x {cpus_per_worker:g} CPU(s) need {needed:g} CPUs and "
                             f"the Ray cluster has {total:g}; use fewer workers (num_workers) or less cpus_per_worker, "
                             "or add nodes to the cluster")
        self._remote_class = ray.remote(num_cpus=cpus_per_worker)(worker_class)
        self._args = list(worker_args)
        self._restore = restore
        self.max_restarts = max_restarts
        self.restarts = 0
        self.actors: list[ActorHandle] = [self._remote_class.remote(*args) for args in self._args]
        try:
            self.started = self.call("start", [()] * len(self._args))
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.actors)

    def call(self, method: str, args_per_worker: Sequence[tuple[Any, ...] | None]) -> list[Any]:
        """`method(*args)` on each worker whose args are not None, in parallel; the results in worker order."""
        if self.closed:
            raise RuntimeError(f"{method}() on Ray workers that were closed; make a new pool (or env) to go on")
        refs = [None if args is None else getattr(actor, method).remote(*args)
                for actor, args in zip(self.actors, args_per_worker, strict=True)]
        try:  # one ray.get for all workers: the common case, and faster than one per worker
            fetched = iter(ray.get([ref for ref in refs if ref is not None]))
            return [None if ref is None else next(fetched) for ref in refs]
        except WORKER_LOST:
            return self._get_each(refs, method, args_per_worker)

    def _get_each(self, refs: list[Any], method: str, args_per_worker: Sequence[tuple[Any, ...] | None]
                  ) -> list[Any]:
        results = []
        for index, (ref, args) in enumerate(zip(refs, args_per_worker, strict=True)):
            if ref is None:
                results.append(None)
                continue
            try:
                results.append(ray.get(ref))
            except WORKER_LOST as err:
                results.append(self._call_on_replacement(index, method, args, err))
        return results

    @property
    def closed(self) -> bool:
        return not self.actors

    def close(self) -> None:
        """Kills the actors (again: nothing). Calls after this raise RuntimeError."""
        actors, self.actors = self.actors, []
        if ray.is_initialized():  # after ray.shutdown() the actors are gone already
            for actor in actors:
                ray.kill(actor)

    def _call_on_replacement(self, index: int, method: str, args: tuple[Any, ...], error: Exception) -> Any:
        for _ in range(self.max_restarts):
            try:
                self._replace(index)
                return ray.get(getattr(self.actors[index], method).remote(*args))
            except WORKER_LOST as err:
                error = err
        raise RuntimeError(f"Ray worker {index} died {self.max_restarts + 1} times in a row during {method}(); "
                           f"check the cluster's logs (last error: {error})") from error

    def _replace(self, index: int) -> None:
        # It may be unreachable rather than dead; two actors must never step the same slice.
        ray.kill(self.actors[index])
        actor = self._remote_class.remote(*self._args[index])
        self.actors[index] = actor
        self.restarts += 1
        ray.get(actor.start.remote())
        self._restore(index, actor)
