"""The settings of every LLM trainer; `creditgym train --algo grpo ...` turns each field into a flag."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from creditgym.agents.config_cli import (
    absolute_level_paths,
    check_coefficients,
    check_learning_rates,
    check_method_options,
    check_run_config,
    check_unused_options,
)

ALGOS = ("grpo", "drgrpo", "rloo", "reinforce_pp", "ppo_llm")
ADVANTAGES = ("episode", "turn", "gigpo")
GIGPO_GAMMA = 0.95  # verl-agent's step-return discount (reward-methods.md)
GENERATION_BACKENDS = ("hf", "vllm", "openai")
LEARNED_REWARDS = ("spa", "prime", "oprl", "igpo")
# The settings of the learned rewards, which do nothing without one.
LEARNED_REWARD_OPTIONS = ("learned_reward_coef", "learned_reward_lr", "learned_reward_replay", "spa_epochs",
                          "spa_grounding", "prm_beta", "prm_score", "prm_reference", "prm_lora_rank",
                          "prm_update_first", "prime_granularity")
# The learned-reward settings that only some methods read (the others ignore them; IGPO reads only the coefficient).
METHOD_OPTIONS = {
    "learned_reward_lr": ("spa", "prime", "oprl"), "learned_reward_replay": ("spa",), "spa_epochs": ("spa",),
    "spa_grounding": ("spa",), "prm_beta": ("prime", "oprl"), "prm_score": ("oprl",),
    "prm_reference": ("prime", "oprl"), "prm_lora_rank": ("prime", "oprl"), "prm_update_first": ("prime", "oprl"),
    "prime_granularity": ("prime",),
}


@dataclass
class LLMTrainConfig:
    """GRPO, Dr.GRPO, RLOO, REINFORCE++ and PPO (value head) for chat LMs on text envs."""

    algo: str = "grpo"
    """grpo, drgrpo, rloo, reinforce_pp or ppo_llm (PPO with a value head and token-level GAE). The clipped loss
    is a mean over every generated token of a minibatch (DAPO's and verl's token-mean, which has no length bias;
    GRPO's paper averages per sequence first); drgrpo divides by each generation's token budget instead"""
    model: str = "smollm2-135m"
    """smollm2-135m (embedded) or a local Hugging Face model folder; nothing is downloaded"""
    env_id: str = "creditgym/Sokoban-6x6-1b-v0"
    """registered text env (grid envs get obs_mode='text')"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for the env, e.g. {"num_rounds": 2}"""
    iterations: int = 20
    """rollout-and-update iterations"""
    num_groups: int = 4
    """G: tasks (env seeds) per iteration"""
    group_size: int = 8
    """K: rollouts per task, the group of GRPO/RLOO"""
    max_turns: int = 8
    """turns per episode before it is cut (truncated)"""
    history_turns: int | None = 2
    """past turns kept in the prompt (verl-agent style); none = the whole conversation"""
    max_new_tokens: int = 48
    """tokens generated per turn"""
    max_prompt_tokens: int = 2048
    """an episode whose next prompt is longer is cut (truncated)"""
    temperature: float = 1.0
    """sampling temperature; logprobs are those of the tempered distribution"""
    advantage: str | None = None
    """episode (one outcome advantage per episode), turn (per-turn reward-to-go) or gigpo (GRPO family only); none =
    turn for ppo_llm and for the per-turn learned rewards spa and igpo, else episode"""
    turn_normalization: str | None = None
    """advantage turn (grpo, drgrpo, rloo): normalise each turn's reward-to-go across the group (returns) or each
    turn's reward first and then sum it to go (rewards, IGPO's order); none = rewards with igpo, else returns"""
    gamma: float | None = None
    """discount over turns (turn, gigpo) or tokens (reinforce_pp, ppo_llm); none: 0.95 with advantage gigpo
    (verl-agent's), else 1"""
    gigpo_omega: float = 1.0
    """GiGPO weight of the step (anchor-state) advantage"""
    learned_reward: str | None = None
    """learned dense reward: spa, prime, oprl or igpo (adds expose_ground_truth to env_kwargs); none = env reward"""
    learned_reward_coef: float = 1.0
    """learned reward weight: SPA alpha (not 1: unverified), IGPO gain, OPRL w, PRIME process:outcome ratio"""
    learned_reward_lr: float | None = None
    """learning rate of the reward model; none = 1e-3 for SPA's linear head, 1e-6 for the PRIME/OPRL PRM"""
    learned_reward_replay: int = 256
    """SPA: most recent episodes the progress head trains on"""
    spa_epochs: int = 1
    """SPA: head updates per round, in minibatches per batch of new episodes (a round of 32 episodes and epochs 1
    is one Adam step on 64 replayed episodes)"""
    spa_grounding: float = 0.0
    """SPA's beta: reward for each valid turn (SPA's code pays 0.5, which also pays for merely long episodes)"""
    prm_beta: float = 0.05
    """PRIME/OPRL: beta of the implicit reward beta * (log pi_phi - log pi_ref)"""
    prm_score: str = "sum"
    """OPRL's trajectory score in its DPO loss: sum of the log-ratio over the episode (the paper) or its mean over
    turns (OPRL's code)"""
    prm_reference: str | None = None
    """PRIME/OPRL: pi_ref, old (the rollout policy) or initial (frozen start); none = initial for prime, old for oprl"""
    prm_lora_rank: int = 0
    """PRIME/OPRL: LoRA rank of the PRM, a copy of the policy (peft); 0 trains a full copy"""
    prm_update_first: bool = True
    """PRIME/OPRL: update the PRM on a batch before scoring it (PRIME's default); false scores first, a forward less"""
    prime_granularity: str = "token"
    """PRIME: token (a process reward per generated token) or step (one per turn)"""
    min_group_accuracy: float | None = None
    """train only on groups whose success rate is at least this; none = 0.2 with prime (PRIME's filter), else 0"""
    max_group_accuracy: float | None = None
    """train only on groups whose success rate is at most this; none = 0.8 with prime (PRIME's filter), else 1"""
    learning_rate: float = 1e-5
    """AdamW learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    update_epochs: int = 1
    """passes over each batch of rollouts"""
    num_minibatches: int = 1
    """optimizer steps per epoch; the batch's sequences are split evenly"""
    micro_batch_size: int = 8
    """sequences per forward/backward; gradients accumulate up to a minibatch"""
    clip_coef: float = 0.2
    """policy ratio clip"""
    kl_coef: float = 0.0
    """KL to the initial policy: a k3 loss term, clamped as verl's (GRPO family; RLOO's paper and TRL subtract a
    sequence KL from the reward instead) or a k1 per-token reward penalty (reinforce_pp, ppo_llm,
    REINFORCE++-baseline included)"""
    vf_coef: float = 0.5
    """value loss weight (ppo_llm: a linear value head on the policy's last hidden state, so the value loss also
    trains the LM; the value loss is not clipped)"""
    gae_lambda: float = 0.95
    """GAE lambda over tokens (ppo_llm)"""
    max_grad_norm: float = 1.0
    """gradient clipping norm"""
    lora_rank: int = 0
    """LoRA rank via peft; 0 trains every weight"""
    lora_alpha: int = 32
    """LoRA alpha"""
    lora_target_modules: str = "all-linear"
    """peft target_modules: all-linear or comma-separated module names"""
    bf16: bool = True
    """bfloat16 autocast on CUDA (CPU always runs float32)"""
    generation_backend: str = "hf"
    """rollout generation: hf (the policy), vllm (a vLLM server that gets the weights after each update) or openai"""
    generation_url: str | None = None
    """base URL (ending in /v1) of a running server: required for openai; for vllm, used instead of starting one"""
    generation_model: str | None = None
    """model name sent to the openai server; none = the first of its /v1/models"""
    vllm_python: str | None = None
    """python of the vLLM environment that runs the server; none = .venv-vllm/bin/python (make vllm builds it)"""
    vllm_dtype: str = "float32"
    """weights dtype of the started vLLM server: float32 (as the HF policy on the CPU), bfloat16 or auto"""
    vllm_kv_cache_gb: float = 2.0
    """KV-cache memory of the started vLLM server in GiB (CPU RAM, or GPU memory beside the trainer's)"""
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
    seed: int = 1
    """seeds the env tasks, sampling and any new weights"""
    device: str = "auto"
    """cpu, cuda or auto (cuda when present)"""
    threads: int = 1
    """torch CPU threads"""
    run_name: str | None = None
    """run folder name under runs_dir (default: algo-env-seed-time)"""
    runs_dir: str = "runs"
    """where runs are written"""
    checkpoint_every: int = 10
    """iterations between checkpoints (0 = only at the end)"""
    keep_checkpoints: bool = False
    """also keep every periodic checkpoint as checkpoint-<iteration>.pt, to study how the models changed"""
    overwrite: bool = False
    """replace an earlier run in the same run folder (its checkpoints, metrics and events) instead of refusing"""
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = True
    """write TensorBoard events"""
    record_trajectories: bool = False
    """append each iteration's episodes (text, reward channels, env state, token ids and logprobs) to
    trajectories.jsonl.gz in the run folder, to re-score offline with creditgym rescore"""

    def __post_init__(self) -> None:
        if self.advantage is None:  # resolved here, as gamma below, so the run's config.json records it
            self.advantage = "turn" if self.algo == "ppo_llm" or self.learned_reward in ("spa", "igpo") else "episode"
        if self.gamma is None:  # resolved here, so the run's config.json records the discount it trained with
            self.gamma = GIGPO_GAMMA if self.advantage == "gigpo" else 1.0
        self._resolve_turn_normalization()
        check_run_config(self)
        self.env_kwargs = absolute_level_paths(self.env_kwargs)
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {ADVANTAGES}, got {self.advantage!r}")
        positive = ("iterations", "num_groups", "group_size", "max_turns", "max_new_tokens", "max_prompt_tokens",
                    "update_epochs", "num_minibatches", "micro_batch_size", "threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"LLMTrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.algo in ("grpo", "drgrpo", "rloo") and self.group_size < 2:
            raise ValueError(f"{self.algo} compares rollouts within a group: set group_size to 2 or more")
        if self.advantage == "gigpo" and self.algo not in ("grpo", "drgrpo"):
            raise ValueError("advantage='gigpo' normalises like GRPO (grpo) or without std (drgrpo); use one of "
                             f"those algos, not {self.algo!r}")
        if self.algo == "ppo_llm" and self.advantage != "turn":
            raise ValueError("ppo_llm computes token-level GAE from turn rewards: set advantage='turn'")
        if self.algo == "reinforce_pp" and self.advantage == "episode" and self.group_size < 2:
            raise ValueError("reinforce_pp with advantage='episode' (REINFORCE++-baseline) subtracts the group's "
                             "mean return, which leaves nothing of a group of one: set group_size to 2 or more, or "
                             "advantage='turn' (token-level REINFORCE++)")
        self._check_learned_reward()
        low, high = self.group_accuracy_range
        if not 0 <= low <= high <= 1:
            raise ValueError(f"min_group_accuracy ({low}) and max_group_accuracy ({high}) must satisfy "
                             "0 <= min <= max <= 1")
        if self.history_turns is not None and self.history_turns < 0:
            raise ValueError("history_turns must be 0 or more, or none for the whole conversation")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive (training samples from the policy)")
        check_learning_rates(self, "learning_rate", "learned_reward_lr")
        check_coefficients(self)
        if not 0 <= self.weight_decay <= 1:
            raise ValueError(f"weight_decay (--weight-decay) must be in [0, 1] (AdamW shrinks each weight by "
                             f"learning_rate * weight_decay a step), got {self.weight_decay:g}; typical values are 0 "
                             "to 0.1")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("gamma must be in (0, 1] and gae_lambda in [0, 1]")
        if self.lora_rank < 0:
            raise ValueError("lora_rank must be 0 (full fine-tuning) or a positive rank such as 16")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha (--lora-alpha) must be positive (LoRA scales its update by lora_alpha / "
                             f"lora_rank, so 0 trains nothing), got {self.lora_alpha}; typical values are 16 to 64")
        if self.rollout_backend not in ("local", "ray"):
            raise ValueError(f"rollout_backend must be local or ray, got {self.rollout_backend!r}")
        if self.ray_wait_for_cpus is not None and self.ray_wait_for_cpus < 0:
            raise ValueError(f"ray_wait_for_cpus must be seconds ≥ 0 (0: never wait), got {self.ray_wait_for_cpus}")
        if self.ray_address is not None and self.rollout_backend != "ray":
            raise ValueError("ray_address is only used with rollout_backend='ray'; pass --rollout-backend ray")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.rollout_backend == "ray" and not 1 <= self.num_workers <= self.num_episodes:
            raise ValueError(f"num_workers must be between 1 and num_groups * group_size ({self.num_episodes}): "
                             "each Ray worker holds at least one env")
        if self.generation_backend not in GENERATION_BACKENDS:
            raise ValueError(f"generation_backend must be one of {GENERATION_BACKENDS}, "
                             f"got {self.generation_backend!r}")
        if self.generation_backend == "openai" and not self.generation_url:
            raise ValueError("generation_backend='openai' needs generation_url, e.g. http://127.0.0.1:8000/v1")
        if self.generation_url and not self.generation_url.startswith(("http://", "https://")):
            raise ValueError(f"generation_url must start with http:// or https://, got {self.generation_url!r}")
        if self.vllm_kv_cache_gb <= 0:
            raise ValueError("vllm_kv_cache_gb must be positive, e.g. 2")

    def _resolve_turn_normalization(self) -> None:
        applies = self.advantage == "turn" and self.algo in ("grpo", "drgrpo", "rloo")
        if self.turn_normalization is None:
            if applies:  # resolved here, so config.json records it
                self.turn_normalization = "rewards" if self.learned_reward == "igpo" else "returns"
            return
        if not applies:
            raise ValueError(f"turn_normalization (--turn-normalization) only applies with advantage='turn' and algo "
                             f"grpo, drgrpo or rloo (this run: advantage={self.advantage!r}, algo={self.algo!r}); "
                             "drop it")
        if self.turn_normalization not in ("returns", "rewards"):
            raise ValueError(f"turn_normalization must be returns or rewards, got {self.turn_normalization!r}")

    @property
    def group_accuracy_range(self) -> tuple[float, float]:
        """The success rates of the groups that are trained on; PRIME keeps prompts solved 20-80% of the time."""
        prime = self.learned_reward == "prime"
        low = self.min_group_accuracy if self.min_group_accuracy is not None else (0.2 if prime else 0.0)
        high = self.max_group_accuracy if self.max_group_accuracy is not None else (0.8 if prime else 1.0)
        return low, high

    def _check_learned_reward(self) -> None:
        name = self.learned_reward
        check_unused_options(self, LEARNED_REWARD_OPTIONS, applies=name is not None,
                             needs="a learned reward", flag="--learned-reward")
        if name is None:
            return
        if name not in LEARNED_REWARDS:
            raise ValueError(f"learned_reward must be one of {LEARNED_REWARDS} or none, got {name!r}")
        check_method_options(self, METHOD_OPTIONS)
        if name in ("spa", "igpo") and self.advantage == "episode":
            raise ValueError(f"learned_reward={name!r} pays a reward per turn, which advantage='episode' sums away: "
                             "set advantage='turn' (or gigpo)")
        if name in ("prime", "oprl") and self.algo not in ("grpo", "drgrpo", "rloo"):
            raise ValueError(f"learned_reward={name!r} computes its own advantages for the clipped loss of grpo, "
                             f"drgrpo or rloo; use one of those algos, not {self.algo!r}")
        if not math.isfinite(self.learned_reward_coef) or not math.isfinite(self.spa_grounding):
            raise ValueError("learned_reward_coef and spa_grounding must be finite numbers")
        if self.spa_epochs < 1:
            raise ValueError(f"spa_epochs must be at least 1, got {self.spa_epochs}")
        if self.prm_beta <= 0 or self.learned_reward_replay < 1 or self.prm_lora_rank < 0:
            raise ValueError("prm_beta must be positive, learned_reward_replay at least 1 and prm_lora_rank 0 or more")
        if self.prm_score not in ("sum", "mean"):
            raise ValueError(f"prm_score must be sum or mean, got {self.prm_score!r}")
        if self.prm_reference not in (None, "old", "initial"):
            raise ValueError(f"prm_reference must be old, initial or none, got {self.prm_reference!r}")
        if self.prime_granularity not in ("token", "step"):
            raise ValueError(f"prime_granularity must be token or step, got {self.prime_granularity!r}")
        if name == "igpo":
            # IGPO scores the ground-truth answer; ToolUse and Dialogue hand it over only when asked to.
            if not _takes_argument(self.env_id, "expose_ground_truth"):
                raise ValueError("learned_reward igpo needs an env that can hand the trainer its ground-truth answer "
                                 "(expose_ground_truth), such as creditgym/ToolUse-v1 or "
                                 f"creditgym/Dialogue-Gather-v0; {self.env_id} has none: pick such an env or another "
                                 "learned reward (spa, prime)")
            self.env_kwargs.setdefault("expose_ground_truth", True)

    @property
    def num_episodes(self) -> int:
        return self.num_groups * self.group_size


def saved_before_fields(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run's config with the fields added since it was written set to how it trained, so that a resume
    continues it as it was (their new defaults may differ: turn_normalization resolves to IGPO's order with igpo)."""
    saved = dict(saved)
    if ("turn_normalization" not in saved and saved.get("advantage") == "turn"
            and saved.get("algo", "grpo") in ("grpo", "drgrpo", "rloo")):
        saved["turn_normalization"] = "returns"
    return saved


def _takes_argument(env_id: str, name: str) -> bool:
    """Whether the registered env's constructor has the keyword `name` (True for ids it cannot look up, whose own
    errors come later and say more)."""
    import inspect

    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    try:
        entry = gym.spec(env_id).entry_point
        creator = load_env_creator(entry) if isinstance(entry, str) else entry
        parameters = inspect.signature(creator).parameters
        return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    except (gym.error.Error, ImportError, AttributeError, TypeError, ValueError):
        return True
