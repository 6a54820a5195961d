"""One training loop for GRPO, Dr.GRPO, RLOO, REINFORCE++ and PPO (value head) on chat LMs and text envs.

Each iteration reads top to bottom:
1. batched multi-turn rollouts: G tasks × K rollouts (`rollout.py`);
2. the episodes packed into token rows with assistant masks, turn rewards on end-of-turn tokens (`batch.py`);
3. logprobs (and values) recomputed before the update, and reference logprobs when a KL is asked for;
4. advantages from `creditgym.credit`;
5. a clipped-ratio loss with gradient accumulation, an optional KL term and a value loss for ppo_llm;
6. the same logging as PPO: metrics.jsonl, TensorBoard, learning_curve.png, progress bar, atomic checkpoints.

    creditgym train --algo grpo --model smollm2-135m --env creditgym/Sokoban-6x6-1b-v0 --iterations 50
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import transformers
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import creditgym
from creditgym.agents.config_cli import check_env_arguments, learned_reward_scale_hint
from creditgym.agents.plots import plot_learning_curves, read_metrics
from creditgym.agents.ppo import resolve_device
from creditgym.agents.runs import (
    MetricsLogger,
    StopAfterUpdate,
    device_change,
    keep_checkpoint,
    load_weights,
    read_checkpoint,
    reseeded,
    train_in_run_dir,
    training_stopped,
    write_checkpoint,
)
from creditgym.agents.vec import NonFiniteError
from creditgym.credit import masked_mean
from creditgym.envs import obs_modes
from creditgym.llm.models import load_policy_model, weights_fingerprint
from creditgym.seeding import seeded_torch
from creditgym.trajectories import (
    TrajectoryWriter,
    llm_episode_records,
    remove_run_trajectories,
    run_trajectories,
    trim_trajectories,
)

from .batch import TokenBatch, advantages, pack_episodes, played_episodes
from .config import LLMTrainConfig
from .learned_rewards import make_learned_reward
from .policy import LLMPolicy
from .rollout import Episode, RolloutCollector

EnvFactory = Callable[[], gym.Env]


def training_seeds(config: LLMTrainConfig, iteration: int | None = None) -> range:
    """The reset seeds of an iteration's groups, or of every iteration of the run's budget (`iteration` None)."""
    first = config.seed * 1_000_003
    if iteration is None:
        return range(first, first + config.iterations * config.num_groups)
    return range(first + iteration * config.num_groups, first + (iteration + 1) * config.num_groups)


def _by_length(batch: TokenBatch, rows: Tensor, *, first: Tensor | None = None) -> Tensor:
    """`rows` from the longest to the shortest sequence (the rows marked in `first` before the others), so that
    consecutive micro-batches hold rows of like length; ties keep their order."""
    columns = torch.arange(1, batch.attention_mask.shape[1] + 1, device=rows.device)
    lengths = (batch.attention_mask[rows].bool() * columns).amax(-1)
    if first is not None:
        lengths = lengths + first.long() * (batch.attention_mask.shape[1] + 1)
    return rows[torch.sort(lengths, descending=True, stable=True).indices]


def make_text_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """`gym.make` with `obs_mode="text"` for grid envs that offer a text view (unless `env_kwargs` sets one)."""
    kwargs = dict(env_kwargs or {})
    if "obs_mode" not in kwargs and "text" in obs_modes(env_id):
        kwargs["obs_mode"] = "text"
    return gym.make(env_id, **kwargs)


class LLMTrainer:
    """Builds the policy, envs and optimiser from an `LLMTrainConfig`, then `learn()`s.

    `model`/`tokenizer` replace loading `config.model` (tests pass `tiny_test_model()`); `make_env` replaces
    `make_text_env(config.env_id, config.env_kwargs)`, e.g. to add reward wrappers. `resume=` continues a run.
    """

    def __init__(self, config: LLMTrainConfig, *, model: PreTrainedModel | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None, make_env: EnvFactory | None = None,
                 resume: str | Path | None = None) -> None:
        self.config = cfg = config
        if make_env is None:  # before the model loads, so a wrong id fails in a moment
            check_env_arguments(cfg.env_id, cfg.env_kwargs, batched=False)
        self.device = resolve_device(cfg.device)
        torch.set_num_threads(cfg.threads)
        # The initialisers (LoRA's, a learned reward's) draw from torch's global generators: seeded here, and the
        # caller's generators are left as they were. Training itself draws only from self.generator.
        with seeded_torch(cfg.seed, self.device):
            if model is None or tokenizer is None:
                model, tokenizer = load_policy_model(cfg.model, progress=cfg.progress)
            self.model_weights = weights_fingerprint(model)  # of the model the run starts from, for its record
            model = model.to(self.device)
            self.reference: LLMPolicy | None = None
            if cfg.lora_rank:
                model = add_lora(model, cfg)
            elif cfg.kl_coef > 0:
                frozen = copy.deepcopy(model).eval().requires_grad_(False)
                self.reference = LLMPolicy(frozen, tokenizer, temperature=cfg.temperature, bf16=cfg.bf16)
            model.eval()  # no dropout, so the first update's ratio is exactly 1
            self.policy = LLMPolicy(model, tokenizer, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                    bf16=cfg.bf16)
            self.value_head: nn.Linear | None = None
            if cfg.algo == "ppo_llm":
                self.value_head = nn.Linear(model.config.hidden_size, 1).to(self.device)
                nn.init.zeros_(self.value_head.weight)
                nn.init.zeros_(self.value_head.bias)
            params = [p for p in model.parameters() if p.requires_grad]
            params += list(self.value_head.parameters()) if self.value_head is not None else []
            self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
            make_env = make_env or (lambda: make_text_env(cfg.env_id, cfg.env_kwargs))
            self.generation = None  # the HF policy generates; else a vLLM or OpenAI-compatible server (llm/vllm.py)
            if cfg.generation_backend != "hf":
                from creditgym.llm.vllm import make_generation_backend  # the HTTP client, only when asked for

                self.generation = make_generation_backend(cfg, self.policy)
            if cfg.rollout_backend == "ray":
                from creditgym.distributed import RayEnvPool  # Ray starts only when asked for

                envs: Any = RayEnvPool(make_env, cfg.num_episodes, cfg.num_workers, address=cfg.ray_address,
                                       wait_for_cpus=cfg.ray_wait_for_cpus)
            else:
                envs = [make_env() for _ in range(cfg.num_episodes)]
            self.collector = RolloutCollector(envs, self.generation or self.policy,
                                              group_size=cfg.group_size, max_turns=cfg.max_turns,
                                              history_turns=cfg.history_turns, max_prompt_tokens=cfg.max_prompt_tokens,
                                              record=cfg.record_trajectories,
                                              keep_next_prompts=self.value_head is not None)
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(cfg.seed)
            self.learned_reward = make_learned_reward(cfg, self)  # SPA / PRIME / OPRL / IGPO, or None
        self.iteration = 0
        self.global_step = 0
        self.saved_iteration: int | None = None  # the iteration run_dir/checkpoint.pt holds, once saved or loaded
        self.device_changes: list[dict[str, Any]] = []  # resumes on another device, after which it is not bit-exact
        self.run_dir = Path(cfg.runs_dir) / (cfg.run_name or
                                             f"{cfg.algo}-{cfg.env_id.split('/')[-1]}-s{cfg.seed}-{int(time.time())}")
        if resume is not None:
            self.load_checkpoint(resume)

    def close(self) -> None:
        """Close the envs (a Ray pool gives its CPUs back) and the generation server this trainer started."""
        self.collector.close()
        if self.generation is not None:
            self.generation.close()

    def learn(self, until_iteration: int | None = None) -> dict[str, float]:
        """Train to `iterations` (or stop at `until_iteration`); returns the last iteration's metrics.

        Ctrl-C stops after the current iteration and saves a checkpoint there, then raises KeyboardInterrupt.
        """
        cfg = self.config
        progress = _Progress(cfg.progress, cfg.algo, total=cfg.iterations, start=self.iteration)
        def plot() -> None:
            plot_learning_curves({cfg.env_id: read_metrics(self.run_dir)}, self.run_dir / "learning_curve.png",
                                 title=f"{cfg.algo} on {cfg.env_id} ({cfg.model}, seed {cfg.seed})")

        try:
            metrics = train_in_run_dir(
                self.run_dir, fresh=self.iteration == 0, overwrite=cfg.overwrite, tensorboard=cfg.tensorboard,
                record=self._run_record(), resumed_at=("charts/iteration", self.iteration),
                global_step=self.global_step, progress=progress, unit="iteration", save=self.save_checkpoint,
                loop=lambda logger, ctrl_c: self._iterations(until_iteration, logger, progress, ctrl_c))
        except KeyboardInterrupt:  # stopped with Ctrl-C: the curve so far, as a finished run has
            if (self.run_dir / "metrics.jsonl").exists():
                plot()
            raise
        if self.iteration >= cfg.iterations:
            plot()
        return metrics

    def _iterations(self, until_iteration: int | None, logger: MetricsLogger, progress: _Progress,
                    ctrl_c: StopAfterUpdate) -> dict[str, float]:
        """The training loop: rollouts, the update and logging, once per iteration."""
        cfg = self.config
        metrics: dict[str, float] = {}
        stop_at = min(cfg.iterations, until_iteration or cfg.iterations)
        self._prepare_trajectories()
        if self.generation is not None and self.generation.starting_server and self.iteration < stop_at:
            # vLLM takes 10-60 s to start, which a bar sitting at 0 would not explain
            progress.show_stage("starting the vLLM server")
            self.generation.push_weights()
            progress.show_stage("")
        while self.iteration < stop_at and not ctrl_c.requested:
            start = time.perf_counter()
            seeds = list(training_seeds(cfg, self.iteration))
            try:
                episodes = self.collector.collect(seeds, generator=self.generator)
            except RuntimeError as err:  # torch.multinomial's complaint about NaN or inf logits
                if "probability tensor contains" not in str(err):
                    raise
                raise self._non_finite_error(
                    f"the policy's next-token probabilities while sampling the rollouts ({err})",
                    f"the weights of the last update overflow the logits: lower --learning-rate (now "
                    f"{cfg.learning_rate:g})") from None
            rollout_seconds = time.perf_counter() - start
            played = played_episodes(episodes)  # and leave the others out of PRIME's accuracy filter too
            trained = kept_groups(played, *cfg.group_accuracy_range)
            learned, losses = {}, {}
            if trained:
                batch = pack_episodes(trained, self.policy.pad_id, self.device)
                learned = self.learned_reward.apply(trained, batch) if self.learned_reward is not None else {}
                losses = self.update(batch)
                if self.generation is not None:  # the server samples the next rollouts from the updated weights
                    losses["charts/weight_push_s"] = self.generation.push_weights()
            losses["charts/trained_episodes"] = float(len(trained))
            if len(played) < len(episodes):
                losses["charts/unplayed_episodes"] = float(len(episodes) - len(played))
            # After a learned reward added its channel to the trained episodes' turns, so that (as PPO's) each
            # record's channels sum to what the trainer paid; episodes it did not train on hold the env's alone.
            records = (llm_episode_records(episodes, cfg.env_id, metadata={"iteration": self.iteration + 1})
                       if cfg.record_trajectories else None)
            self.iteration += 1
            self.global_step += sum(len(ep.turns) for ep in episodes)
            generated = sum(ep.num_generated_tokens for ep in episodes)
            metrics = {
                "global_step": self.global_step,
                "charts/iteration": self.iteration,
                "charts/learning_rate": self.optimizer.param_groups[0]["lr"],
                "charts/tokens_per_s": generated / rollout_seconds,
                "charts/rollout_s": rollout_seconds,
                "charts/update_s": time.perf_counter() - start - rollout_seconds,
                **losses,
                **learned,
                **episode_summary(episodes),
            }
            logger.log(metrics)
            if records is not None:
                with TrajectoryWriter(self.trajectories_path) as writer:
                    for record in records:
                        writer.write(record)
            progress.advance(self.iteration, metrics)
            if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0:
                path = self.save_checkpoint()
                if cfg.keep_checkpoints:
                    keep_checkpoint(path, self.iteration)
        return metrics

    def _prepare_trajectories(self) -> None:
        """A fresh run starts its trajectory file anew, as metrics.jsonl; a resumed one drops the records past its
        checkpoint, whose iterations it plays again (the same rollouts, so no episode is lost or doubled)."""
        self.trajectories_path = run_trajectories(self.run_dir, resumed=self.iteration > 0)
        if self.iteration > 0:
            trim_trajectories(self.trajectories_path, self.iteration)
        elif self.config.record_trajectories or self.config.overwrite:  # not another run's records in this one
            remove_run_trajectories(self.run_dir)

    # -- the update ---------------------------------------------------------------------------------------------
    def score(self, batch: TokenBatch, policy: LLMPolicy | None = None, *, details: bool | None = None) -> Scores:
        """Logprobs ``(R, L)`` of the batch's generated tokens without grad. With `details` (by default, for the
        policy itself) also their entropies, and with ppo_llm the value head's estimates and its V(s_T) of each cut
        episode."""
        policy = policy or self.policy
        own = policy is self.policy if details is None else details
        logprobs = torch.zeros_like(batch.rollout_logprobs)
        entropy = torch.zeros_like(batch.rollout_logprobs) if own else None
        with_values = self.value_head is not None and own
        values = torch.zeros_like(batch.rollout_logprobs) if with_values else None
        with torch.no_grad():
            for rows in _by_length(batch, torch.arange(batch.input_ids.shape[0], device=self.device)).split(
                    self.config.micro_batch_size):
                part = None if entropy is None else torch.zeros_like(batch.rollout_logprobs[rows])
                lp, hidden = policy.sequence_logprobs(batch.input_ids[rows], batch.attention_mask[rows],
                                                      batch.action_mask[rows], with_hidden=with_values,
                                                      shared_prefix=batch.shared_prefix, entropy_out=part)
                logprobs[rows] = lp
                if entropy is not None and part is not None:
                    entropy[rows] = part
                if values is not None and hidden is not None and self.value_head is not None:
                    values[rows] = self.value_head(hidden).squeeze(-1) * batch.action_mask[rows]
            bootstrap = None
            if with_values and self.value_head is not None and any(p is not None for p in batch.next_prompts):
                bootstrap = torch.zeros(len(batch.next_prompts), device=self.device)
                cut = [e for e, prompt in enumerate(batch.next_prompts) if prompt is not None]
                hidden = policy.prompt_end_hidden([batch.next_prompts[e] for e in cut],  # type: ignore[misc]
                                                  batch_size=self.config.micro_batch_size)
                bootstrap[cut] = self.value_head(hidden).squeeze(-1)
        return Scores(logprobs, values, entropy, bootstrap)

    def reference_logprobs(self, batch: TokenBatch) -> Tensor | None:
        if self.config.kl_coef == 0:
            return None
        if self.reference is not None:
            return self.score(batch, self.reference)[0]
        with self.policy.model.disable_adapter():  # LoRA: the base model is the reference
            return self.score(batch, self.policy, details=False).logprobs

    def update(self, batch: TokenBatch) -> dict[str, float]:
        """Advantages for the batch, then `update_epochs` passes of clipped-ratio updates; returns loss metrics."""
        cfg, mask = self.config, batch.action_mask
        num_rows = batch.input_ids.shape[0]
        # One optimiser step on the batch with nothing that reads π_old before it (values, a KL reward): π_old is
        # the policy the loss pass runs, so that pass's own logprobs (detached) are π_old, bit for bit, and the
        # separate no-grad scoring pass is skipped (TRL's GRPO does the same).
        one_step = (cfg.update_epochs == 1 and min(cfg.num_minibatches, num_rows) == 1 and self.value_head is None
                    and not (cfg.kl_coef > 0 and cfg.algo in ("reinforce_pp", "ppo_llm")))
        if batch.old_scores is not None:
            scores = batch.old_scores
        elif one_step:
            scores = Scores(torch.zeros_like(batch.rollout_logprobs), None, torch.zeros_like(batch.rollout_logprobs),
                            None)
        else:
            scores = self.score(batch)
        fill_old = one_step and batch.old_scores is None
        old_logprobs, old_values = scores.logprobs, scores.values
        ref_logprobs = self.reference_logprobs(batch)
        kl_reward = None
        if ref_logprobs is not None and cfg.algo in ("reinforce_pp", "ppo_llm"):
            kl_reward = batch.to_view(old_logprobs - ref_logprobs)
        adv_view, returns_view = advantages(cfg, batch, kl=kl_reward,
                                            values=None if old_values is None else batch.to_view(old_values),
                                            bootstrap_values=scores.bootstrap)
        adv = batch.to_rows(adv_view)
        returns = None if returns_view is None else batch.to_rows(returns_view)
        if not all(torch.isfinite(x).all() for x in (adv, returns) if x is not None):
            learned = (f"the learned reward ({cfg.learned_reward}) overflowed: {learned_reward_scale_hint(cfg)}"
                       if cfg.learned_reward else "")
            raise self._non_finite_error(
                f"the advantages or returns ({cfg.algo}, advantage={cfg.advantage})",
                learned or f"the value head or the KL penalty overflowed: lower --learning-rate (now "
                           f"{cfg.learning_rate:g}) or --kl-coef (now {cfg.kl_coef:g})")
        stats: dict[str, list[float]] = defaultdict(list)
        # Dr.GRPO's constant normaliser: the token budget of each generation (turn) a row holds, so that it does not
        # depend on how the history setting splits an episode into rows.
        row_budgets = batch.to_rows(batch.turn_ends.float()).sum(-1) * cfg.max_new_tokens
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        other_loss_terms = self.value_head is not None or (ref_logprobs is not None
                                                           and cfg.algo in ("grpo", "drgrpo", "rloo"))
        for epoch in range(cfg.update_epochs):
            order = torch.randperm(num_rows, generator=self.generator, device=self.device)
            for number, minibatch in enumerate(order.tensor_split(min(cfg.num_minibatches, num_rows))):
                # Every micro-batch divides by the minibatch's token count, so accumulation equals one big batch.
                denominator = (row_budgets[minibatch].sum() if cfg.algo == "drgrpo"
                               else mask[minibatch].sum().clamp_min(1.0))
                self.optimizer.zero_grad()
                marks = {name: len(stats.get(name, ())) for name in _LOSSES}
                # Rows of like length share a micro-batch, which runs only up to its longest row, and rows that
                # need no grad share theirs; the sum over micro-batches is the same whichever rows go together.
                active = adv[minibatch].ne(0).any(-1) | other_loss_terms
                for rows in _by_length(batch, minibatch, first=active).split(cfg.micro_batch_size):
                    # Rows whose every advantage is 0 (a group whose returns were all alike) add exactly 0 to the
                    # gradient when the loss has no other term: their pass runs without grad, for the metrics.
                    idle = not other_loss_terms and not bool(adv[rows].any())
                    with torch.set_grad_enabled(not idle):
                        loss = self._loss(batch, rows, old_logprobs, ref_logprobs, adv, returns, denominator, stats,
                                          fill_old=scores.entropy if fill_old else None)
                    if idle:
                        for p in params:  # as the backward pass of a zero loss leaves them: 0, not None
                            if p.grad is None:
                                p.grad = torch.zeros_like(p)
                    else:
                        loss.backward()
                stats["losses/grad_norm"].append(float(nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)))
                # The losses were read already (.item()), so checking them costs nothing; a bad one stops the
                # update before the step, leaving the weights as they were.
                bad = [(name, value) for name in (*_LOSSES, "losses/grad_norm")
                       for value in stats.get(name, [])[marks.get(name, -1):] if not math.isfinite(value)]
                if bad:
                    name, value = bad[0]
                    raise self._non_finite_error(
                        f"the {name.removeprefix('losses/').replace('_', ' ')} ({value}) at epoch {epoch + 1}, "
                        f"minibatch {number + 1}",
                        f"the optimisation diverged: lower --learning-rate (now {cfg.learning_rate:g})")
                self.optimizer.step()
        if not torch.stack([p.isfinite().all() for p in params]).all():
            raise self._non_finite_error("the weights after the optimiser steps",
                                         f"lower --learning-rate (now {cfg.learning_rate:g})")
        out = {name: float(np.mean(values)) for name, values in stats.items() if name not in _SUMMED}
        # Each micro-batch added its part of a minibatch mean: summed, then averaged over the minibatches.
        steps = cfg.update_epochs * min(cfg.num_minibatches, num_rows)
        out.update({name: float(np.sum(stats[name])) / steps for name in _SUMMED & set(stats)})
        # Sums over tokens, over every pass: a mean per token, not per micro-batch
        tokens = float(cfg.update_epochs * mask.sum())
        out.update({name: float(np.sum(stats[name])) / tokens for name in _TOKEN_SUMS & set(stats)})
        if scores.entropy is not None:
            out["losses/entropy"] = float((scores.entropy * mask).sum() / mask.sum())
        if kl_reward is not None:  # the k1 estimate of KL(π_old || π_ref) the reward was charged
            out["losses/kl_ref"] = float((kl_reward * batch.view_mask).sum() / batch.view_mask.sum())
        diff = ((old_logprobs - batch.rollout_logprobs).abs() * mask).max()
        out["charts/logprob_diff_max"] = float(diff)
        out["charts/advantage_abs_mean"] = float(masked_mean(adv.abs(), mask.bool()))
        if returns is not None and old_values is not None:
            valid = mask.bool()
            residual = (returns - old_values)[valid]
            out["losses/explained_variance"] = float(1 - residual.var() / (returns[valid].var() + 1e-8))
        return out

    def _non_finite_error(self, what: str, fix: str) -> NonFiniteError:
        saved = None if self.saved_iteration is None else f"iteration {self.saved_iteration}"
        return training_stopped(f"{self.config.algo} iteration {self.iteration + 1}", self.run_dir, saved, what, fix)

    def _loss(self, batch: TokenBatch, rows: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor | None,
              adv: Tensor, returns: Tensor | None, denominator: Tensor | int, stats: dict[str, list[float]], *,
              fill_old: Tensor | None = None) -> Tensor:
        """`fill_old` (the entropy tensor of a one-step update): this pass is π_old's scoring pass as well, so its
        detached logprobs are written into `old_logprobs` and its entropies into `fill_old` first."""
        cfg = self.config
        mask = batch.action_mask[rows]
        entropy = None if fill_old is None else torch.zeros_like(batch.rollout_logprobs[rows])
        logprobs, hidden = self.policy.sequence_logprobs(batch.input_ids[rows], batch.attention_mask[rows], mask,
                                                         with_hidden=self.value_head is not None,
                                                         shared_prefix=batch.shared_prefix,
                                                         **({} if entropy is None else {"entropy_out": entropy}))
        if fill_old is not None:
            old_logprobs[rows] = logprobs.detach()
            fill_old[rows] = entropy
        log_ratio = (logprobs - old_logprobs[rows]) * mask
        ratio = log_ratio.exp()
        a = adv[rows]
        clipped = ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
        policy_loss = (torch.max(-a * ratio, -a * clipped) * mask).sum() / denominator
        loss = policy_loss
        stats["losses/policy_loss"].append(policy_loss.item())
        with torch.no_grad():
            valid = mask.bool()
            stats["losses/approx_kl"].append(float(((ratio - 1) - log_ratio)[valid].sum()))
            stats["losses/clipfrac"].append(float(((ratio - 1).abs() > cfg.clip_coef)[valid].float().sum()))
        if ref_logprobs is not None and cfg.algo in ("grpo", "drgrpo", "rloo"):
            # k3 estimator of KL(π || π_ref), always ≥ 0 (as in GRPO). Clamped as verl's low_var_kl: a token the
            # policy has made far less likely than the reference would give exp(Δ) = inf and stop the run.
            delta = ((ref_logprobs[rows] - logprobs) * mask).clamp(-K3_LOG_RATIO_BOUND, K3_LOG_RATIO_BOUND)
            kl = ((delta.exp() - delta - 1).clamp(max=K3_TOKEN_BOUND) * mask).sum() / denominator
            loss = loss + cfg.kl_coef * kl
            stats["losses/kl_ref"].append(kl.item())
        if self.value_head is not None and hidden is not None and returns is not None:
            values = self.value_head(hidden).squeeze(-1)
            value_loss = 0.5 * (((values - returns[rows]) ** 2) * mask).sum() / denominator
            loss = loss + cfg.vf_coef * value_loss
            stats["losses/value_loss"].append(value_loss.item())
        return loss

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Trainable weights (all, or the LoRA adapters), value head, learned reward, optimiser, RNGs and counters."""
        path = Path(path) if path else self.run_dir / "checkpoint.pt"
        state = {
            "config": asdict(self.config),
            "device": str(self.device),
            "device_changes": self.device_changes,
            "trainable": {name: p.detach() for name, p in self.policy.model.named_parameters() if p.requires_grad},
            "value_head": None if self.value_head is None else self.value_head.state_dict(),
            "learned_reward": None if self.learned_reward is None else self.learned_reward.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "iteration": self.iteration,
            "global_step": self.global_step,
        }
        written = write_checkpoint(state, path)
        if written == self.run_dir / "checkpoint.pt":
            self.saved_iteration = self.iteration
        return written

    def load_checkpoint(self, path: str | Path) -> None:
        path, state = read_checkpoint(path, self.device, kind="LLM trainer",
                                      keys=("trainable", "optimizer", "generator", "iteration"))
        names = {name for name, p in self.policy.model.named_parameters() if p.requires_grad}
        if set(state["trainable"]) != names:
            raise ValueError(f"checkpoint {path} holds other trainable weights than this model (different model or "
                             "lora_rank?); resume with the run's own config")
        hint = " (different model or lora_rank?); resume with the run's own config"
        load_weights(self.policy.model, state["trainable"], path, hint=hint, strict=False)
        if self.value_head is not None:
            if state.get("value_head") is None:
                raise ValueError(f"checkpoint {path} has no value head: it is not from a ppo_llm run")
            load_weights(self.value_head, state["value_head"], path, hint=hint)
        if self.learned_reward is not None:
            self.learned_reward.load_state_dict(state["learned_reward"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.device_changes = list(state.get("device_changes", []))
        moved = device_change(path, state, self.device, iteration=state["iteration"],
                              global_step=state["global_step"])
        if moved is None:
            self.generator.set_state(state["generator"].cpu())  # generator states must be CPU tensors
        else:
            self.device_changes.append(moved)
            fresh = reseeded(self.device, self.config.seed, state["iteration"], "sampling")
            self.generator.set_state(fresh.get_state())
        self.iteration, self.global_step = state["iteration"], state["global_step"]
        self.run_dir = path.parent
        self._check_model_unchanged()
        self.saved_iteration = self.iteration if path == self.run_dir / "checkpoint.pt" else None

    def _check_model_unchanged(self) -> None:
        """Warn when the model loaded now is not the one the run started from (its files changed, or another model
        of the same shapes was passed): the checkpoint's trained weights then sit on other frozen ones."""
        try:
            recorded = json.loads((self.run_dir / "config.json").read_text()).get("model_weights")
        except (OSError, ValueError, AttributeError):
            return
        if recorded is not None and recorded != self.model_weights:
            warnings.warn(f"the model {self.config.model!r} is not the one {self.run_dir} started from (its weights "
                          f"differ from the fingerprint in config.json): the resumed run trains on other weights "
                          f"than it began with", stacklevel=3)

    def _run_record(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "seed": self.config.seed, "creditgym": creditgym.__version__,
                "torch": torch.__version__, "transformers": transformers.__version__,
                "model_weights": self.model_weights, "device": str(self.device),
                "device_changes": self.device_changes}


class Scores(NamedTuple):
    """`LLMTrainer.score`'s results, each ``(R, L)`` but `bootstrap` ``(E,)``; None where not computed."""

    logprobs: Tensor
    values: Tensor | None
    entropy: Tensor | None
    bootstrap: Tensor | None


# verl's bounds on the k3 KL term: the per-token log-ratio and the per-token KL
K3_LOG_RATIO_BOUND = 20.0
K3_TOKEN_BOUND = 10.0
_SUMMED = frozenset({"losses/policy_loss", "losses/value_loss", "losses/kl_ref"})
_TOKEN_SUMS = frozenset({"losses/approx_kl", "losses/clipfrac"})
_LOSSES = ("losses/policy_loss", "losses/kl_ref", "losses/value_loss")


def kept_groups(episodes: list[Episode], low: float, high: float) -> list[Episode]:
    """The episodes of groups whose success rate lies in [low, high] (PRIME's accuracy filter; [0, 1] keeps all)."""
    if low <= 0.0 and high >= 1.0:
        return episodes
    by_group: dict[int, list[Episode]] = defaultdict(list)
    for episode in episodes:
        by_group[episode.group].append(episode)
    accuracy = {group: sum(ep.success for ep in members) / len(members) for group, members in by_group.items()}
    return [ep for ep in episodes if low - 1e-9 <= accuracy[ep.group] <= high + 1e-9]


def episode_summary(episodes: list[Episode]) -> dict[str, float]:
    """Success, return, length (turns), invalid-action rate and the mean of each reward channel per episode."""
    channels: dict[str, list[float]] = defaultdict(list)
    for episode in episodes:
        totals: dict[str, float] = defaultdict(float)
        for turn in episode.turns:
            for name, value in turn.reward_components.items():
                totals[name] += value
        for name, value in totals.items():
            channels[name].append(value)
    turns = [turn for episode in episodes for turn in episode.turns]
    return {
        "charts/success_rate": float(np.mean([ep.success for ep in episodes])),
        "charts/episodic_return": float(np.mean([ep.total_reward for ep in episodes])),
        "charts/episodic_length": float(np.mean([len(ep.turns) for ep in episodes])),
        "charts/invalid_rate": float(np.mean([turn.invalid for turn in turns])) if turns else 0.0,
        "charts/response_tokens": float(np.mean([turn.num_tokens for turn in turns])) if turns else 0.0,
        "charts/episodes": float(len(episodes)),
        **{f"reward/{name}": float(np.sum(values) / len(episodes)) for name, values in sorted(channels.items())},
    }


def add_lora(model: PreTrainedModel, cfg: LLMTrainConfig) -> PreTrainedModel:
    """`model` with the LoRA adapters of `cfg` (peft), only they trainable: as training and evaluation build it."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("lora_rank > 0 needs peft: pip install peft (or use lora_rank=0)") from None
    targets: str | list[str] = cfg.lora_target_modules
    if targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


class _Progress:
    """A rich progress bar over iterations with live success rate and generated tokens/s (no-op when disabled)."""

    def __init__(self, enabled: bool, label: str, *, total: int, start: int) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            # stderr, so that a script's stdout holds only what it prints (JSON results, say)
            self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TextColumn("success {task.fields[success]}"), TextColumn("{task.fields[tps]} tok/s"),
                                TimeRemainingColumn(), TextColumn("{task.fields[stage]}"),
                                console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, success="-", tps="-", stage="")

    def show_stage(self, text: str) -> None:
        """Text after the bar for a one-off wait before the first iteration ends ("" clears it)."""
        if self.bar is not None:
            self.bar.update(self.task, stage=text)

    def advance(self, iteration: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=iteration, success=f"{metrics['charts/success_rate']:.0%}",
                            tps=f"{metrics['charts/tokens_per_s']:,.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
