"""Rollouts past one machine: creditgym envs stepped by Ray actors, with the same ids and seeds as locally.

- `RayVecEnv`: `TorchVecEnv`'s interface (what PPO steps) over workers that each hold a contiguous slice of the
  batch. With the same seeds it produces exactly the trajectories of `make_vec_env(env_id, num_envs, ...)`.
- `RayEnvPool`: a list of single envs (what the LLM trainers step, one text action per env), held by workers.
- `LocalEnvPool`: the same pool interface over envs in this process.

When a worker dies, the next call that needs it starts a replacement and replays into it what the dead one had
done since its last snapshot (its env state at the last `checkpoint()`, then the resets and actions sent since),
so a rollout carries on with exactly the trajectories it would have had.

    creditgym train --env creditgym/Sokoban-6x6-1b-v0 --rollout-backend ray --num-workers 4 --ray-address auto
"""

from creditgym.distributed.group import WorkerGroup, init_ray, split_evenly
from creditgym.distributed.pool import LocalEnvPool, RayEnvPool
from creditgym.distributed.vec import RayVecEnv

__all__ = ["LocalEnvPool", "RayEnvPool", "RayVecEnv", "WorkerGroup", "init_ray", "split_evenly"]
