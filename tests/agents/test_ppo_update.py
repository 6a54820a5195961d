"""PPO's update, checked from outside: the loss of every minibatch, the advantages' inputs, the schedules and sampling.

The loss is computed inline in `PPO._updates`, so these tests watch the real trainer on tiny configs through spies
(the GAE call, the env's steps, the sampled actions, the minibatch orders, the network's forward passes in the update,
every `backward()` and optimiser step) and recompute what each piece must be by hand.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import creditgym.agents.ppo as ppo_module
from creditgym.agents.ppo import PPO, PPOConfig, sample_actions
from creditgym.credit import gae as real_gae


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _config(tmp_path: Path, **overrides: Any) -> PPOConfig:
    # float32 on the CPU: bfloat16 (the default on AMX CPUs and GPUs) and GPU kernels would make the update's logits
    # and the bootstrap values differ from the rollout's by more than the tolerances below.
    values: dict[str, Any] = dict(
        env_id="creditgym/Sokoban-6x6-1b-v0", num_envs=8, num_steps=16, total_steps=128, hidden=16, device="cpu",
        precision="float32", progress=False, tensorboard=False, checkpoint_every=0, runs_dir=str(tmp_path),
        run_name="run")
    values.update(overrides)
    return PPOConfig(**values)


@dataclass
class _Spy:
    """What one `PPO.learn()` did, recorded by `_watch`."""

    first_obs: torch.Tensor
    first_mask: torch.Tensor | None
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]] = field(default_factory=list)
    sampled: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (logits, actions)
    gae_calls: list[dict[str, Any]] = field(default_factory=list)
    orders: list[torch.Tensor] = field(default_factory=list)  # the update's minibatch permutations
    forwards: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    step_lrs: list[float] = field(default_factory=list)

    def obs_buffer(self) -> torch.Tensor:
        """(T*N, ...) observations the policy acted on, in PPO's flat order (step-major); for a run of one update."""
        obs = [self.first_obs] + [step[0] for step in self.steps[:-1]]
        return torch.stack(obs).flatten(0, 1)

    def mask_buffer(self) -> torch.Tensor:
        assert self.first_mask is not None
        masks = [self.first_mask] + [step[3]["action_mask"] for step in self.steps[:-1]]
        return torch.stack(masks).flatten(0, 1)


def _watch(trainer: PPO, monkeypatch: pytest.MonkeyPatch) -> _Spy:
    """Spies on the trainer for one update's worth of checks (each still calls the real code)."""
    spy = _Spy(first_obs=trainer.next_obs.clone(),
               first_mask=None if trainer.next_mask is None else trainer.next_mask.clone())

    env_step = trainer.envs.step

    def step(action: torch.Tensor) -> Any:
        obs, reward, terminated, truncated, info = env_step(action)
        spy.steps.append((obs.clone(), terminated.clone(), truncated.clone(), dict(info)))
        return obs, reward, terminated, truncated, info

    monkeypatch.setattr(trainer.envs, "step", step)

    def sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        actions = sample_actions(logits, generator)
        spy.sampled.append((logits.clone(), actions.clone()))
        return actions

    monkeypatch.setattr(ppo_module, "sample_actions", sample)

    signature = inspect.signature(real_gae)

    def gae(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        bound = signature.bind(*args, **kwargs).arguments
        advantages, returns = real_gae(*args, **kwargs)
        # The values a bootstrap may use, from the network as the rollout left it (the update changes it next): the
        # observation after the rollout's last step, and each step's final observations of the episodes that ended.
        with torch.no_grad():
            last_value = trainer.agent(trainer.next_obs)[1]
            final_values = [trainer.agent(info["final_obs"])[1] if "final_obs" in info else None
                            for *_, info in spy.steps[-trainer.config.num_steps:]]
        spy.gae_calls.append({**{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in bound.items()},
                              "advantages": advantages.clone(), "returns": returns.clone(),
                              "last_value": last_value, "final_values": final_values})
        return advantages, returns

    monkeypatch.setattr(ppo_module, "gae", gae)

    randperm = torch.randperm

    def order(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = randperm(*args, **kwargs)
        if kwargs.get("generator") is trainer.generator:  # not an env's own draws (levels)
            spy.orders.append(out.clone())
        return out

    monkeypatch.setattr(torch, "randperm", order)

    forward = trainer.agent.forward

    def watched_forward(obs: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value = forward(obs, mask)
        if torch.is_grad_enabled():  # the update's passes; the rollout's run under no_grad
            spy.forwards.append((obs.clone(), None if mask is None else mask.clone(), logits, value))
        return logits, value

    monkeypatch.setattr(trainer.agent, "forward", watched_forward)

    backward = torch.Tensor.backward

    def watched_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        spy.losses.append(self.detach().clone())
        backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", watched_backward)
    # One entry per optimiser step, with the learning rate it stepped at.
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: spy.step_lrs.append(optimizer.param_groups[0]["lr"]))
    return spy


def _reference_loss(cfg: PPOConfig, logits: torch.Tensor, value: torch.Tensor, actions: torch.Tensor,
                    old_logprob: torch.Tensor, adv: torch.Tensor, returns: torch.Tensor,
                    old_value: torch.Tensor) -> tuple[torch.Tensor, dict[str, bool]]:
    """PPO's clipped loss of one minibatch (CleanRL's), and which clipped branches this minibatch exercised."""
    c = cfg.clip_coef
    log_probs = logits.log_softmax(-1)
    ratio = (log_probs.gather(1, actions[:, None]).squeeze(1) - old_logprob).exp()
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - c, 1 + c)).mean()
    unclipped_v = (value - returns) ** 2
    clipped_v = (old_value + (value - old_value).clamp(-c, c) - returns) ** 2
    v_loss = 0.5 * (torch.maximum(unclipped_v, clipped_v) if cfg.clip_vloss else unclipped_v).mean()
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    exercised = {
        # The upper clip bites only where the ratio passed 1 + c with a positive advantage.
        "upper_clip": bool(((ratio > 1 + c) & (adv > 0)).any()),
        # The clipped value term wins where the value moved past the clip and away from the return.
        "value_clip": bool((clipped_v > unclipped_v).any()),
        # ... and loses where it moved past the clip towards the return (min would pick it).
        "value_clip_loses": bool((((value - old_value).abs() > c) & (clipped_v < unclipped_v)).any()),
    }
    return pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss, exercised


@pytest.mark.parametrize("clip_vloss", [False, True])
def test_every_minibatch_loss_is_the_clipped_ppo_loss_over_its_own_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_vloss: bool) -> None:
    # A small clip and a high learning rate push ratios and values past the clip within the update, so every branch
    # of the loss (upper ratio clip, clipped value loss, normalised advantages, entropy bonus) decides its value.
    cfg = _config(tmp_path, clip_coef=0.02, learning_rate=0.02, update_epochs=3, num_minibatches=4, ent_coef=0.1,
                  clip_vloss=clip_vloss, env_kwargs={"action_mask": True, "max_episode_steps": 5})
    trainer = PPO(cfg)
    spy = _watch(trainer, monkeypatch)
    trainer.learn()

    (call,) = spy.gae_calls
    old_logits = torch.stack([logits for logits, _ in spy.sampled]).flatten(0, 1)
    b_actions = torch.stack([actions for _, actions in spy.sampled]).flatten()
    b_logprob = old_logits.log_softmax(-1).gather(1, b_actions[:, None]).squeeze(1)
    b_obs, b_mask = spy.obs_buffer(), spy.mask_buffer()
    b_adv, b_returns, b_values = call["advantages"].flatten(), call["returns"].flatten(), call["values"].flatten()
    minibatch = cfg.batch_size // cfg.num_minibatches
    assert len(spy.orders) == cfg.update_epochs
    assert len(spy.forwards) == len(spy.losses) == cfg.update_epochs * cfg.num_minibatches

    exercised: dict[str, bool] = {}
    for k, ((obs, mask, logits, value), loss) in enumerate(zip(spy.forwards, spy.losses, strict=True)):
        epoch, start = divmod(k, cfg.num_minibatches)
        idx = spy.orders[epoch][start * minibatch:(start + 1) * minibatch]
        # Each epoch's minibatches partition the shuffled batch: minibatch j holds rows order[j*m:(j+1)*m].
        assert torch.equal(obs.flatten(1), b_obs[idx].flatten(1)), f"epoch {epoch}, minibatch {start}: wrong rows"
        # The update's policy sees the same action mask as the rollout's, or its ratios compare different policies.
        assert mask is not None and torch.equal(mask, b_mask[idx]), f"epoch {epoch}, minibatch {start}: mask"
        expected, used = _reference_loss(cfg, logits.detach(), value.detach(), b_actions[idx], b_logprob[idx],
                                         b_adv[idx], b_returns[idx], b_values[idx])
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, e=epoch, s=start: f"epoch {e}, minibatch {s}: {m}")
        exercised = {name: exercised.get(name, False) or hit for name, hit in used.items()}
    # Without these the comparison above could not tell the clipped branches from the unclipped ones.
    assert exercised["upper_clip"]
    if clip_vloss:
        assert exercised["value_clip"] and exercised["value_clip_loses"]
    # Advantages that are not centred already: normalising without subtracting the mean changes the loss.
    assert abs(b_adv.mean().item()) > 1e-3


def test_advantages_bootstrap_from_the_final_observation_on_truncation_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One push solves this board, so random play ends episodes by termination, and a 3-step limit by truncation.
    level = tmp_path / "one-push.txt"
    level.write_text("; 0\n######\n#    #\n# @$.#\n#    #\n#    #\n######\n")
    cfg = _config(tmp_path, num_envs=16, gamma=0.9, gae_lambda=0.6, total_steps=256,
                  env_kwargs={"levels": str(level), "max_episode_steps": 3})
    trainer = PPO(cfg)
    spy = _watch(trainer, monkeypatch)
    trainer.learn()

    (call,) = spy.gae_calls
    terminated = torch.stack([s[1] for s in spy.steps])
    truncated = torch.stack([s[2] for s in spy.steps])
    assert terminated.any() and truncated.any()  # both kinds of ending happen in this rollout
    # gae gets the env's flags in their own places, and this config's discount and lambda.
    assert torch.equal(call["terminated"], terminated) and torch.equal(call["truncated"], truncated)
    assert call["gamma"] == cfg.gamma and call["lam"] == cfg.gae_lambda

    values = call["values"]
    expected = torch.cat((values[1:], call["last_value"][None]))
    continuing = expected.clone()  # what the next step's value (the new episode's first) would give
    for t, ((_, term, trunc, info), final_values) in enumerate(zip(spy.steps, call["final_values"], strict=True)):
        if final_values is None:
            continue
        rows = info["_final_obs"].nonzero().squeeze(1)  # final_obs row k belongs to the k-th ended env
        assert torch.equal(term[rows] | trunc[rows], torch.ones_like(rows, dtype=torch.bool))
        expected[t, rows] = torch.where(trunc[rows], final_values, torch.zeros_like(final_values))
    torch.testing.assert_close(call["next_values"], expected, rtol=1e-5, atol=1e-6)
    # The final observation's value differs from the next episode's first: bootstrapping from the wrong one shows.
    assert ((expected - continuing).abs()[truncated] > 1e-4).any()
    assert ((expected - continuing).abs()[terminated] > 1e-4).any()


def test_anneal_lr_decays_the_learning_rate_linearly_per_update(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path, total_steps=3 * 128, learning_rate=0.003, num_minibatches=2, update_epochs=1)
    trainer = PPO(cfg)
    spy = _watch(trainer, monkeypatch)
    trainer.learn()

    # Update u (from 0) steps at lr * (1 - u / num_updates): 0.003, 0.002, 0.001, never reaching 0.
    expected = [cfg.learning_rate * (1 - u / cfg.num_updates) for u in range(cfg.num_updates)]
    logged = [json.loads(line)["charts/learning_rate"]
              for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(expected)
    assert spy.step_lrs == pytest.approx([lr for lr in expected for _ in range(cfg.num_minibatches)])


def test_first_update_of_a_masked_env_starts_at_the_rollout_policy(tmp_path: Path) -> None:
    # One epoch of one minibatch steps once, after the forward pass: the update's log-probabilities are the rollout's
    # only if it masks the same actions, so the ratio is exactly 1 (the masked env has many disallowed moves).
    cfg = _config(tmp_path, env_kwargs={"action_mask": True}, update_epochs=1, num_minibatches=1)
    metrics = PPO(cfg).learn()
    assert metrics["losses/approx_kl"] == pytest.approx(0.0, abs=1e-5)  # unmasked, it is about 0.15
    assert metrics["losses/clipfrac"] == 0.0


@pytest.mark.parametrize(("target_kl", "epochs_run"), [(1e-9, 1), (1e9, 4)])
def test_target_kl_stops_after_the_epoch_whose_kl_passes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              target_kl: float, epochs_run: int) -> None:
    # The check follows each epoch: a tiny target stops after the first, an unreachable one never stops.
    cfg = _config(tmp_path, target_kl=target_kl, update_epochs=4, num_minibatches=2)
    trainer = PPO(cfg)
    spy = _watch(trainer, monkeypatch)
    metrics = trainer.learn()
    assert len(spy.step_lrs) == epochs_run * cfg.num_minibatches
    assert metrics["losses/approx_kl"] > 1e-9  # the last epoch's KL did pass the tiny target


def test_gumbel_max_samples_follow_the_softmax_and_never_a_masked_action() -> None:
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, torch.finfo(torch.float32).min])
    generator = torch.Generator().manual_seed(0)
    draws = 100_000
    actions = sample_actions(logits.expand(draws, -1), generator)
    frequencies = torch.bincount(actions, minlength=len(logits)).double() / draws
    # 0.01 is over 6 standard errors of a frequency at 100k draws; a flipped Gumbel sign is off by ~0.1-0.3.
    torch.testing.assert_close(frequencies, logits.double().softmax(-1), rtol=0, atol=0.01)
    assert frequencies[-1] == 0
