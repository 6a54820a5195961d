"""One interface for trainers over creditgym's batched torch envs and any gymnasium vector env.

Both give torch tensors on the trainer's device, same-step autoreset, and the last observation of ended
episodes as compact rows: `info["final_obs"][k]` belongs to the k-th True entry of `info["_final_obs"]`.
"""

from __future__ import annotations

import functools
import pickle
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv


class NonFiniteError(ValueError):
    """Training met a NaN or infinite number (in rewards, observations, a loss, gradients or weights).

    Trainers and learned reward models raise it before an optimiser step or a checkpoint uses the number, so the
    run folder keeps its last good checkpoint. The message names what was not finite, where, and what to change.
    """


class TorchVecEnv:
    """Adapts a vector env to torch tensors on `device`; creditgym batched envs pass through untouched."""

    def __init__(self, env: VectorEnv, device: torch.device) -> None:
        if env.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise ValueError("TorchVecEnv needs a vector env with same-step autoreset (AutoresetMode.SAME_STEP)")
        self.env = env
        self.device = device
        self.native = isinstance(env.unwrapped, VectorEnv) and hasattr(env.unwrapped, "get_state")
        self.num_envs = env.num_envs
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space

    def reset(self, seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed)
        return self._tensor(obs), self._info(info)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        if self.native:
            return self.env.step(actions)
        obs, reward, terminated, truncated, info = self.env.step(actions.cpu().numpy())
        return (self._tensor(obs), self._tensor(reward).float(), self._tensor(terminated).bool(),
                self._tensor(truncated).bool(), self._info(info))

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: the batched env's own state, or the pickled vector env."""
        if self.native:  # through the wrappers, so e.g. shaping keeps its last potential
            return {"native": self.env.get_state()}
        return {"pickled": pickle.dumps(self.env)}

    def set_state(self, state: dict[str, Any]) -> None:
        if self.native:
            self.env.set_state(state["native"])
        else:
            self.env.close()
            self.env = pickle.loads(state["pickled"])

    def close(self) -> None:
        self.env.close()

    def _tensor(self, value: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(value), device=self.device)

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        if self.native:
            return info
        # With same-step autoreset, an ended env's step info sits in final_info and its top level holds the
        # new episode's reset info; trainers want the step's.
        ended = np.asarray(info.get("_final_info", np.zeros(self.num_envs, bool)), dtype=bool)
        final = info.get("final_info", {})
        out: dict[str, Any] = {}
        # The channels of both sides: when every env ended, the top level holds only reset infos, which may lack a
        # channel that the steps paid.
        names = [n for n in {**info.get("reward_components", {}), **final.get("reward_components", {})}
                 if not n.startswith("_")]
        if names:
            out["reward_components"] = {
                name: self._tensor(_merge(info.get("reward_components", {}), final.get("reward_components", {}), name,
                                          ended))
                for name in names
            }
        if "success" in info or "success" in final:
            out["success"] = self._tensor(_merge(info, final, "success", ended).astype(bool))
        if "action_mask" in info:
            out["action_mask"] = self._tensor(np.stack(info["action_mask"])).bool()
        if ended.any():
            out["_final_obs"] = self._tensor(ended)
            out["final_obs"] = self._tensor(np.stack([info["final_obs"][i] for i in np.flatnonzero(ended)]))
        return out


def _merge(current: dict[str, Any], final: dict[str, Any], name: str, ended: np.ndarray) -> np.ndarray:
    """`name` per env: from `final` where the episode ended, else from `current` (0 where absent)."""
    values = np.zeros(len(ended), np.float64)
    if name in current:
        values = np.where(np.asarray(current.get(f"_{name}", True), bool), np.asarray(current[name], np.float64), 0)
    if name in final:
        present = ended & np.asarray(final.get(f"_{name}", True), bool)
        values = np.where(present, np.asarray(final[name], np.float64), values)
    return values.astype(np.float32)


def make_vec_env(env_id: str, num_envs: int, device: torch.device, env_kwargs: dict[str, Any]) -> TorchVecEnv:
    """creditgym's batched torch env when the id has one, else a SyncVectorEnv with same-step autoreset."""
    spec = gym.spec(env_id)
    if spec.vector_entry_point is not None and spec.namespace == "creditgym":
        env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                           device=device, **env_kwargs)
    else:
        # partial, not a lambda, so the vector env pickles into checkpoints.
        env = SyncVectorEnv([functools.partial(gym.make, env_id, **env_kwargs) for _ in range(num_envs)],
                            autoreset_mode=AutoresetMode.SAME_STEP)
    return TorchVecEnv(env, device)
