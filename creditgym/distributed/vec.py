"""`RayVecEnv`: a batch of envs stepped by Ray actors, each on a contiguous slice, behind TorchVecEnv's interface."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.actor import ActorHandle

from creditgym.agents.vec import make_vec_env
from creditgym.distributed.group import WorkerGroup, init_ray, slice_starts, split_evenly, wait_for_replay
from creditgym.envs import check_env_id


def has_batched_env(env_id: str) -> bool:
    """Whether `make_vec_env` builds creditgym's batched torch env for this id (as opposed to a SyncVectorEnv)."""
    spec = gym.spec(env_id)
    return spec.vector_entry_point is not None and spec.namespace == "creditgym"


class VecEnvWorker:
    """Envs `first_env` .. `first_env + num_envs - 1` of a batch of `total_envs`, built on this worker's CPU."""

    def __init__(self, spec: gym.envs.registration.EnvSpec, num_envs: int, first_env: int, total_envs: int,
                 env_kwargs: dict[str, Any], shaping: str | None, gamma: float, shaping_scale: float = 1.0) -> None:
        import creditgym  # noqa: F401  (registers creditgym's ids first)

        gym.registry.setdefault(spec.id, spec)
        env_id = spec.id
        self.env_id, self.num_envs, self.first_env, self.total_envs = env_id, num_envs, first_env, total_envs
        self.env_kwargs, self.shaping, self.gamma, self.shaping_scale = env_kwargs, shaping, gamma, shaping_scale
        self.envs = None

    def start(self) -> tuple[gym.Space, gym.Space]:
        """Builds the envs (once); returns the single observation and action spaces."""
        # Ray reserves cpus_per_worker cores for this actor; more torch threads than that would fight over them.
        torch.set_num_threads(1)
        from creditgym.wrappers.shaping import make_shaped_vec_env

        if self.envs is None:
            self.batched = has_batched_env(self.env_id)
            kwargs = dict(self.env_kwargs)
            if self.batched:
                kwargs.update(first_env=self.first_env, total_envs=self.total_envs)
            cpu = torch.device("cpu")
            if self.shaping is None:
                self.envs = make_vec_env(self.env_id, self.num_envs, cpu, kwargs)
            else:
                self.envs = make_shaped_vec_env(self.env_id, self.num_envs, cpu, kwargs, potential=self.shaping,
                                                gamma=self.gamma, scale=self.shaping_scale)
        return self.envs.single_observation_space, self.envs.single_action_space

    def reset(self, seed: int) -> bytes:
        """(obs, info), packed."""
        # A batched env draws levels for the whole batch from the common seed and keeps its own rows; gymnasium's
        # vector envs seed env j with seed + j, and this slice's env j is env first_env + j of the batch.
        return pack(self.envs.reset(seed if self.batched else seed + self.first_env))

    def step(self, actions: bytes) -> bytes:
        """(obs, reward, terminated, truncated, info) for packed actions, packed."""
        return pack(self.envs.step(torch.from_numpy(pickle.loads(actions))))

    def get_state(self) -> dict[str, Any]:
        return self.envs.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.envs.set_state(state)


class RayVecEnv:
    """`TorchVecEnv`'s interface (what PPO steps) over `num_workers` Ray actors, each holding a contiguous slice.

    Each worker builds its slice with `make_vec_env` (or `make_shaped_vec_env` when `shaping` names a potential)
    on its own CPU; observations, rewards and infos come back as tensors on `device`, in batch order, with
    same-step autoreset and `final_obs` rows that follow the True entries of `_final_obs`. Slices may be uneven.

    Same trajectories as one local batch: gymnasium vector envs seed env j with `seed + j`, so each worker
    resets with `seed + first_env`; the batched Sokoban env draws levels for the whole batch at every step and
    each worker keeps its rows (`first_env`, `total_envs`). `RayVecEnv(id, N, W)` therefore equals
    `make_vec_env(id, N, ...)` step for step, for any W.

    Fault tolerance: the driver keeps each worker's last snapshot (its env state after `checkpoint()`, taken
    every `snapshot_every` steps and by `get_state`; none right after `reset`, which a fresh actor can replay)
    and the resets and actions sent since. When a call finds a worker dead, a new actor gets the snapshot, the
    calls are replayed into it, and the call is made again, so the batch being collected goes on unchanged. A call
    that raised in some workers' envs ran on every worker all the same (`WorkerGroup.call`), so it is replayed
    too, and raises again where it first did.

    `wait_for_cpus`: see `WorkerGroup` (by default, wait for an autoscaler that can add the CPUs, and refuse at once
    where Ray reports none; wait 600 s for CPUs that other jobs hold). It holds for replacement workers too.
    """

    def __init__(self, env_id: str, num_envs: int, num_workers: int = 2, *, device: str | torch.device = "cpu",
                 env_kwargs: dict[str, Any] | None = None, shaping: str | None = None, gamma: float = 0.99,
                 shaping_scale: float = 1.0,
                 address: str | None = None, cpus_per_worker: float = 1.0, snapshot_every: int = 128,
                 wait_for_cpus: float | None = None) -> None:
        check_env_id(env_id)
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1 step, got {snapshot_every}")
        if shaping is not None and not has_batched_env(env_id):
            raise ValueError(f"shaping needs a batched torch env and {env_id} has none; train it without shaping "
                             "or wrap each env in PotentialShaping")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.sizes = split_evenly(num_envs, num_workers)
        self.snapshot_every = snapshot_every
        init_ray(address)
        spec = gym.spec(env_id)  # shipped along: an id registered only in this process is unknown to the workers
        args = [(spec, size, first, num_envs, dict(env_kwargs or {}), shaping, gamma, shaping_scale)
                for size, first in zip(self.sizes, slice_starts(self.sizes), strict=True)]
        self._snapshots: list[dict[str, Any] | None] = [None] * num_workers
        self._calls: list[list[tuple[str, Any]]] = [[] for _ in range(num_workers)]
        self._steps_since_snapshot = 0
        self.workers = WorkerGroup(VecEnvWorker, args, restore=self._restore, cpus_per_worker=cpus_per_worker,
                                   wait_for_cpus=wait_for_cpus)
        self.single_observation_space, self.single_action_space = self.workers.started[0]

    @property
    def num_workers(self) -> int:
        return len(self.sizes)

    @property
    def restarts(self) -> int:
        """Workers replaced after dying, since construction."""
        return self.workers.restarts

    def reset(self, seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if not isinstance(seed, (int, np.integer)):
            raise ValueError(f"RayVecEnv.reset needs an int seed (got {seed!r}): every worker must draw from it")
        packed = self._call("reset", [int(seed)] * self.num_workers)
        # A reset that went through does not depend on what came before, so a replacement actor only has to
        # replay it.
        self._snapshots = [None] * self.num_workers
        self._calls = [calls[-1:] for calls in self._calls]
        results = [pickle.loads(worker_result) for worker_result in packed]
        obs, infos = zip(*results, strict=True)
        return self._tensor(np.concatenate(obs)), self._tensor(concat_infos(infos, self.sizes))

    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                torch.Tensor, dict[str, Any]]:
        actions = torch.as_tensor(actions).cpu().numpy()
        parts = [pack(part) for part in np.split(actions, np.cumsum(self.sizes)[:-1])]
        results = [pickle.loads(packed) for packed in self._call("step", parts)]
        self._steps_since_snapshot += 1
        if self._steps_since_snapshot >= self.snapshot_every:
            self.checkpoint()
        obs, reward, terminated, truncated, infos = zip(*results, strict=True)
        return (self._tensor(np.concatenate(obs)), self._tensor(np.concatenate(reward)),
                self._tensor(np.concatenate(terminated)), self._tensor(np.concatenate(truncated)),
                self._tensor(concat_infos(infos, self.sizes)))

    def checkpoint(self) -> list[dict[str, Any]]:
        """Snapshots every worker's envs, so that recovering from a failure replays only the steps after this."""
        states = self.workers.call("get_state", [()] * self.num_workers)
        self._snapshots = states
        self._calls = [[] for _ in range(self.num_workers)]
        self._steps_since_snapshot = 0
        return states

    def get_state(self) -> dict[str, Any]:
        """Every worker's env state, in batch order (also taken as the recovery snapshot)."""
        return {"ray_workers": self.checkpoint(), "sizes": list(self.sizes)}

    def set_state(self, state: dict[str, Any]) -> None:
        if "ray_workers" not in state:
            raise ValueError("this env state was saved by the local rollout backend; resume it with "
                             "rollout_backend='local'")
        if list(state["sizes"]) != self.sizes:
            raise ValueError(f"this env state holds {len(state['sizes'])} worker slices of sizes {state['sizes']}; "
                             f"resume with num_workers={len(state['sizes'])} and num_envs={sum(state['sizes'])}")
        # A checkpoint read onto a GPU holds CUDA tensors; the workers may have no GPU.
        states = [_on_cpu(worker_state) for worker_state in state["ray_workers"]]
        self._call("set_state", states)
        self._snapshots = states
        self._calls = [[] for _ in range(self.num_workers)]
        self._steps_since_snapshot = 0

    def close(self) -> None:
        self.workers.close()

    def _call(self, method: str, args: Sequence[Any]) -> list[Any]:
        """`method(arg)` on each worker, recorded for replay; recorded even when an env raised, since
        WorkerGroup.call raises only after every worker has run the call."""
        try:
            return self.workers.call(method, [(arg,) for arg in args])
        finally:
            for calls, arg in zip(self._calls, args, strict=True):
                calls.append((method, arg))

    def _restore(self, index: int, actor: ActorHandle) -> None:
        """Brings a replacement actor to where worker `index` was: its snapshot, then the calls made since."""
        refs = [] if self._snapshots[index] is None else [actor.set_state.remote(self._snapshots[index])]
        # An actor runs its calls in the order they were sent, so they can all go at once.
        refs += [getattr(actor, method).remote(arg) for method, arg in self._calls[index]]
        wait_for_replay(refs)

    def _tensor(self, value: Any) -> Any:
        """Numpy arrays (or dicts of them) as tensors on the trainer's device."""
        if isinstance(value, dict):
            return {name: self._tensor(item) for name, item in value.items()}
        return torch.from_numpy(value).to(self.device)


def pack(value: Any) -> bytes:
    """Tensors (in tuples and dicts) as pickled numpy arrays. Ray passes one bytes object far faster than many
    tensors (a step of 256 Sokoban boards: 1.6 ms against 3.8 ms), and numpy pickles faster than torch."""
    return pickle.dumps(_numpy(value), protocol=pickle.HIGHEST_PROTOCOL)


def _numpy(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _numpy(item) for name, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_numpy(item) for item in value)
    return value.numpy() if isinstance(value, torch.Tensor) else value


def _on_cpu(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _on_cpu(item) for name, item in value.items()}
    return value.cpu() if isinstance(value, torch.Tensor) else value


def concat_infos(infos: Sequence[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """One batch's info from the workers' infos (numpy arrays and dicts of them), in worker (= batch) order.

    `final_obs` rows are joined in worker order: each worker's rows follow the True entries of its own
    `_final_obs`, so the joined rows follow the True entries of the joined mask.
    """
    out = _concat_per_env(infos, sizes, skip=("final_obs", "_final_obs"))
    if any("_final_obs" in info for info in infos):
        out["_final_obs"] = np.concatenate([info.get("_final_obs", np.zeros(size, dtype=bool))
                                            for info, size in zip(infos, sizes, strict=True)])
        out["final_obs"] = np.concatenate([info["final_obs"] for info in infos if "_final_obs" in info])
    return out


def _concat_per_env(dicts: Sequence[dict[str, Any]], sizes: Sequence[int], skip: tuple[str, ...] = ()
                    ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = [name for name in dict.fromkeys(name for d in dicts for name in d) if name not in skip]
    for name in names:
        values = [d.get(name) for d in dicts]
        example = next(value for value in values if value is not None)
        if isinstance(example, dict):
            out[name] = _concat_per_env([value or {} for value in values], sizes)
        elif isinstance(example, np.ndarray):
            # A slice that did not report `name` gets zeros, as TorchVecEnv fills entries an env left out.
            out[name] = np.concatenate([np.zeros((size, *example.shape[1:]), dtype=example.dtype) if value is None
                                        else value for value, size in zip(values, sizes, strict=True)])
        else:
            raise TypeError(f"info[{name!r}] is a {type(example).__name__}; RayVecEnv joins per-env tensors "
                            "(and dicts of them), as TorchVecEnv returns")
    return out
