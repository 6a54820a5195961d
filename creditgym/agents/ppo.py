"""PPO for small policies on vector envs, in the style of CleanRL: config, networks, then the training loop.

The loop keeps everything on one device: creditgym's batched Sokoban produces observations as tensors there, so
a GPU run never copies observations to the host. Advantages come from `creditgym.credit.gae`, which bootstraps on
truncation and never on termination.

    creditgym train --env creditgym/Sokoban-6x6-1b-v0 --total-steps 2000000 --seed 1
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator
from torch import nn

import creditgym
from creditgym.agents.config_cli import (
    absolute_level_paths,
    check_coefficients,
    check_env_arguments,
    check_learning_rates,
    check_method_options,
    check_run_config,
    check_unused_options,
    learned_reward_scale_hint,
)
from creditgym.agents.plots import plot_learning_curves, read_metrics
from creditgym.agents.runs import (
    MetricsLogger,
    StopAfterUpdate,
    checkpoint_file,
    device_change,
    keep_checkpoint,
    load_weights,
    outcome_text,
    read_checkpoint,
    reseeded,
    train_in_run_dir,
    training_stopped,
    write_checkpoint,
)
from creditgym.agents.vec import NonFiniteError, TorchVecEnv, make_vec_env
from creditgym.credit import gae
from creditgym.envs.sokoban.vector import SokobanVectorEnv
from creditgym.seeding import seeded_torch
from creditgym.trajectories import (
    TrajectoryWriter,
    VectorRecorder,
    reached_observations,
    remove_run_trajectories,
    run_trajectories,
    sokoban_states,
    trim_trajectories,
)
from creditgym.wrappers.implicit_prm import PRM_SCORES, GridImplicitPRM
from creditgym.wrappers.learned import REWARD_PRECISIONS, EpisodeAssembler, GridRewardModel
from creditgym.wrappers.potentials import potential_names
from creditgym.wrappers.progress import GridProgressEstimator, ProgressAttribution
from creditgym.wrappers.shaping import make_shaped_vec_env

LEARNED_REWARDS = ("spa", "prime", "oprl")
# The settings of the learned reward model, which do nothing without one.
LEARNED_REWARD_OPTIONS = ("learned_reward_coef", "spa_grounding", "prm_beta", "prm_score", "learned_reward_lr",
                          "learned_reward_replay", "learned_reward_epochs", "learned_reward_start",
                          "learned_reward_freeze", "learned_reward_precision")
# The learned-reward settings that only some methods read (the others ignore them).
METHOD_OPTIONS = {"spa_grounding": ("spa",), "prm_beta": ("prime", "oprl"), "prm_score": ("oprl",)}
# The settings of potential-based shaping, which do nothing without a potential.
SHAPING_OPTIONS = ("shaping_scale", "shaping_gamma")


@dataclass
class PPOConfig:
    """Every PPO setting; `creditgym train` turns each field into a flag."""

    env_id: str = "creditgym/Sokoban-6x6-1b-v0"
    """registered env id with array observations (LLM algos: a text env, or a grid env, which plays its text view)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for the env, e.g. {"split": "train"}"""
    total_steps: int = 2_000_000
    """env steps to train for, summed over all envs (rounded down to whole rollouts of num_envs × num_steps)"""
    num_envs: int = 512
    """parallel envs (many envs and short rollouts keep a CPU busy with few, large batches)"""
    num_steps: int = 16
    """steps per env in each rollout"""
    learning_rate: float = 2e-3
    """Adam learning rate (high because 2 epochs of 4 minibatches take few steps per rollout)"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0"""
    gamma: float = 0.99
    """discount factor of the agent's returns (0 learns from each step's reward alone: useful only when shaping
    with an exact potential, see shaping_gamma)"""
    gae_lambda: float = 0.7
    """GAE lambda (0.7 learned Sokoban about twice as fast per env step as the usual 0.95; docs/benchmarks.md)"""
    num_minibatches: int = 4
    """minibatches per epoch"""
    update_epochs: int = 2
    """passes over each rollout"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.2
    """policy ratio clip"""
    clip_vloss: bool = False
    """clip the value loss like the policy (off: it caps value learning at clip_coef per update)"""
    ent_coef: float = 0.01
    """entropy bonus"""
    vf_coef: float = 0.5
    """value loss weight"""
    max_grad_norm: float = 0.5
    """gradient clipping norm"""
    target_kl: float | None = None
    """stop an update early once the approximate KL passes this (checked after each epoch on its last minibatch's
    KL to the rollout policy, as CleanRL; `losses/approx_kl` logs that minibatch's value)"""
    shaping: str | None = None
    """potential for potential-based shaping (box_distance, boxes_on_target, solver_distance,
    solver_distance_tight); none = sparse. charts/episodic_return then includes the shaping (with gamma < 1 and a
    negative potential it grows with episode length); reward/task is the task's return alone"""
    shaping_scale: float = 1.0
    """multiplies the potential, e.g. 0.1 puts solver_distance (in moves) on the scale of Sokoban's -0.1 per move"""
    shaping_gamma: float | None = None
    """discount in the shaping reward gamma * phi(s') - phi(s); none = gamma, which keeps the optimal policy
    (Ng et al. 1999). Set it to the task's own discount and gamma lower to shorten the horizon the agent assigns
    credit over, as heuristic-guided RL does (Cheng et al. 2021): with an exact potential (solver_distance_tight,
    shaping_gamma 1) gamma 0 reached 80% on 6x6 two-box Sokoban in 2.4x fewer env steps than sparse reward, with
    4 epochs (docs/benchmarks.md)"""
    learned_reward: str | None = None
    """learned dense reward trained online from outcomes: spa (SPA progress attribution), prime (implicit PRM,
    cross-entropy) or oprl (implicit PRM, trajectory DPO); the LLM trainers also take igpo; none = env reward only"""
    learned_reward_coef: float = 1.0
    """scale of the learned step reward: SPA's alpha, the implicit PRM's multiplier of beta * log-ratio"""
    spa_grounding: float = 0.0
    """SPA's beta: reward per valid action (one the env's action_mask allows; without a mask, every action)"""
    prm_beta: float = 0.05
    """implicit PRM beta"""
    prm_score: str = "sum"
    """OPRL's trajectory score in its DPO loss: sum of the step log-ratios (the paper) or their mean over the episode
    (OPRL's code)"""
    learned_reward_lr: float = 1e-3
    """Adam learning rate of the learned reward model (SPA's estimator sums its output over whole episodes, so a
    step moves its prediction by up to an episode's length times as much: at 3e-3 it did not fit Sokoban)"""
    learned_reward_replay: int = 1024
    """finished episodes kept in the learned reward model's replay buffer"""
    learned_reward_epochs: int = 1
    """passes of the learned reward model over as many replayed episodes as just finished, per rollout"""
    learned_reward_start: int = 0
    """env steps before the learned reward is paid; until then the model only trains on the finished episodes, so
    the policy never chases an untrained estimate (SPA-RL trains its estimator on exploration rollouts before RL)"""
    learned_reward_freeze: int | None = None
    """env steps after which the learned reward model stops training and is frozen, as in SPA-RL's pipeline (a
    fixed reward cannot be chased); none trains it online for the whole run"""
    learned_reward_precision: str = "float32"
    """float32 or bfloat16 (autocast) for the learned reward model's network: with bfloat16, SPA and PRIME ran 1.2x
    faster on 6x6 two-box Sokoban on an AMX CPU and learned as fast per env step over 2 seeds (docs/results.md); the
    rewards differ slightly, so float32 reproduces the published runs"""
    policy: str = "mlp"
    """network: mlp (any array; fastest on a CPU), cnn (over (C, H, W) grids) or auto (cnn for 3-D observations)"""
    hidden: int = 256
    """hidden width"""
    cnn_channels: int = 16
    """channels of each CNN conv layer"""
    activation: str = "relu"
    """MLP activation: relu or tanh (the CNN always uses relu)"""
    shared_torso: bool = True
    """one torso under both the policy and value heads (half the compute); false gives each its own network"""
    seed: int = 1
    """seeds the env, the network and every sample"""
    device: str = "auto"
    """cpu, cuda or auto (cuda when present)"""
    threads: int = 1
    """torch CPU threads; more than the free cores collapses throughput"""
    precision: str = "auto"
    """float32; bfloat16 (matrix products under bfloat16 autocast; weights, optimiser, losses and log-probabilities
    stay float32), about 2x faster on GPUs from Ampere on and on CPUs with AMX or AVX512-BF16 (measured on an
    AMD EPYC too), slower on other CPUs; or auto: bfloat16 where it is native"""
    run_name: str | None = None
    """run folder name under runs_dir (default: env-seed-time)"""
    runs_dir: str = "runs"
    """where runs are written"""
    checkpoint_every: int = 50
    """updates between checkpoints (0 = only at the end)"""
    keep_checkpoints: bool = False
    """also keep every periodic checkpoint as checkpoint-<env steps>.pt, to study how the models changed"""
    overwrite: bool = False
    """replace an earlier run in the same run folder (its checkpoints, metrics and events) instead of refusing"""
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = True
    """write TensorBoard events"""
    record_envs: int = 0
    """record every episode of the first N envs as trajectory records in the run folder's trajectories.jsonl.gz,
    each appended once it ends (observations, actions, reward channels with shaping and learned rewards, success, action
    masks and, on Sokoban, the board state that creditgym rescore --potential reads); 0 records nothing"""
    rollout_backend: str = "local"
    """where envs step: local (this process) or ray (Ray actors, the same trajectories as local)"""
    num_workers: int = 2
    """Ray rollout workers (actors) the envs are split over, with rollout_backend=ray"""
    ray_address: str | None = None
    """Ray cluster to join (auto = the one `ray start` runs here); none starts a local Ray"""
    ray_wait_for_cpus: float | None = None
    """seconds the Ray workers (and their replacements) may wait for CPUs the cluster lacks or other jobs hold;
    none: 600 for busy CPUs and where Ray reports an autoscaler that can add them, else refuse at once; 0 never
    waits"""

    def __post_init__(self) -> None:
        check_run_config(self)
        reserved = sorted(set(self.env_kwargs) & {"num_envs", "device"})
        if reserved:
            raise ValueError(f"env_kwargs {reserved} are PPO's own settings, passed to every env: drop them from "
                             f"env_kwargs and use {' and '.join('--' + name.replace('_', '-') for name in reserved)}")
        check_env_arguments(self.env_id, self.env_kwargs, batched=True)
        self.env_kwargs = absolute_level_paths(self.env_kwargs)
        positive = ("total_steps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "hidden", "threads",
                    "cnn_channels")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.total_steps < self.batch_size:
            raise ValueError(f"total_steps ({self.total_steps}) is less than one rollout, num_envs * num_steps "
                             f"({self.num_envs} * {self.num_steps} = {self.batch_size}): raise --total-steps to at "
                             f"least {self.batch_size}, or lower --num-envs or --num-steps")
        if self.batch_size % self.num_minibatches:
            raise ValueError(f"num_envs * num_steps ({self.batch_size}) must be divisible by num_minibatches "
                             f"({self.num_minibatches}); change one of them")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("gamma and gae_lambda must be in [0, 1]")
        if self.shaping_gamma is not None and not 0 < self.shaping_gamma <= 1:
            raise ValueError(f"shaping_gamma must be in (0, 1] (the task's discount) or none, got {self.shaping_gamma}")
        if self.shaping is not None and self.shaping_gamma is None and self.gamma == 0:
            raise ValueError("gamma 0 with --shaping needs --shaping-gamma (e.g. 1, the task's discount): shaping at "
                             "the agent's discount 0 pays -Φ(s), the same for every action, so it would teach nothing")
        check_unused_options(self, SHAPING_OPTIONS, applies=self.shaping is not None,
                             needs="a shaping potential", flag="--shaping")
        check_unused_options(self, LEARNED_REWARD_OPTIONS, applies=self.learned_reward is not None,
                             needs="a learned reward", flag="--learned-reward")
        check_method_options(self, METHOD_OPTIONS)
        check_learning_rates(self, "learning_rate", "learned_reward_lr")
        check_coefficients(self)
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"target_kl must be positive or none (no early stop), got {self.target_kl}")
        if self.shaping is not None and self.shaping not in potential_names():
            raise ValueError(f"shaping={self.shaping!r} is not a known potential; use one of {potential_names()}")
        if not (math.isfinite(self.shaping_scale) and self.shaping_scale > 0):
            raise ValueError(f"shaping_scale must be a positive number, got {self.shaping_scale!r}")
        if self.learned_reward is not None and self.learned_reward not in LEARNED_REWARDS:
            raise ValueError(f"learned_reward must be one of {LEARNED_REWARDS} or none, got {self.learned_reward!r}")
        if self.prm_beta <= 0 or self.learned_reward_replay < 1:
            raise ValueError("prm_beta must be positive and learned_reward_replay at least 1")
        if self.prm_score not in PRM_SCORES:
            raise ValueError(f"prm_score must be sum or mean, got {self.prm_score!r}")
        if self.learned_reward_precision not in REWARD_PRECISIONS:
            raise ValueError(f"learned_reward_precision must be float32 or bfloat16, got "
                             f"{self.learned_reward_precision!r}")
        if self.learned_reward_epochs < 1:
            raise ValueError(f"learned_reward_epochs must be at least 1, got {self.learned_reward_epochs}")
        if self.learned_reward_start < 0 or (self.learned_reward_freeze is not None and self.learned_reward_freeze < 0):
            raise ValueError("learned_reward_start and learned_reward_freeze are env steps: use 0 or more "
                             "(learned_reward_freeze none trains the model for the whole run)")
        if self.learned_reward_freeze == 0:
            raise ValueError("learned_reward_freeze 0 freezes the learned reward model before it trains on any "
                             "episode, so it pays an untrained estimate all run: use the env steps it trains for, such "
                             "as --learned-reward-freeze equal to --learned-reward-start (SPA-RL's pipeline), or none")
        if self.policy not in ("auto", "cnn", "mlp"):
            raise ValueError(f"policy must be auto, cnn or mlp, got {self.policy!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, got {self.precision!r}")
        if self.rollout_backend not in ("local", "ray"):
            raise ValueError(f"rollout_backend must be local or ray, got {self.rollout_backend!r}")
        if self.num_workers < 1 or (self.rollout_backend == "ray" and self.num_workers > self.num_envs):
            raise ValueError(f"num_workers must be between 1 and num_envs ({self.num_envs}): each Ray worker steps "
                             f"at least one env; got {self.num_workers}")
        if self.ray_address is not None and self.rollout_backend != "ray":
            raise ValueError("ray_address is only used with rollout_backend='ray'; pass --rollout-backend ray")
        if self.ray_wait_for_cpus is not None and self.ray_wait_for_cpus < 0:
            raise ValueError(f"ray_wait_for_cpus must be seconds ≥ 0 (0: never wait), got {self.ray_wait_for_cpus}")
        if not 0 <= self.record_envs <= self.num_envs:
            raise ValueError(f"record_envs counts the envs whose episodes are recorded, from the first: use 0 (record "
                             f"nothing) to num_envs ({self.num_envs}), got {self.record_envs}")

    @property
    def potential_gamma(self) -> float:
        """The discount the shaping reward uses: shaping_gamma, or the agent's own gamma."""
        return self.gamma if self.shaping_gamma is None else self.shaping_gamma

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return max(1, self.total_steps // self.batch_size)


# -- networks ---------------------------------------------------------------------------------------------------
def _layer(layer: nn.Module, std: float = math.sqrt(2)) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    """Policy and value heads on a CNN over (C, H, W) one-hot grids, or on an MLP over flat vectors.

    `shared=True` puts both heads on one torso: half the compute per sample, and on Sokoban it learned as fast
    per env step as two networks (docs/benchmarks.md). Separate torsos keep the value loss, whose scale follows
    the returns, out of the policy's features.
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, *, kind: str, hidden: int,
                 channels: int = 16, activation: str = "relu", shared: bool = True,
                 precision: str = "float32") -> None:
        super().__init__()
        self.bfloat16 = precision == "bfloat16"

        def torso() -> list[nn.Module]:
            return [] if shared else [_torso(obs_shape, kind, hidden, channels, activation)]

        self.torso = _torso(obs_shape, kind, hidden, channels, activation) if shared else None
        self.actor = nn.Sequential(*torso(), _layer(nn.Linear(hidden, num_actions), 0.01))
        self.critic = nn.Sequential(*torso(), _layer(nn.Linear(hidden, 1), 1.0))

    def forward(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # Env observations can be strided views (channels-first over channels-last storage): compacting them
        # while still uint8 moves a quarter of the bytes, and one-hot inputs are exact in bfloat16.
        obs = obs.contiguous().to(torch.bfloat16 if self.bfloat16 else torch.float32)
        with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            features = obs if self.torso is None else self.torso(obs)
            logits, value = self.actor(features).float(), self.critic(features).squeeze(-1).float()
        if mask is not None:
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        return logits, value


ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _torso(obs_shape: tuple[int, ...], kind: str, hidden: int, channels: int, activation: str) -> nn.Module:
    if kind == "cnn":
        in_channels, height, width = obs_shape
        return nn.Sequential(
            _layer(nn.Conv2d(in_channels, channels, 3, padding=1)), nn.ReLU(),
            _layer(nn.Conv2d(channels, channels, 3, padding=1)), nn.ReLU(), nn.Flatten(),
            _layer(nn.Linear(channels * height * width, hidden)), nn.ReLU(),
        )
    def act() -> nn.Module:  # in place where possible: one allocation less per layer, and autograd allows it
        return nn.ReLU(inplace=True) if activation == "relu" else ACTIVATIONS[activation]()

    return nn.Sequential(
        nn.Flatten(), _layer(nn.Linear(int(np.prod(obs_shape)), hidden)), act(),
        _layer(nn.Linear(hidden, hidden)), act(),
    )


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Categorical samples by the Gumbel-max trick, drawn from an explicit generator (reproducible, resumable)."""
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-20, 1.0)
    return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)


def make_learned_reward(config: PPOConfig, obs_shape: tuple[int, ...], num_actions: int,
                        device: torch.device) -> GridRewardModel | None:
    """The learned reward model `config.learned_reward` names, seeded from the run's seed, or None."""
    name = config.learned_reward
    if name is None:
        return None
    if name == "spa":
        estimator = GridProgressEstimator(obs_shape, num_actions, hidden=config.hidden, seed=config.seed + 1,
                                          precision=config.learned_reward_precision).to(device)
        return ProgressAttribution(estimator, alpha=config.learned_reward_coef, beta=config.spa_grounding,
                                   learning_rate=config.learned_reward_lr,
                                   replay_episodes=config.learned_reward_replay, epochs=config.learned_reward_epochs,
                                   seed=config.seed)
    return GridImplicitPRM(obs_shape, num_actions, hidden=config.hidden, beta=config.prm_beta,
                           coef=config.learned_reward_coef, loss="ce" if name == "prime" else "dpo",
                           score=config.prm_score, learning_rate=config.learned_reward_lr,
                           replay_episodes=config.learned_reward_replay, epochs=config.learned_reward_epochs,
                           seed=config.seed + 1, precision=config.learned_reward_precision).to(device)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` becomes bfloat16 on CUDA devices that support it and on CPUs with AMX bfloat16 tiles, else float32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float32"
    capabilities = torch.cpu.get_capabilities()
    return "bfloat16" if capabilities.get("amx_bf16") or capabilities.get("avx512_bf16") else "float32"


def _recorded_precision(resume: str | Path) -> str | None:
    """The precision a run's config.json says it trained with (None where there is none to read)."""
    try:
        record = json.loads((checkpoint_file(resume).parent / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = record.get("precision") if isinstance(record, dict) else None
    return value if value in ("float32", "bfloat16") else None


def resolve_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


# -- the trainer ------------------------------------------------------------------------------------------------
class PPO:
    """Builds the envs and the network from a `PPOConfig`, then `learn()`s. `resume=` continues a checkpoint."""

    def __init__(self, config: PPOConfig, *, resume: str | Path | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        # The initialisers' QR decompositions (orthogonal_) round differently with more threads: build on one, so
        # that a seed gives the same network whatever --threads is.
        torch.set_num_threads(1)
        # The initialisers (the network's, a learned reward's) draw from torch's global generators: seeded here, and
        # the caller's generators are left as they were. Training itself draws only from self.generator.
        self.precision = resolve_precision(config.precision, self.device)
        if resume is not None and config.precision == "auto":
            # auto depends on the machine: a run resumed elsewhere keeps the arithmetic it started with
            self.precision = _recorded_precision(resume) or self.precision
        with seeded_torch(config.seed, self.device):
            if config.rollout_backend == "ray":
                from creditgym.distributed import RayVecEnv

                # Snapshots once per rollout, so recovering from a dead worker replays at most one rollout.
                self.envs: TorchVecEnv | RayVecEnv = RayVecEnv(
                    config.env_id, config.num_envs, config.num_workers, device=self.device,
                    env_kwargs=config.env_kwargs, shaping=config.shaping, gamma=config.potential_gamma,
                    shaping_scale=config.shaping_scale, address=config.ray_address, snapshot_every=config.num_steps,
                    wait_for_cpus=config.ray_wait_for_cpus)
            elif config.shaping is None:
                self.envs = make_vec_env(config.env_id, config.num_envs, self.device, config.env_kwargs)
            else:
                self.envs = make_shaped_vec_env(config.env_id, config.num_envs, self.device, config.env_kwargs,
                                                potential=config.shaping, gamma=config.potential_gamma,
                                                scale=config.shaping_scale)
            obs_space, act_space = self.envs.single_observation_space, self.envs.single_action_space
            if not isinstance(act_space, spaces.Discrete) or not isinstance(obs_space, spaces.Box):
                hint = ("it is a text env: train an LLM policy on it with --algo grpo --model smollm2-135m"
                        if isinstance(obs_space, spaces.Text) else "use obs_mode='array' for grid envs")
                raise ValueError(f"PPO needs Box observations and Discrete actions; {config.env_id} has "
                                 f"{type(obs_space).__name__} observations and {type(act_space).__name__} actions "
                                 f"({hint})")
            kind = config.policy if config.policy != "auto" else ("cnn" if len(obs_space.shape) == 3 else "mlp")
            self.agent = ActorCritic(obs_space.shape, int(act_space.n), kind=kind, hidden=config.hidden,
                                     channels=config.cnn_channels, activation=config.activation,
                                     shared=config.shared_torso,
                                     precision=self.precision).to(self.device)
            # The fused kernel is 4-5x faster than the per-tensor loop on a CPU, where small networks are
            # overhead-bound.
            self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=config.learning_rate, eps=1e-5, fused=True)
            self.learned_reward = make_learned_reward(config, obs_space.shape, int(act_space.n), self.device)
        torch.set_num_threads(config.threads)
        self.episode_assembler = EpisodeAssembler(config.num_envs)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self.global_step = 0
        self.update = 0
        self.saved_update: int | None = None  # the update run_dir/checkpoint.pt holds, once this trainer saved it
        self.device_changes: list[dict[str, Any]] = []  # resumes on another device, after which it is not bit-exact
        self.budget_changes: list[dict[str, Any]] = []  # resumes to another total_steps, which re-times anneal_lr
        self.run_dir = Path(config.runs_dir) / (config.run_name or
                                               f"{config.env_id.split('/')[-1]}-s{config.seed}-{int(time.time())}")
        self.next_obs, info = self.envs.reset(seed=config.seed)
        self.next_mask = info.get("action_mask")
        self.episode = _EpisodeTracker(config.num_envs, self.device)
        self.recorder = None
        if config.record_envs:
            k = config.record_envs
            self.recorder = VectorRecorder(config.env_id, config.seed, states=_board_states(config))
            self.recorder.start(self.next_obs[:k], masks=None if self.next_mask is None else self.next_mask[:k])
        if resume is not None:
            self.load_checkpoint(resume)

    def close(self) -> None:
        """Close the envs: Ray's workers give their CPUs back now rather than when the trainer is collected (it is
        in reference cycles, so only Python's cycle collector frees it)."""
        self.envs.close()

    def learn(self, until_steps: int | None = None) -> dict[str, float]:
        """Train to `total_steps` (or stop early at `until_steps`, e.g. to test resuming); returns last metrics.

        Ctrl-C stops after the current update and saves a checkpoint there, then raises KeyboardInterrupt.
        """
        cfg = self.config
        progress = _Progress(cfg.progress, total=cfg.total_steps, start=self.global_step)

        def plot() -> None:
            plot_learning_curves({cfg.env_id: read_metrics(self.run_dir)}, self.run_dir / "learning_curve.png",
                                 title=f"PPO on {cfg.env_id} (seed {cfg.seed})")

        try:
            metrics = train_in_run_dir(
                self.run_dir, fresh=self.update == 0, overwrite=cfg.overwrite, tensorboard=cfg.tensorboard,
                record=self._run_record(), resumed_at=("global_step", self.global_step), global_step=self.global_step,
                progress=progress, unit="update", save=self.save_checkpoint,
                loop=lambda logger, ctrl_c: self._updates(until_steps, logger, progress, ctrl_c))
        except KeyboardInterrupt:  # stopped with Ctrl-C: the curve so far, as a finished run has
            if (self.run_dir / "metrics.jsonl").exists():
                plot()
            raise
        if self.global_step >= cfg.total_steps or self.update >= cfg.num_updates:
            plot()
        return metrics

    def _updates(self, until_steps: int | None, logger: MetricsLogger, progress: _Progress,
                 ctrl_c: StopAfterUpdate) -> dict[str, float]:
        """The training loop: rollout, learned rewards and advantages, optimisation and logging, once per update."""
        cfg, dev = self.config, self.device
        T, N = cfg.num_steps, cfg.num_envs
        obs_shape = self.envs.single_observation_space.shape
        obs_buf = torch.zeros((T, N, *obs_shape), dtype=self.next_obs.dtype, device=dev)
        mask_buf = None if self.next_mask is None else torch.zeros((T, N, *self.next_mask.shape[1:]), dtype=torch.bool,
                                                                   device=dev)
        actions = torch.zeros((T, N), dtype=torch.int64, device=dev)
        rewards, values, final_values = (torch.zeros((T, N), device=dev) for _ in range(3))
        logit_buf = torch.zeros((T, N, self.envs.single_action_space.n), device=dev)
        terminated, truncated, success = (torch.zeros((T, N), dtype=torch.bool, device=dev) for _ in range(3))
        recording = None if self.recorder is None else _RecordedRollout(T, cfg.record_envs, self.next_obs)
        metrics: dict[str, float] = {}
        stop_at = min(cfg.total_steps, until_steps or cfg.total_steps)
        start_time, start_step = time.perf_counter(), self.global_step
        self._prepare_trajectories()

        while self.update < cfg.num_updates and self.global_step < stop_at and not ctrl_c.requested:
            if cfg.anneal_lr:
                self.optimizer.param_groups[0]["lr"] = cfg.learning_rate * (1.0 - self.update / cfg.num_updates)

            # 1. rollout
            with torch.no_grad():
                final_values.zero_()  # stays 0 where episodes terminate: termination never bootstraps
                final_obs_finite = torch.ones((), dtype=torch.bool, device=dev)
                if recording is not None:
                    recording.begin()
                for t in range(T):
                    obs_buf[t] = self.next_obs
                    if mask_buf is not None:
                        mask_buf[t] = self.next_mask
                    logits, values[t] = self.agent(self.next_obs, self.next_mask)
                    logit_buf[t] = logits
                    actions[t] = action = sample_actions(logits, self.generator)
                    self.next_obs, rewards[t], terminated[t], truncated[t], info = self.envs.step(action)
                    self.next_mask = info.get("action_mask")
                    if "success" in info:
                        success[t] = info["success"]
                    if "_final_obs" in info:
                        if info["final_obs"].is_floating_point():
                            final_obs_finite &= info["final_obs"].isfinite().all()
                        # Truncated episodes bootstrap from their own last observation, not the next episode's first.
                        bootstrap = truncated[t][info["_final_obs"]]
                        if bootstrap.any():
                            ended_rows = info["_final_obs"].nonzero().squeeze(1)[bootstrap]
                            final_values[t][ended_rows] = self.agent(info["final_obs"][bootstrap])[1]
                    self.episode.step(rewards[t], info, terminated[t] | truncated[t])
                    if recording is not None:
                        recording.step(t, self.next_obs, rewards[t], info)
                last_value = self.agent(self.next_obs, self.next_mask)[1]
                next_values = torch.where(terminated | truncated, final_values,
                                          torch.cat((values[1:], last_value[None])))
                logprobs = torch.log_softmax(logit_buf, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            self.global_step += T * N
            # Whether each stage of this update stayed finite, as flags on the device: read with one sync at the end.
            checks = _FiniteChecks()
            checks.add("env_rewards", rewards)
            if obs_buf.is_floating_point():
                checks.add("env_observations", obs_buf)
            checks.add_flag("env_final_observations", final_obs_finite)
            checks.add("rollout_logits", logit_buf)
            checks.add("rollout_values", values, next_values)

            # 2. learned dense rewards, then advantages
            learned_metrics, learned_rewards = self._add_learned_rewards(obs_buf, mask_buf, actions, rewards,
                                                                         terminated, truncated, success)
            if self.learned_reward is not None:
                checks.add("learned_rewards", rewards)
            advantages, returns = gae(rewards, values, next_values, terminated, truncated,
                                      gamma=cfg.gamma, lam=cfg.gae_lambda)
            checks.add("advantages", advantages, returns)

            # 3. optimise
            # Rows are gathered from flat views with index_select: 5x faster than indexing a (B, C, H, W) tensor.
            b_obs = obs_buf.reshape(T * N, -1)
            b_mask = None if mask_buf is None else mask_buf.reshape(T * N, -1)
            b_actions, b_logprobs = actions.reshape(-1), logprobs.reshape(-1)
            b_adv, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
            minibatch = cfg.batch_size // cfg.num_minibatches
            clipfracs, approx_kl = [], torch.zeros((), device=dev)
            for epoch in range(cfg.update_epochs):
                order = torch.randperm(cfg.batch_size, generator=self.generator, device=dev)
                for start in range(0, cfg.batch_size, minibatch):
                    idx = order[start:start + minibatch]
                    logits, new_value = self.agent(b_obs.index_select(0, idx).view(-1, *obs_shape),
                                                   None if b_mask is None else b_mask.index_select(0, idx))
                    log_probs = torch.log_softmax(logits, -1)
                    new_logprob = log_probs.gather(1, b_actions.index_select(0, idx)[:, None]).squeeze(1)
                    entropy = -(log_probs.exp() * log_probs).sum(-1)
                    log_ratio = new_logprob - b_logprobs[idx]
                    ratio = log_ratio.exp()
                    with torch.no_grad():
                        approx_kl = ((ratio - 1) - log_ratio).mean()
                        clipfracs.append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean())
                    adv = b_adv[idx]
                    if cfg.norm_adv and len(adv) > 1:  # the std of one advantage is NaN: left as it is (as SB3)
                        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                    if cfg.clip_vloss:
                        clipped = b_values[idx] + (new_value - b_values[idx]).clamp(-cfg.clip_coef, cfg.clip_coef)
                        v_loss = 0.5 * torch.max((new_value - b_returns[idx]) ** 2,
                                                 (clipped - b_returns[idx]) ** 2).mean()
                    else:
                        v_loss = 0.5 * ((new_value - b_returns[idx]) ** 2).mean()
                    entropy_loss = entropy.mean()
                    loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss
                    self.optimizer.zero_grad()
                    loss.backward()
                    grad_norm = nn.utils.clip_grad_norm_(self.agent.parameters(), cfg.max_grad_norm)
                    checks.add_scalars(f"epoch {epoch + 1}, minibatch {start // minibatch + 1}",
                                       policy_loss=pg_loss, value_loss=v_loss, entropy=entropy_loss,
                                       grad_norm=grad_norm)
                    self.optimizer.step()
                if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                    break
            checks.add("weights", *self.agent.parameters())
            failed = checks.first_failure()
            if failed is not None:  # before the update counts, is logged or saved: the checkpoint stays the last good
                raise self._non_finite_error(*failed, rewards=rewards, obs=obs_buf, returns=returns)
            self.update += 1
            if recording is not None:
                self._record(recording, obs_buf, mask_buf, actions, terminated, truncated, learned_rewards)

            # 4. log
            # Population variances: a batch of one has variance 0, not NaN; with constant returns the ratio is
            # undefined and the metric is left out.
            returns_var = b_returns.var(unbiased=False)
            explained_var = 1 - (b_returns - b_values).var(unbiased=False) / returns_var
            sps = (self.global_step - start_step) / (time.perf_counter() - start_time)
            metrics = {
                "global_step": self.global_step,
                "charts/learning_rate": self.optimizer.param_groups[0]["lr"],
                "charts/sps": sps,
                "losses/value_loss": v_loss.item(),
                "losses/policy_loss": pg_loss.item(),
                "losses/entropy": entropy_loss.item(),
                "losses/approx_kl": approx_kl.item(),
                "losses/clipfrac": torch.stack(clipfracs).mean().item(),
                **({"losses/explained_variance": explained_var.item()} if returns_var.item() > 0 else {}),
                **self.episode.summary(),
                **learned_metrics,
            }
            logger.log(metrics)
            progress.advance(self.global_step, metrics)
            if cfg.checkpoint_every and self.update % cfg.checkpoint_every == 0:
                path = self.save_checkpoint()
                if cfg.keep_checkpoints:
                    keep_checkpoint(path, self.global_step)
        return metrics

    def _add_learned_rewards(self, obs: torch.Tensor, masks: torch.Tensor | None, actions: torch.Tensor,
                             rewards: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
                             success: torch.Tensor) -> tuple[dict[str, float], torch.Tensor | None]:
        """Train the learned reward model on the episodes that just finished, then add its rewards in place.

        Returns the metrics and the rewards added ((T, N), zeros before `learned_reward_start`; None without a model).
        """
        model = self.learned_reward
        if model is None:
            return {}, None
        # An action is valid and effective when the env's mask allowed it; without a mask every action counts.
        valid = (torch.ones_like(terminated) if masks is None
                 else masks.gather(-1, actions.unsqueeze(-1)).squeeze(-1))
        # `global_step` already counts this rollout: the schedule looks at the step the rollout began at.
        rollout_start = self.global_step - rewards.numel()
        freeze = self.config.learned_reward_freeze
        metrics: dict[str, float] = {}
        training, paying = freeze is None or rollout_start < freeze, rollout_start >= self.config.learned_reward_start
        # An implicit PRM's reference is frozen: one pass over the rollout serves its rewards and, kept with the
        # episodes, every later training step on them (which would otherwise run the reference again).
        reference = (model.reference_logprobs(obs, actions) if isinstance(model, GridImplicitPRM) and training
                     else None)
        if training:
            episodes = self.episode_assembler.add_rollout(obs, actions, valid, terminated, truncated, success,
                                                          reference_logprobs=reference)
            metrics = model.update(episodes)
        if not paying:
            return {**metrics, f"reward/{model.channel}_per_step": 0.0}, torch.zeros_like(rewards)
        dense = (model.dense_rewards(obs, actions, valid) if reference is None
                 else model.dense_rewards(obs, actions, valid, reference_logprobs=reference))
        rewards += dense
        return {**metrics, f"reward/{model.channel}_per_step": dense.mean().item()}, dense

    # -- trajectory records -------------------------------------------------------------------------------------
    def _prepare_trajectories(self) -> None:
        """A fresh run starts its trajectory file anew, as metrics.jsonl; a resumed one drops the records past its
        checkpoint, whose updates it plays again (the same rollouts, so no episode is lost or doubled)."""
        self.trajectories_path = run_trajectories(self.run_dir, resumed=self.update > 0)
        if self.update > 0:
            trim_trajectories(self.trajectories_path, self.update, key="update")
        elif self.recorder is not None or self.config.overwrite:  # not another run's records in this one
            remove_run_trajectories(self.run_dir)

    def _record(self, rollout: _RecordedRollout, obs: torch.Tensor, masks: torch.Tensor | None, actions: torch.Tensor,
                terminated: torch.Tensor, truncated: torch.Tensor, learned_rewards: torch.Tensor | None) -> None:
        """Hand the recorded envs' rows of this update's rollout to the recorder; append the episodes that ended."""
        assert self.recorder is not None
        k = self.config.record_envs
        channels = dict(rollout.channels)
        if learned_rewards is not None:  # the env's channels plus this one sum to the reward PPO trained on
            assert self.learned_reward is not None
            channels[self.learned_reward.channel] = learned_rewards[:, :k]
        finished = self.recorder.add(
            actions=actions[:, :k], reached=rollout.reached, next_obs=torch.cat((obs[1:, :k], self.next_obs[None, :k])),
            terminated=terminated[:, :k], truncated=truncated[:, :k], components=channels,
            success=rollout.success if rollout.reports_success else None,
            masks=None if masks is None else torch.cat((masks[1:, :k], self.next_mask[None, :k])),
            metadata={"update": self.update})
        if finished:
            with TrajectoryWriter(self.trajectories_path) as writer:
                for episode in finished:
                    writer.write(episode)

    def _non_finite_error(self, stage: str, where: str, *, rewards: torch.Tensor, obs: torch.Tensor,
                          returns: torch.Tensor) -> NonFiniteError:
        """What was not finite first in this update, where, and what to change (only runs once training failed)."""
        cfg = self.config
        rollout = self.global_step - rewards.numel()
        lr = f"lower --learning-rate (now {cfg.learning_rate:g})"
        learned = learned_reward_scale_hint(cfg)
        scale = "scale the rewards down, e.g. in a reward wrapper"
        if cfg.learned_reward is not None:
            scale += f"; the learned reward ({cfg.learned_reward}) counts too: {learned}"

        def first_bad(values: torch.Tensor) -> str:
            index = [int(i) for i in (~values.isfinite()).nonzero()[0]]
            return f"{values[tuple(index)].item()} at rollout step {index[0]} of env {index[1]}"

        def largest(values: torch.Tensor) -> str:
            finite = values[values.isfinite()].float().abs()
            return f"{finite.max().item():.3g}" if finite.numel() else "none finite"

        if stage == "env_rewards":
            channels = sorted({name for name, total in self.episode.channels.items() if not total.isfinite().all()}
                              | {name.removeprefix("reward/") for name, parts in self.episode.finished.items()
                                 if name.startswith("reward/") and not all(p.isfinite().all() for p in parts)})
            what = f"the env's reward: {first_bad(rewards)}"
            if channels:
                what += f" (reward channel {', '.join(map(repr, channels))})"
            shaping = f" or the shaping potential {cfg.shaping!r}" if cfg.shaping else ""
            fix = (f"fix the reward of {cfg.env_id}{shaping}, or wrap the env to replace NaN and inf rewards "
                   "(rewards become float32: beyond ±3.4e38 they are inf)")
        elif stage == "env_observations":
            what = f"the env's observation the policy saw: {first_bad(obs)}"
            fix = f"fix the observations of {cfg.env_id}, or wrap the env to replace NaN and inf in them"
        elif stage == "env_final_observations":
            what = "the last observation of an episode that ended (info['final_obs'], which truncation bootstraps from)"
            fix = f"fix the observations of {cfg.env_id}, or wrap the env to replace NaN and inf in them"
        elif stage in ("rollout_logits", "rollout_values"):
            what = f"the policy's {'logits' if stage == 'rollout_logits' else 'value estimates'} in the rollout"
            fix = (f"the network's outputs overflowed: {lr}, or scale the observations down (the largest "
                   f"|observation| in this rollout is {largest(obs)})")
        elif stage == "learned_rewards":
            what = f"the rewards of the learned reward model ({cfg.learned_reward}): {first_bad(rewards)}"
            fix = learned
        elif stage == "advantages":
            what = "the advantages or returns from GAE"
            fix = f"the rewards (largest |reward| {largest(rewards)}) overflow float32 sums; {scale}"
        elif stage == "weights":
            what = "the network's weights after the optimiser steps"
            fix = lr
        else:
            what = f"the {stage.replace('_', ' ')} at {where}"
            biggest = returns[returns.isfinite()].abs().max().item() if returns.isfinite().any() else math.inf
            fix = (f"the returns reach |G| = {biggest:.3g}, too large to square in float32; {scale}" if biggest > 1e15
                   else f"the optimisation diverged: {lr}")
        return training_stopped(f"PPO update {self.update + 1} (env steps {rollout}-{self.global_step})", self.run_dir,
                                None if self.saved_update is None else f"update {self.saved_update}", what, fix)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Model, optimiser, every RNG, the env (level cursor, boards), episode trackers and counters."""
        path = Path(path) if path else self.run_dir / "checkpoint.pt"
        state = {
            "config": asdict(self.config),
            "device": str(self.device),
            "device_changes": self.device_changes,
            "budget_changes": self.budget_changes,
            "model": self.agent.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "env": self.envs.get_state(),
            "next_obs": self.next_obs,
            "next_mask": self.next_mask,
            "episode": self.episode.state_dict(),
            "learned_reward": None if self.learned_reward is None else self.learned_reward.state_dict(),
            "episode_assembler": self.episode_assembler.state_dict(),
            "recorder": None if self.recorder is None else self.recorder.state_dict(),
            "global_step": self.global_step,
            "update": self.update,
        }
        written = write_checkpoint(state, path)
        if written == self.run_dir / "checkpoint.pt":
            self.saved_update = self.update
        return written

    def load_checkpoint(self, path: str | Path) -> None:
        path, state = read_checkpoint(path, self.device, kind="PPO", keys=_CHECKPOINT_KEYS)
        saved, now = state["config"], asdict(self.config)
        # The env's state, the episode trackers, the reward model and the episodes being recorded are restored as
        # they were: they must fit (a checkpoint from before recording existed recorded nothing).
        for name in ("env_id", "num_envs", "learned_reward", "record_envs"):
            if saved.get(name, 0 if name == "record_envs" else now[name]) != now[name]:
                raise ValueError(f"checkpoint {path} was made with {name}={saved[name]!r}, this config has "
                                 f"{now[name]!r}; resume a run with its own config (creditgym train --resume DIR)")
        differences = [f"{name}={saved[name]!r} there, {now[name]!r} here" for name in _NETWORK_FIELDS
                       if name in saved and saved[name] != now[name]]
        load_weights(self.agent, state["model"], path, hint=f" ({'; '.join(differences)})" if differences else "")
        self.optimizer.load_state_dict(state["optimizer"])
        self.device_changes = list(state.get("device_changes", []))
        self.budget_changes = list(state.get("budget_changes", []))
        if saved.get("total_steps", now["total_steps"]) != now["total_steps"] and self.config.anneal_lr:
            self.budget_changes.append({"update": state["update"], "from": saved["total_steps"],
                                        "to": now["total_steps"]})
            done = state["update"] * self.config.batch_size
            was = self.config.learning_rate * (1 - done / saved["total_steps"])
            now_lr = self.config.learning_rate * (1 - state["update"] / self.config.num_updates)
            warnings.warn(f"resuming {path} with total_steps {now['total_steps']} (it trained with "
                          f"{saved['total_steps']}): anneal_lr now decays to 0 over the new budget, so the learning "
                          f"rate moves from {was:.3g} to {now_lr:.3g}, and the run is not the one a single run to "
                          f"{now['total_steps']} gives; config.json records this under budget_changes", stacklevel=2)
        moved = device_change(path, state, self.device, update=state["update"], global_step=state["global_step"])
        env_state = state["env"]
        if moved is None:
            # Generator states must be CPU tensors, and map_location put them on the device.
            self.generator.set_state(state["generator"].cpu())
            env_state = _with_env_generators(env_state, lambda kept, _: kept.cpu())
        else:
            self.device_changes.append(moved)
            seed, update = self.config.seed, state["update"]
            self.generator.set_state(reseeded(self.device, seed, update, "actions").get_state())
            if self.config.rollout_backend == "local":  # Ray's envs live on the workers' CPUs and restore exactly
                env_state = _with_env_generators(
                    env_state, lambda _, where: reseeded(self.device, seed, update, where).get_state())
        self.envs.set_state(env_state)
        self.next_obs, self.next_mask = state["next_obs"], state["next_mask"]
        self.episode.load_state_dict(state["episode"])
        if self.learned_reward is not None:
            self.learned_reward.load_state_dict(state["learned_reward"])
        if "episode_assembler" in state:  # checkpoints from before learned rewards have none
            self.episode_assembler.load_state_dict(state["episode_assembler"])
        if self.recorder is not None and state.get("recorder") is not None:
            self.recorder.load_state_dict(state["recorder"])
        self.global_step, self.update = state["global_step"], state["update"]
        self.run_dir = path.parent
        self.saved_update = self.update if path == self.run_dir / "checkpoint.pt" else None

    def _run_record(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "seed": self.config.seed, "creditgym": creditgym.__version__,
                "torch": torch.__version__, "device": str(self.device),
                "precision": self.precision,
                "device_changes": self.device_changes, "budget_changes": self.budget_changes}


def _with_env_generators(state: Any, change: Callable[[torch.Tensor, str], torch.Tensor], where: str = "env") -> Any:
    """An env's `get_state()` with `change(generator_state, where)` in place of each "generator" entry, the state of a
    torch.Generator on the env's device (batched envs keep one; wrappers nest their env's state under a key)."""
    if not isinstance(state, dict):
        return state
    return {key: change(value, where) if key == "generator" else _with_env_generators(value, change, f"{where}/{key}")
            for key, value in state.items()}


def _board_states(config: PPOConfig) -> Callable[[np.ndarray], list[dict[str, Any]]] | None:
    """The recorded state of each step where PPO steps the batched Sokoban env (see `make_vec_env`): the board,
    read off the observation; other vector envs' records hold no state."""
    spec = gym.spec(config.env_id)
    entry = spec.vector_entry_point
    if entry is None or spec.namespace != "creditgym":
        return None
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    if not (isinstance(creator, type) and issubclass(creator, SokobanVectorEnv)):
        return None
    return functools.partial(sokoban_states, walled=config.env_kwargs.get("obs_mode") == "egocentric")


class _RecordedRollout:
    """What a rollout's buffers lack for the recorded envs (the first `envs`): the observation each step reached
    (an ended episode's last, not the next one's first), the reward channels and success. Filled on the device."""

    def __init__(self, steps: int, envs: int, obs: torch.Tensor) -> None:
        self.envs = envs
        self.reached = torch.zeros((steps, envs, *obs.shape[1:]), dtype=obs.dtype, device=obs.device)
        self.success = torch.zeros((steps, envs), dtype=torch.bool, device=obs.device)
        self.channels: dict[str, torch.Tensor] = {}
        self.reports_success = False

    def begin(self) -> None:
        for values in self.channels.values():  # a channel missing from a step records 0 there
            values.zero_()
        self.success.zero_()
        self.reports_success = False

    def step(self, t: int, obs: torch.Tensor, reward: torch.Tensor, info: dict[str, Any]) -> None:
        self.reached[t] = reached_observations(obs, info, self.envs)
        for name, value in (info.get("reward_components") or {"reward": reward}).items():
            if name not in self.channels:
                self.channels[name] = torch.zeros(self.success.shape, dtype=value.dtype, device=value.device)
            self.channels[name][t] = value[:self.envs]
        if "success" in info:
            self.success[t] = info["success"][:self.envs]
            self.reports_success = True


_CHECKPOINT_KEYS = ("model", "optimizer", "generator", "env", "next_obs", "next_mask", "episode",
                    "global_step", "update")
# The settings that shape the network: named in the error when a checkpoint's weights do not fit.
_NETWORK_FIELDS = ("env_kwargs", "policy", "hidden", "cnn_channels", "shared_torso")


class _FiniteChecks:
    """Whether each stage of an update stayed finite, as flags on the device, read together with one sync."""

    def __init__(self) -> None:
        self.names: list[tuple[str, str]] = []
        self.flags: list[torch.Tensor] = []

    def add(self, stage: str, *tensors: torch.Tensor) -> None:
        """One flag: every element of `tensors` is finite."""
        self.names.append((stage, ""))
        self.flags.append(torch.stack([t.isfinite().all() for t in tensors]).all()[None])

    def add_flag(self, stage: str, flag: torch.Tensor) -> None:
        """One flag computed elsewhere (a 0-d bool tensor): True where that stage stayed finite."""
        self.names.append((stage, ""))
        self.flags.append(flag.reshape(1))

    def add_scalars(self, where: str, **scalars: torch.Tensor) -> None:
        """One flag per named scalar (e.g. the losses of a minibatch)."""
        self.names += [(name, where) for name in scalars]
        self.flags.append(torch.stack([s.detach().float() for s in scalars.values()]).isfinite())

    def first_failure(self) -> tuple[str, str] | None:
        """(stage, where) of the first flag that is False, in the order they were added; None when all hold."""
        ok = torch.cat(self.flags).tolist()
        return next((name for name, good in zip(self.names, ok, strict=True) if not good), None)


class _EpisodeTracker:
    """Running returns, lengths and per-channel reward sums; summarises episodes finished since the last call."""

    def __init__(self, num_envs: int, device: torch.device) -> None:
        self.returns = torch.zeros(num_envs, device=device)
        self.lengths = torch.zeros(num_envs, device=device)
        self.channels: dict[str, torch.Tensor] = {}
        self.finished: dict[str, list[torch.Tensor]] = defaultdict(list)

    def step(self, reward: torch.Tensor, info: dict[str, Any], done: torch.Tensor) -> None:
        self.returns += reward
        self.lengths += 1
        for name, value in info.get("reward_components", {}).items():
            self.channels.setdefault(name, torch.zeros_like(self.returns)).add_(value)
        if not done.any():
            return
        self.finished["charts/episodic_return"].append(self.returns[done])
        self.finished["charts/episodic_length"].append(self.lengths[done])
        if "success" in info:
            self.finished["charts/success_rate"].append(info["success"][done].float())
        for name, total in self.channels.items():
            self.finished[f"reward/{name}"].append(total[done])
            total.masked_fill_(done, 0.0)
        self.returns.masked_fill_(done, 0.0)
        self.lengths.masked_fill_(done, 0.0)

    def summary(self) -> dict[str, float]:
        out = {name: torch.cat(parts).mean().item() for name, parts in self.finished.items() if parts}
        if out:
            out["charts/episodes"] = float(sum(len(p) for p in self.finished["charts/episodic_return"]))
        self.finished.clear()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"returns": self.returns, "lengths": self.lengths, "channels": self.channels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns.copy_(state["returns"])
        self.lengths.copy_(state["lengths"])
        self.channels = {name: value.to(self.returns.device) for name, value in state["channels"].items()}


class _Progress:
    """A rich progress bar with live success rate and SPS (a no-op when disabled)."""

    def __init__(self, enabled: bool, *, total: int, start: int) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            # stderr, so that a script's stdout holds only what it prints (JSON results, say)
            self.bar = Progress(TextColumn("[bold]PPO"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                                TextColumn("{task.fields[outcome]}"), TextColumn("{task.fields[sps]} sps"),
                                TimeRemainingColumn(), console=Console(stderr=True))
            self.bar.start()
            self.outcome = "no episode finished yet"
            self.task = self.bar.add_task("train", total=total, completed=start, outcome=self.outcome, sps="-")

    def advance(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        # The last update's episodes (success, or episodes and return where the env reports no success).
        self.outcome = outcome_text(metrics, digits=0) or self.outcome
        self.bar.update(self.task, completed=step, outcome=self.outcome, sps=f"{metrics['charts/sps']:,.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
