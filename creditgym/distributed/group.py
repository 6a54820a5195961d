"""Ray actors that each own a slice of the envs, replaced and restored when one dies."""

from __future__ import annotations

import itertools
import os
import socket
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError

# A dead or unreachable actor, or a result lost with its node: the work is redone on a replacement actor.
# Errors raised by the env itself arrive as RayTaskError and propagate unchanged.
WORKER_LOST = (RayActorError, ObjectLostError)

# How long workers wait for CPUs by default on a cluster whose autoscaler can add them, or whose CPUs other jobs
# hold: long enough for a cloud node to boot and join. Also the least time any start is given, CPUs free or not.
AUTOSCALER_WAIT_S = 600.0

# How long Ray's count of free CPUs may lag: a worker killed just before its replacement starts still counts as
# holding its CPUs for about 0.1 s on one machine (raylets report every 100 ms).
CPU_COUNT_LAG_S = 1.0


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
        try:
            ray.init(address=address)
        except ConnectionError as err:  # Ray's own advice names its `--address` flag, not ours
            if "Could not find any running Ray instance" not in str(err):
                raise
            raise ConnectionError(f"no running Ray cluster found for address {address!r}: start one with `ray start "
                                  "--head` first, or leave the address unset (no --ray-address, no $RAY_ADDRESS) to "
                                  "run a private local Ray") from None


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


def autoscaler_cpu_limit() -> float | None:
    """The most CPUs the cluster's autoscaler may grow it to, or None where Ray reports no autoscaler (a fixed
    cluster, or an autoscaler that does not publish its config to Ray, as the v1 autoscaler of `ray up` does not).

    The autoscaler's node groups and their max counts, as Ray Train and Ray Data read them before they wait for
    resources; this is a private Ray API, so a Ray without it counts as reporting no autoscaler.
    """
    try:
        from ray._private.state import state

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001
        return None
    return None if not limits else float(limits.get("CPU", 0))


def wait_for_replay(refs: Sequence[Any]) -> None:
    """Waits for calls replayed into a replacement actor. A call that raised in the env when first made raises
    again and is passed over: the replacement has run it, as the dead worker had, and that is what counts."""
    try:  # one ray.get for all: the common case
        ray.get(list(refs))
    except RayTaskError:
        for ref in refs:
            try:
                ray.get(ref)
            except RayTaskError:
                pass


class WorkerGroup:
    """One Ray actor of `worker_class` per entry of `worker_args`; calls run on all of them in parallel.

    The worker class builds its envs in `start()` (so that a bad env id or argument raises its own error here,
    rather than killing the actor) and returns what the caller wants to know about them. When a call finds its
    actor dead, a new actor is started and handed to `restore(index, actor)`, which must bring it to the state
    the dead one had before the call; then the call is made again. When `max_restarts` replacements in a row die
    too, the group closes and gives up with a RuntimeError.

    CPUs: the workers' start, and each replacement's, waits for CPUs within limits rather than for ever.
    - When the workers need more CPUs than the cluster has, the group refuses at once on a fixed cluster (Ray would
      wait for ever) and waits up to `wait_for_cpus` seconds for them on one whose autoscaler can add them
      (`AUTOSCALER_WAIT_S` by default). A number given for `wait_for_cpus` is also the wait on a cluster where Ray
      reports no autoscaler, for nodes that come from elsewhere.
    - When the cluster has the CPUs but too few are free (other jobs hold them), it warns and waits up to
      `wait_for_cpus` seconds (`AUTOSCALER_WAIT_S` by default) for them to be freed.
    - When the CPUs are free, the start may still take `AUTOSCALER_WAIT_S` (or `wait_for_cpus`, if longer): other
      jobs may take them first.
    `wait_for_cpus=0` never waits. A start that runs out of time raises TimeoutError, saying what to change. A
    replacement is held to the same limits: when it cannot start, or not in time, the group closes (as when
    replacements keep dying) and raises RuntimeError or TimeoutError.
    """

    def __init__(self, worker_class: type, worker_args: Sequence[tuple[Any, ...]], *,
                 restore: Callable[[int, ActorHandle], None], cpus_per_worker: float = 1.0,
                 max_restarts: int = 3, wait_for_cpus: float | None = None) -> None:
        if cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be positive, got {cpus_per_worker}")
        if wait_for_cpus is not None and wait_for_cpus < 0:
            raise ValueError(f"wait_for_cpus must be a number of seconds (0: never wait), got {wait_for_cpus}")
        self._args = list(worker_args)
        # Weakly: a bound method of the pool would make a cycle pool -> group -> pool, which keeps the actors (and
        # their CPUs) alive after the pool is dropped, until Python's cyclic GC happens to run.
        self._restore = weakref.WeakMethod(restore) if hasattr(restore, "__self__") else (lambda: restore)
        self.cpus_per_worker = cpus_per_worker
        self.wait_for_cpus = wait_for_cpus
        self.max_restarts = max_restarts
        self.restarts = 0
        self.actors: list[ActorHandle] = []
        timeout = self._start_timeout(len(self._args), stacklevel=4)
        self._remote_class = ray.remote(num_cpus=cpus_per_worker)(worker_class)
        self.actors = [self._remote_class.remote(*args) for args in self._args]
        try:
            self.started = self.call("start", [()] * len(self._args), timeout=timeout)
        except GetTimeoutError:
            message = self._not_started(f"{len(self._args)} Ray workers x {cpus_per_worker:g} CPU(s)", timeout)
            self.close()  # the actors still waiting for CPUs would hold their request for them
            raise TimeoutError(message) from None
        except BaseException:
            self.close()
            raise

    def _start_timeout(self, starting: int, stacklevel: int) -> float:
        """How long starting `starting` of the workers may take, the others holding their CPUs. Raises ValueError
        when the cluster lacks the workers' CPUs and may not get them."""
        num_workers, cpus, wait = len(self._args), self.cpus_per_worker, self.wait_for_cpus
        needed, total = num_workers * cpus, ray.cluster_resources().get("CPU", 0.0)
        if needed > total:
            need = f"{num_workers} Ray workers x {cpus:g} CPU(s) need {needed:g} CPUs and the Ray cluster has"
            change = "use fewer workers (--num-workers, num_workers) or, from Python, less cpus_per_worker"
            limit = autoscaler_cpu_limit()
            if limit is not None and needed > limit:
                raise ValueError(f"{need} {total:g}, and its autoscaler can grow it to {limit:g} at most; {change}, "
                                 "or raise the autoscaler's limits (max_workers; maxReplicas on KubeRay)")
            if wait is None:
                wait = 0.0 if limit is None else AUTOSCALER_WAIT_S
            if not wait:  # Ray would wait for ever for CPUs that no node has
                raise ValueError(f"{need} {total:g}; {change}, or add nodes to the cluster (if nodes are on their way, "
                                 "pass wait_for_cpus=SECONDS to wait for them; --ray-wait-for-cpus in `creditgym "
                                 "train`)")
            warnings.warn(f"{need} {total:g}; waiting up to {wait:g} s (wait_for_cpus) for nodes to join",
                          stacklevel=stacklevel)
            return wait
        wanted = starting * cpus
        free = free_cpus(wanted)
        if free >= wanted:
            # Free now, yet another job's actor may take them before these workers do: Ray would then wait for
            # ever. The limit also covers building the envs, so it is generous.
            return max(wait or 0.0, AUTOSCALER_WAIT_S)
        wait = AUTOSCALER_WAIT_S if wait is None else wait
        if wait:
            warnings.warn(f"{starting} Ray worker(s) x {cpus:g} CPU(s) need {wanted:g} free CPUs and {free:g} of the "
                          f"Ray cluster's {total:g} are free (other jobs hold the rest); waiting up to {wait:g} s "
                          "(wait_for_cpus) for them", stacklevel=stacklevel)
        return wait

    def _not_started(self, subject: str, timeout: float, they: str = "they") -> str:
        """Why `subject` did not start within `timeout` seconds, and what to change."""
        needed, total = len(self._args) * self.cpus_per_worker, ray.cluster_resources().get("CPU", 0.0)
        longer = "Wait longer (wait_for_cpus; --ray-wait-for-cpus in `creditgym train`)"
        fewer = "use fewer workers (--num-workers, num_workers) or, from Python, less cpus_per_worker"
        if needed > total:
            return (f"{subject} did not start within {timeout:g} s; the Ray cluster has {total:g} of the {needed:g} "
                    f"CPUs {they} need. {longer}, {fewer}, or check that the autoscaler can add nodes (`ray status`)")
        free = ray.available_resources().get("CPU", 0.0)
        return (f"{subject} did not start within {timeout:g} s; the Ray cluster has the {needed:g} CPUs {they} need, "
                f"but other jobs hold them ({free:g} of its {total:g} free). {longer}, stop the jobs that hold them "
                f"(`ray status` shows the cluster's use), or {fewer}")

    def __len__(self) -> int:
        return len(self.actors)

    def call(self, method: str, args_per_worker: Sequence[tuple[Any, ...] | None], timeout: float | None = None
             ) -> list[Any]:
        """`method(*args)` on each worker whose args are not None, in parallel; the results in worker order.

        When the method raises on some workers, every other worker still finishes the call (on a replacement if
        its actor died) before the first of those errors is raised. Either way, then, the call has run once on
        each worker, and callers record it as run for replay. Past `timeout` seconds, raises GetTimeoutError.
        """
        if self.closed:
            raise RuntimeError(f"{method}() on Ray workers that were closed; make a new pool (or env) to go on")
        deadline = None if timeout is None else time.monotonic() + timeout
        refs = [None if args is None else getattr(actor, method).remote(*args)
                for actor, args in zip(self.actors, args_per_worker, strict=True)]
        try:  # one ray.get for all workers: the common case, and faster than one per worker
            fetched = iter(ray.get([ref for ref in refs if ref is not None], timeout=timeout))
            return [None if ref is None else next(fetched) for ref in refs]
        except (*WORKER_LOST, RayTaskError):
            return self._get_each(refs, method, args_per_worker, deadline)

    def _get_each(self, refs: list[Any], method: str, args_per_worker: Sequence[tuple[Any, ...] | None],
                  deadline: float | None) -> list[Any]:
        results, errors = [], []
        for index, (ref, args) in enumerate(zip(refs, args_per_worker, strict=True)):
            if ref is None:
                results.append(None)
                continue
            try:
                try:
                    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                    results.append(ray.get(ref, timeout=timeout))
                except WORKER_LOST as err:
                    results.append(self._call_on_replacement(index, method, args, err))
            except RayTaskError as err:
                errors.append(err)
                results.append(None)
        if errors:
            raise errors[0]
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
                actor = self._replace(index, method)
                return ray.get(getattr(actor, method).remote(*args))
            except WORKER_LOST as err:
                error = err
        # The other workers have run this call and this one has not: their envs no longer go together.
        self.close()
        raise RuntimeError(f"Ray worker {index} died {self.max_restarts + 1} times in a row during {method}(), so "
                           "the workers were closed; check the cluster's logs, then make a new pool (or env) to go on "
                           f"(last error: {error})") from error

    def _replace(self, index: int, method: str) -> ActorHandle:
        actors = self.actors
        if not actors:  # closed (from another thread) during the call: no replacement may outlive close()
            raise RuntimeError(f"{method}() on Ray workers that were closed during the call")
        # It may be unreachable rather than dead; two actors must never step the same slice.
        ray.kill(actors[index])
        # A replacement that cannot start leaves the other workers past a call this one has not run, as when
        # replacements keep dying: the group closes.
        gave_up = (f"The workers were closed, as the others have run {method}() and worker {index} has not; make a "
                   "new pool (or env) to go on")
        try:
            timeout = self._start_timeout(1, stacklevel=2)
        except ValueError as err:
            self.close()
            raise RuntimeError(f"Ray worker {index} died during {method}() and no replacement can start: {err}. "
                               f"{gave_up}") from None
        actor = actors[index] = self._remote_class.remote(*self._args[index])
        if self.closed:  # close() may have gone through the list before this actor joined it
            ray.kill(actor)
            raise RuntimeError(f"{method}() on Ray workers that were closed during the call")
        self.restarts += 1
        try:
            ray.get(actor.start.remote(), timeout=timeout)
        except GetTimeoutError:
            why = self._not_started(f"Ray worker {index} died during {method}() and its replacement "
                                    f"({self.cpus_per_worker:g} CPU(s))", timeout, they="the workers")
            self.close()
            raise TimeoutError(f"{why}. {gave_up}") from None
        except RayTaskError as err:  # its envs could not be built again: it can never catch up with the others
            self.close()
            raise RuntimeError(f"Ray worker {index} died during {method}() and its replacement could not build its "
                               f"envs ({err.cause!r}). {gave_up}") from err
        self._restore()(index, actor)
        return actor


def free_cpus(wanted: float) -> float:
    """The cluster's free CPUs, once there are `wanted` of them or Ray's count has had `CPU_COUNT_LAG_S` to catch up
    with CPUs just freed."""
    deadline = time.monotonic() + CPU_COUNT_LAG_S
    while (free := ray.available_resources().get("CPU", 0.0)) < wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return free
