"""Potential-based reward shaping (Ng, Harada and Russell 1999), for single envs and the batched Sokoban env.

The shaping reward F = γΦ(s') − Φ(s) leaves the optimal policy unchanged: Q'* = Q* − Φ(s). On true termination
Φ(s') := 0, so an episode's shaped return is G' = G − Φ(s_0) when γ = 1; on time-limit truncation Φ(s_T) is
kept, giving G' = G + γ^T Φ(s_T) − Φ(s_0). F goes into its own channel of `info["reward_components"]`.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from creditgym.agents.vec import NonFiniteError, TorchVecEnv
from creditgym.wrappers.channels import with_channel
from creditgym.wrappers.potentials import EnvPotential, ObsPotential, get_potential, potential_names


def _check(gamma: float, channel: str, scale: float) -> None:
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}; use the discount of the agent being trained")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}; it multiplies the potential")
    if not channel:
        raise ValueError("channel must be a non-empty name, e.g. 'shaping'")


def _named(name: str, env: gym.Env) -> EnvPotential:
    potential = get_potential(name)
    potential.check_env(env)
    return potential


def _batched(name: str) -> ObsPotential:
    batched = get_potential(name).batched
    if batched is None:
        valid = [n for n in potential_names() if get_potential(n).batched is not None]
        raise ValueError(f"potential {name!r} has no batched form; batched potentials: {valid}. "
                         "For other envs wrap each env in PotentialShaping instead")
    return batched


class PotentialShaping(gym.Wrapper):
    """Adds F = γΦ(s') − Φ(s) to the reward, as the `shaping` channel of `info["reward_components"]`.

    `potential` is a built-in name (see `creditgym.wrappers.potentials.potential_names()`) or any callable that
    takes the wrapped env and returns a float, reading state through declared methods such as
    `env.unwrapped.potential()` or `env.unwrapped.state()`. Φ(s') is 0 when the episode terminates and is kept
    on truncation. `scale` multiplies Φ, e.g. to put a potential counted in moves on the scale of a per-move
    penalty (the shaping stays potential-based, so the optimal policy is unchanged).
    Other channels are left untouched, so the reward stays the sum of the channels.

    >>> import gymnasium as gym
    >>> import creditgym
    >>> env = PotentialShaping(gym.make("creditgym/Sokoban-6x6-1b-v0"), "box_distance", gamma=1.0)
    >>> obs, info = env.reset(seed=0)
    >>> before = env.unwrapped.potential("box_distance")
    >>> obs, reward, terminated, truncated, info = env.step(0)
    >>> info["reward_components"]["shaping"] == env.unwrapped.potential("box_distance") - before
    True
    >>> reward == sum(info["reward_components"].values())
    True
    """

    def __init__(self, env: gym.Env, potential: EnvPotential | str, gamma: float, *, channel: str = "shaping",
                 scale: float = 1.0) -> None:
        super().__init__(env)
        _check(gamma, channel, scale)
        self.potential: EnvPotential = _named(potential, env) if isinstance(potential, str) else potential
        self._potential_name = potential if isinstance(potential, str) else getattr(potential, "__name__",
                                                                                       repr(potential))
        self.gamma = gamma
        self.channel = channel
        self.scale = scale
        self._last_potential = 0.0
        self._ended = False

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._ended:  # creditgym text envs take steps after the end as invalid actions: no more shaping
            return obs, float(reward), terminated, truncated, with_channel(info, self.channel, 0.0)
        potential = 0.0 if terminated else self._potential()
        shaping = self.gamma * potential - self._last_potential
        self._last_potential = potential
        self._ended = bool(terminated or truncated)
        return obs, float(reward) + shaping, terminated, truncated, with_channel(info, self.channel, shaping)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_potential = self._potential()
        self._ended = False
        return obs, with_channel(info, self.channel, 0.0)

    def _potential(self) -> float:
        """scale · Φ of the env's current state; NaN or inf raises, as it would make every later return NaN."""
        value = self.scale * float(self.potential(self.env))
        if not math.isfinite(value):
            raise NonFiniteError(f"shaping potential {self._potential_name!r} is {value} (scale {self.scale:g}) in "
                                 f"this state of {getattr(self.env.spec, 'id', type(self.env.unwrapped).__name__)}"
                                 "; make the potential return a finite number for every state (e.g. a bound for "
                                 "unsolvable ones)")
        return value


class VectorPotentialShaping(VectorWrapper):
    """`PotentialShaping` for a batched env with same-step autoreset, with Φ computed from observations.

    `potential` maps a batch of observations to one value per env: a built-in name with a batched form
    (`boxes_on_target`, `box_distance`, `solver_distance` for `SokobanVectorEnv`) or any callable
    `(N, *obs_shape) -> (N,)`, multiplied by `scale`. For an episode that ends, Φ(s') comes from
    `info["final_obs"]` (0 when it terminated), and the next episode starts from Φ of the returned observation.
    Shaping is computed in float64 and cast to the reward's dtype. `get_state`/`set_state` include the last Φ,
    for exact resumes.
    """

    def __init__(self, env: VectorEnv, potential: ObsPotential | str, gamma: float, *, channel: str = "shaping",
                 scale: float = 1.0) -> None:
        super().__init__(env)
        _check(gamma, channel, scale)
        if env.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP or not isinstance(
                getattr(env.unwrapped, "device", None), torch.device):
            raise ValueError("VectorPotentialShaping takes creditgym's batched torch envs (same-step autoreset, torch "
                             "tensors, info['final_obs'] holding the rows of the ended episodes); for gymnasium's "
                             "vector envs wrap each env in PotentialShaping instead, e.g. gymnasium.make_vec(id, n, "
                             "vectorization_mode='sync', wrappers=[lambda env: PotentialShaping(env, name, gamma)])")
        self.potential: ObsPotential = _batched(potential) if isinstance(potential, str) else potential
        self.gamma = gamma
        self.channel = channel
        self.scale = scale
        self._last_potential = torch.zeros(env.num_envs, dtype=torch.float64)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        potential = self._potential(obs)
        end_potential = potential.clone()
        if "_final_obs" in info:
            end_potential[torch.as_tensor(info["_final_obs"], device=potential.device)] = self._potential(
                info["final_obs"])
        end_potential[torch.as_tensor(terminated, device=potential.device)] = 0.0
        shaping = (self.gamma * end_potential - self._last_potential).to(reward.dtype)
        self._last_potential = potential
        return obs, reward + shaping, terminated, truncated, with_channel(info, self.channel, shaping)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_potential = self._potential(obs)
        return obs, with_channel(info, self.channel, torch.zeros_like(self._last_potential, dtype=torch.float32))

    def get_state(self) -> dict[str, Any]:
        """The wrapped env's state plus the last Φ of every env."""
        return {"env": self.env.get_state(), "last_potential": self._last_potential.clone()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.env.set_state(state["env"])
        self._last_potential = state["last_potential"].to(self._last_potential.device)

    def _potential(self, obs: torch.Tensor) -> torch.Tensor:
        """scale · Φ of each observation; NaN or inf raises, as in `PotentialShaping`."""
        # on the env's device, also where a potential returns NumPy or CPU tensors for envs on a GPU
        value = self.scale * torch.as_tensor(self.potential(obs)).to(obs.device, torch.float64)
        if not bool(torch.isfinite(value).all()):
            bad = (~torch.isfinite(value)).nonzero().flatten()[:5].tolist()
            raise NonFiniteError(f"shaping potential {getattr(self.potential, '__name__', repr(self.potential))!r} "
                                 f"(scale {self.scale:g}) is not finite for envs {bad}; make it return a finite "
                                 "number for every state (e.g. a bound for unsolvable ones)")
        return value


def make_shaped_vec_env(env_id: str, num_envs: int, device: torch.device | str,
                        env_kwargs: dict[str, Any] | None = None, *, potential: str = "box_distance",
                        gamma: float = 0.99, scale: float = 1.0) -> TorchVecEnv:
    """Like `creditgym.agents.vec.make_vec_env` for creditgym's batched envs, with potential-based shaping by name.

    Pass the agent's own discount as `gamma`. Envs without a batched torch env take `PotentialShaping` per env,
    e.g. `gymnasium.make_vec(env_id, n, vectorization_mode="sync", wrappers=[lambda env: PotentialShaping(env, name,
    gamma)])` (gymnasium refuses `wrappers` with an id's own batched entry point, which it picks by default).
    """
    spec = gym.spec(env_id)
    if spec.vector_entry_point is None or spec.namespace != "creditgym":
        raise ValueError(f"{env_id} has no batched torch env; wrap each env in PotentialShaping instead")
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", device=device,
                       **(env_kwargs or {}))
    return TorchVecEnv(VectorPotentialShaping(env, potential, gamma, scale=scale), torch.device(device))
