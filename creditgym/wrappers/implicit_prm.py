"""Implicit process rewards: PRIME (Cui et al. 2025, arXiv 2502.01456) and OPRL / iStar (arXiv 2509.19199).

A process reward model π_φ is a policy-shaped network; its step (or token) reward is the log-ratio against a
frozen reference, r_t = β (log π_φ(a_t | s_t) − log π_ref(a_t | s_t)), so Σ_t r_t = β log π_φ(τ)/π_ref(τ) is an
outcome score and r_t its dense decomposition (Yuan et al. 2024, "Free process rewards without process labels").
π_φ learns from outcome labels only:

- PRIME: cross-entropy, BCE(σ(β Σ_t log π_φ/π_ref), success) (`outcome_ce_loss`);
- OPRL: trajectory DPO over (success, failure) pairs of the same group,
  −log σ(β log π_φ(τ+)/π_ref(τ+) − β log π_φ(τ−)/π_ref(τ−)) (`trajectory_dpo_loss`).

The losses here are shared by the small-network PRM for PPO (`GridImplicitPRM`) and the LLM PRMs.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from creditgym.credit import gather_turn_values, implicit_prm_step_rewards, implicit_prm_token_rewards
from creditgym.seeding import seeded_torch

from .learned import ReplayBuffer, StepEpisode, check_reward_precision, refuse_non_finite_step, sum_per_episode

if TYPE_CHECKING:
    from creditgym.agents.llm.batch import TokenBatch
    from creditgym.agents.llm.policy import LLMPolicy

PRM_LOSSES = ("ce", "dpo")
PRM_SCORES = ("sum", "mean")  # DPO's trajectory score: the papers' sum, or the OPRL code's mean


def outcome_ce_loss(log_ratio_sums: Tensor, success: Tensor, *, beta: float) -> Tensor:
    """PRIME's PRM loss: BCE(σ(β Σ_t log π_φ/π_ref), success), averaged over episodes. log 2 when π_φ ≡ π_ref."""
    return nn.functional.binary_cross_entropy_with_logits(beta * log_ratio_sums, success.to(log_ratio_sums.dtype))


def success_failure_pairs(success: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Every (success, failure) index pair within each group: OPRL's DPO pairs. Empty when no group is mixed."""
    same_group = group_ids[:, None] == group_ids[None, :]
    pairs = (same_group & success.bool()[:, None] & ~success.bool()[None, :]).nonzero()
    return pairs[:, 0], pairs[:, 1]


def trajectory_dpo_loss(chosen_log_ratios: Tensor, rejected_log_ratios: Tensor, *, beta: float) -> Tensor:
    """−log σ(β (log π_φ/π_ref(τ+) − log π_φ/π_ref(τ−))), averaged over pairs; log 2 when π_φ ≡ π_ref."""
    return -nn.functional.logsigmoid(beta * (chosen_log_ratios - rejected_log_ratios)).mean()


def outcome_loss(kind: str, log_ratio_sums: Tensor, outcome: Tensor, group_ids: Tensor, lengths: Tensor, *,
                 score: str, beta: float) -> Tensor:
    """PRIME's cross-entropy (`kind` "ce") or OPRL's trajectory DPO ("dpo") from each episode's Σ log π_φ/π_ref.

    DPO pairs each success (`outcome` > 0.5) with each failure of its group and scores an episode by its sum, or by
    its mean over `lengths` steps (`score` "mean"); a batch without such a pair gives 0, with no gradient.
    """
    if kind == "ce":
        return outcome_ce_loss(log_ratio_sums, outcome.float(), beta=beta)
    scores = log_ratio_sums / lengths.clamp_min(1) if score == "mean" else log_ratio_sums
    chosen, rejected = success_failure_pairs(outcome > 0.5, group_ids)
    if not len(chosen):
        return log_ratio_sums.detach().sum() * 0.0
    return trajectory_dpo_loss(scores[chosen], scores[rejected], beta=beta)


class GridImplicitPRM:
    """An implicit PRM for PPO on grid envs: a small policy network π_φ(a | s) against its own frozen start, π_ref.

    Step reward (channel `implicit_prm`): `coef` · β (log π_φ(a_t|s_t) − log π_ref(a_t|s_t)); 0 before any update.
    `loss` is `ce` (PRIME) or `dpo` (OPRL: pairs a success with a failure; with no groups in PPO every finished
    episode of a minibatch is in one group). Trained online over a replay buffer of recent episodes.
    `score` is `sum` (the papers) or `mean` (the OPRL code's mean step score) for DPO's trajectory score.

    Prefer `ce` here. DPO's margin is unbounded, and where failures run much longer than successes it is won by
    lowering log π_φ of every common move: on 6x6 two-box Sokoban the reward became a growing per-step penalty that
    favoured moves the policy does not make, and PPO needed 3× sparse's env steps (docs/results.md, session 7).
    """

    channel = "implicit_prm"

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, *, hidden: int = 128, beta: float = 0.05,
                 coef: float = 1.0, loss: str = "ce", score: str = "sum", learning_rate: float = 1e-3,
                 replay_episodes: int = 1024, batch_episodes: int = 64, epochs: int = 1, max_grad_norm: float = 1.0,
                 seed: int = 0, precision: str = "float32") -> None:
        check_reward_precision(precision)
        self.bfloat16 = precision == "bfloat16"  # bfloat16 autocast for both networks, log-probs in float32
        if loss not in PRM_LOSSES:
            raise ValueError(f"implicit PRM loss must be one of {PRM_LOSSES}, got {loss!r}")
        if score not in PRM_SCORES:
            raise ValueError(f"trajectory score must be 'sum' or 'mean', got {score!r}")
        if not (beta > 0 and math.isfinite(beta) and math.isfinite(coef) and learning_rate > 0):
            raise ValueError("beta and learning_rate must be positive and coef finite")
        with seeded_torch(seed):  # the PRM's own initial weights, leaving the caller's RNG alone
            self.network = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(obs_shape)), hidden), nn.Tanh(),
                                         nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_actions))
        self.reference = copy.deepcopy(self.network).requires_grad_(False)
        self.beta, self.coef, self.loss_kind, self.score = beta, coef, loss, score
        self.batch_episodes, self.epochs, self.max_grad_norm = batch_episodes, epochs, max_grad_norm
        self.learning_rate = learning_rate
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=learning_rate)
        self.replay = ReplayBuffer(replay_episodes)
        self.generator = torch.Generator().manual_seed(seed)

    def to(self, device: torch.device) -> GridImplicitPRM:
        self.network.to(device)
        self.reference.to(device)
        return self

    def log_ratios(self, obs: Tensor, actions: Tensor, reference_logprobs: Tensor | None = None) -> Tensor:
        """log π_φ(a|s) − log π_ref(a|s) for a batch of any leading shape (differentiable through π_φ); pass
        `reference_logprobs` (`self.reference_logprobs(obs, actions)`, kept from earlier) to skip π_ref's pass."""
        lead = actions.shape
        flat_obs = obs.reshape(actions.numel(), *obs.shape[len(lead):]).float()
        flat_actions = actions.reshape(-1, 1)
        logp = torch.log_softmax(self._logits(self.network, flat_obs), -1).gather(1, flat_actions).squeeze(1)
        if reference_logprobs is None:
            reference_logprobs = self.reference_logprobs(flat_obs, flat_actions.squeeze(1))
        return (logp - reference_logprobs.reshape(-1)).reshape(lead)

    def reference_logprobs(self, obs: Tensor, actions: Tensor) -> Tensor:
        """log π_ref(a|s) for a batch of any leading shape. π_ref never trains, so a step's value never changes:
        PPO scores each rollout once and keeps the values with its episodes (`StepEpisode.reference_logprobs`)."""
        lead = actions.shape
        with torch.no_grad():
            flat_obs = obs.reshape(actions.numel(), *obs.shape[len(lead):]).float()
            logits = self._logits(self.reference, flat_obs)
            return torch.log_softmax(logits, -1).gather(1, actions.reshape(-1, 1)).reshape(lead)

    def _logits(self, network: nn.Module, obs: Tensor) -> Tensor:
        with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            return network(obs).float()

    def dense_rewards(self, obs: Tensor, actions: Tensor, valid: Tensor,
                      reference_logprobs: Tensor | None = None) -> Tensor:
        """coef · β log π_φ/π_ref of every step of a rollout's buffers; `reference_logprobs` as in `log_ratios`."""
        with torch.no_grad():
            ratio = self.log_ratios(obs, actions, reference_logprobs)
            return self.coef * implicit_prm_token_rewards(ratio, torch.zeros_like(ratio), beta=self.beta)

    def step_rewards(self, episodes: list[StepEpisode]) -> list[Tensor]:
        """One ``(L_i,)`` tensor of step rewards per episode; Σ_t r_t = coef · β log π_φ(τ)/π_ref(τ)."""
        device = next(self.network.parameters()).device
        return [self.dense_rewards(e.obs.to(device), e.actions.to(device), e.valid) for e in episodes]

    def loss(self, episodes: list[StepEpisode]) -> Tensor:
        device = next(self.network.parameters()).device
        lengths = [len(e) for e in episodes]
        # The reference log-probs the episodes kept (all or none: an episode from an older checkpoint has none)
        kept = [e.reference_logprobs for e in episodes]
        reference = torch.cat(kept).to(device) if all(r is not None for r in kept) else None
        ratios = self.log_ratios(torch.cat([e.obs for e in episodes]).to(device),
                                 torch.cat([e.actions for e in episodes]).to(device), reference)
        sums = sum_per_episode(ratios, lengths)
        outcome = torch.tensor([float(e.outcome) for e in episodes], device=device)
        # One group: any success pairs with any failure of the minibatch
        return outcome_loss(self.loss_kind, sums, outcome, torch.zeros(len(episodes), device=device),
                            torch.tensor(lengths, device=device), score=self.score, beta=self.beta)

    def update(self, episodes: list[StepEpisode]) -> dict[str, float]:
        """Add `episodes` to the replay buffer, then train on as many replayed episodes (times `epochs`)."""
        losses = self.replay.train(episodes, batch_size=self.batch_episodes, epochs=self.epochs,
                                   generator=self.generator, step=self._step)
        if not losses:
            return {}
        return {f"{self.channel}/loss": float(np.mean(losses)),
                f"{self.channel}/replay_episodes": float(len(self.replay))}

    def _step(self, minibatch: list[StepEpisode]) -> float | None:
        loss = self.loss(minibatch)
        if not loss.requires_grad:  # no (success, failure) pair to learn from
            return None
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.network.parameters(), self.max_grad_norm)
        value, norm = torch.stack([loss.detach(), grad_norm.to(loss.device)]).tolist()  # one sync, as .item() was
        refuse_non_finite_step("the implicit PRM", value, norm, self.learning_rate)
        self.optimizer.step()
        return value

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints (saved at once); as torch's own, its tensors are the live weights and optimiser moments,
        so a snapshot kept in memory while training goes on needs `copy.deepcopy`."""
        return {"network": self.network.state_dict(), "reference": self.reference.state_dict(),
                "optimizer": self.optimizer.state_dict(), "replay": list(self.replay.episodes),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.reference.load_state_dict(state["reference"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.episodes = list(state["replay"])
        self.generator.set_state(state["generator"].cpu())


# -- LLM policies (PRIME, OPRL) -------------------------------------------------------------------------------

PRM_REFERENCES = ("old", "initial")


class LLMImplicitPRM:
    """An implicit PRM for LLM policies: π_φ is a copy of the policy LM, scored on a trainer's `TokenBatch`.

    - `loss`: `ce` (PRIME, on success labels) or `dpo` (OPRL: every (success, failure) pair of a group).
      `score` is DPO's trajectory score: `sum` of the log-ratio (the papers) or its `mean` over turns (OPRL's code).
    - `reference`: `initial` keeps the frozen starting policy as π_ref (PRIME); `old` means π_ref is the rollout
      policy π_θold (OPRL's default), whose logprobs the caller has and passes in. Every method takes the
      reference logprobs explicitly; `reference_logprobs(batch)` computes them for `initial`.
    - `lora_rank > 0` trains LoRA adapters on the copy (peft) instead of every weight; a LoRA policy's copy keeps
      LoRA. With LoRA the base model with adapters disabled is the `initial` reference, so no third model is held.

    `update` takes one optimiser step on the whole batch. Its loss needs each episode's full log-ratio sum and
    an episode may span several rows, so the gradient of the loss with respect to each episode's sum is taken first
    (from logprobs without grad), then pushed through the rows one micro-batch at a time: the exact gradient of the
    whole-batch loss at any micro-batch size.
    """

    channel = "implicit_prm"

    def __init__(self, policy: LLMPolicy, *, beta: float = 0.05, loss: str = "ce", score: str = "sum",
                 reference: str = "initial", learning_rate: float = 1e-6, lora_rank: int = 0, lora_alpha: int = 32,
                 max_grad_norm: float = 1.0, micro_batch_size: int = 8, seed: int = 0) -> None:
        if loss not in PRM_LOSSES:
            raise ValueError(f"implicit PRM loss must be one of {PRM_LOSSES}, got {loss!r}")
        if score not in PRM_SCORES:
            raise ValueError(f"trajectory score must be 'sum' or 'mean', got {score!r}")
        if reference not in PRM_REFERENCES:
            raise ValueError(f"PRM reference must be one of {PRM_REFERENCES}, got {reference!r}")
        if not (beta > 0 and math.isfinite(beta) and learning_rate > 0 and max_grad_norm > 0):
            raise ValueError("beta, learning_rate and max_grad_norm must be positive")
        if lora_rank < 0 or micro_batch_size < 1:
            raise ValueError("lora_rank must be 0 or more and micro_batch_size at least 1")
        self.beta, self.loss_kind, self.score, self.reference = beta, loss, score, reference
        self.max_grad_norm, self.micro_batch_size = max_grad_norm, micro_batch_size
        # LoRA's initial weights from the seed, drawn on the policy's device, leaving the caller's RNG alone
        with seeded_torch(seed, next(policy.model.parameters()).device):
            model = copy.deepcopy(policy.model)
            if lora_rank and not _is_peft(model):
                model = _with_lora(model, lora_rank, lora_alpha)
        self.scorer = type(policy)(model.eval(), policy.tokenizer, temperature=policy.temperature, bf16=policy.bf16)
        self.frozen = None
        if reference == "initial" and not _is_peft(model):
            frozen = copy.deepcopy(policy.model).eval().requires_grad_(False)
            self.frozen = type(policy)(frozen, policy.tokenizer, temperature=policy.temperature, bf16=policy.bf16)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0)

    # -- scoring ------------------------------------------------------------------------------------------------
    def logprobs(self, batch: TokenBatch) -> Tensor:
        """log π_φ ``(R, L)`` of the batch's generated tokens (0 elsewhere), without grad."""
        return self._score(self.scorer, batch)

    def reference_logprobs(self, batch: TokenBatch) -> Tensor:
        """log π_ref ``(R, L)`` for `reference="initial"` (with `old`, π_θold is the reference: the caller's)."""
        if self.reference != "initial":
            raise ValueError("reference='old': pass the rollout policy's logprobs (the trainer's score) instead")
        if self.frozen is not None:
            return self._score(self.frozen, batch)
        with self.scorer.model.disable_adapter():
            return self._score(self.scorer, batch)

    def token_rewards(self, batch: TokenBatch, ref_logprobs: Tensor, logprobs: Tensor | None = None) -> Tensor:
        """Episode view ``(E, A)``: β (log π_φ − log π_ref) on every generated token (PRIME's token granularity)."""
        logprobs = self.logprobs(batch) if logprobs is None else logprobs
        return implicit_prm_token_rewards(batch.to_view(logprobs), batch.to_view(ref_logprobs), batch.view_mask,
                                          beta=self.beta)

    def step_rewards(self, batch: TokenBatch, ref_logprobs: Tensor, logprobs: Tensor | None = None) -> Tensor:
        """Per turn ``(E, T)``: β Σ_{tokens of the turn} (log π_φ − log π_ref); 0 on padding turns."""
        logprobs = self.logprobs(batch) if logprobs is None else logprobs
        on_ends = implicit_prm_step_rewards(batch.to_view(logprobs), batch.to_view(ref_logprobs), batch.turn_ends,
                                            batch.view_mask, beta=self.beta)
        per_turn, _ = gather_turn_values(on_ends, batch.turn_ends, num_turns=batch.turn_mask.shape[1])
        return torch.where(batch.turn_mask, per_turn, torch.zeros_like(per_turn))

    # -- training -----------------------------------------------------------------------------------------------
    def loss(self, log_ratio_sums: Tensor, success: Tensor, group_ids: Tensor, num_turns: Tensor) -> Tensor:
        """PRIME's cross-entropy or OPRL's trajectory DPO from each episode's Σ log π_φ/π_ref ``(E,)``."""
        return outcome_loss(self.loss_kind, log_ratio_sums, success.float(), group_ids, num_turns, score=self.score,
                            beta=self.beta)

    def update(self, batch: TokenBatch, success: Tensor, group_ids: Tensor, ref_logprobs: Tensor,
               logprobs: Tensor | None = None) -> dict[str, float]:
        """One optimiser step on the batch's outcome labels; `logprobs` (π_φ's, without grad) saves a forward pass
        when the caller already has them. Returns the loss before the step (and CE's accuracy, DPO's pair count)."""
        logprobs = self.logprobs(batch) if logprobs is None else logprobs
        mask = batch.action_mask
        sums = batch.to_view((logprobs - ref_logprobs) * mask).sum(-1).detach().requires_grad_()
        success, group_ids = success.to(sums.device).bool(), group_ids.to(sums.device)
        loss = self.loss(sums, success, group_ids, batch.turn_mask.sum(-1))
        metrics = {f"{self.channel}/loss": loss.item()}
        if self.loss_kind == "ce":
            accuracy = ((sums.detach() > 0) == success).float().mean()
            metrics[f"{self.channel}/accuracy"] = float(accuracy)
        else:
            metrics[f"{self.channel}/pairs"] = float(len(success_failure_pairs(success, group_ids)[0]))
        if not loss.requires_grad:
            return metrics
        (episode_grad,) = torch.autograd.grad(loss, sums)
        row_episode = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
        row_episode[batch.rows] = batch.view_mask.nonzero()[:, 0]
        self.optimizer.zero_grad()
        for rows in torch.arange(mask.shape[0], device=mask.device).split(self.micro_batch_size):
            row_logprobs, _ = self.scorer.sequence_logprobs(batch.input_ids[rows], batch.attention_mask[rows],
                                                            mask[rows], shared_prefix=batch.shared_prefix)
            (episode_grad[row_episode[rows]] * (row_logprobs * mask[rows]).sum(-1)).sum().backward()
        grad_norm = float(nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        refuse_non_finite_step("the implicit PRM", metrics[f"{self.channel}/loss"], grad_norm,
                               self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        return metrics

    # -- checkpoints --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The trainable weights (the whole copy, or its LoRA adapters) and the optimiser; the frozen reference is
        rebuilt from the starting policy."""
        trainable = {name: p.detach().clone() for name, p in self.scorer.model.named_parameters() if p.requires_grad}
        return {"trainable": trainable, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scorer.model.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])

    def _score(self, policy: LLMPolicy, batch: TokenBatch) -> Tensor:
        out = torch.zeros_like(batch.rollout_logprobs)
        with torch.no_grad():
            for rows in torch.arange(batch.input_ids.shape[0], device=out.device).split(self.micro_batch_size):
                out[rows] = policy.sequence_logprobs(batch.input_ids[rows], batch.attention_mask[rows],
                                                     batch.action_mask[rows], shared_prefix=batch.shared_prefix)[0]
        return out


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def _with_lora(model: nn.Module, rank: int, alpha: int) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("a LoRA PRM needs peft: pip install peft (or use lora_rank=0 for a full copy)") from None
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear", lora_dropout=0.0,
                                            task_type="CAUSAL_LM"))
