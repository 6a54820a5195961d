"""Does SPA's progress estimator learn? Fit it to random play's outcomes on Sokoban and test it on held-out episodes.

SPA-RL regresses Σ_t ĉ(s_t, a_t) onto each episode's outcome. This collects episodes of uniformly random play
(among the moves that change the board), trains the estimator on 80% of them and reports, after every epoch, the
explained variance of the outcome on the other 20% (0 = no better than predicting the mean outcome; then the step
rewards are noise) and where the credit of solved episodes goes: to the final, solving move or to the moves before.

Two estimator heads are compared on the same episodes and seed:
- `per-action`: creditgym's `GridProgressEstimator` (one output per action, read at the action taken);
- `action-input`: the action one-hot fed into the first layer beside the observation, with tanh units (creditgym's
  estimator until session 6).

    python examples/spa_estimator_fit.py --env creditgym/Sokoban-6x6-2b-v0 --epochs 12
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

import creditgym
from creditgym.wrappers.learned import EpisodeAssembler, StepEpisode
from creditgym.wrappers.progress import GridProgressEstimator, ProgressAttribution


class ActionInputEstimator(nn.Module):
    """ĉ(s, a) from one MLP over [flattened observation, one-hot action] (the head creditgym replaced)."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, *, hidden: int) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.net = nn.Sequential(nn.Linear(int(np.prod(obs_shape)) + num_actions, hidden), nn.Tanh(),
                                 nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        one_hot = nn.functional.one_hot(actions.reshape(-1), self.num_actions).float()
        return self.net(torch.cat((obs.reshape(actions.numel(), -1).float(), one_hot), -1)).reshape(actions.shape)

    def contributions(self, episodes: list[StepEpisode]) -> Tensor:
        return self(torch.cat([e.obs for e in episodes]), torch.cat([e.actions for e in episodes]))


HEADS = {"per-action": GridProgressEstimator, "action-input": ActionInputEstimator}


def random_play_episodes(env_id: str, env_kwargs: dict, *, num_envs: int, rollouts: int, seed: int) -> list:
    """Finished episodes of random play among the effective moves, cut by PPO's own `EpisodeAssembler`."""
    envs = gym.make_vec(env_id, num_envs=num_envs, **env_kwargs)
    obs, info = envs.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    assembler, episodes, horizon = EpisodeAssembler(num_envs), [], 16
    for _ in range(rollouts):
        obs_buf = torch.zeros((horizon, num_envs, *obs.shape[1:]), dtype=obs.dtype)
        actions = torch.zeros((horizon, num_envs), dtype=torch.long)
        terminated, truncated, success = (torch.zeros((horizon, num_envs), dtype=torch.bool) for _ in range(3))
        for t in range(horizon):
            obs_buf[t] = obs
            actions[t] = torch.multinomial(torch.as_tensor(info["action_mask"]).float() + 1e-9, 1,
                                           generator=generator).squeeze(1)
            obs, _, terminated[t], truncated[t], info = envs.step(actions[t])
            success[t] = info["success"]
        episodes += assembler.add_rollout(obs_buf, actions, torch.ones_like(terminated), terminated, truncated,
                                          success)
    envs.close()
    return episodes


def credit_split(model: ProgressAttribution, episodes: list) -> dict[str, float]:
    """Mean ĉ of the solving move, of the other moves of solved episodes, and of the moves of failed ones."""
    contributions = model.contributions(episodes)
    solved = [c for c, e in zip(contributions, episodes, strict=True) if e.success]
    failed = [c for c, e in zip(contributions, episodes, strict=True) if not e.success]

    def mean(values: list[Tensor]) -> float | None:  # None where the held-out episodes have no such move
        joined = torch.cat(values) if values else torch.zeros(0)
        return round(float(joined.mean()), 4) if joined.numel() else None

    return {"solving_move": mean([c[-1:] for c in solved]), "other_moves_of_solved": mean([c[:-1] for c in solved]),
            "moves_of_failed": mean(failed)}


def fit(head: str, obs_shape: tuple[int, ...], train: list, test: list, args: argparse.Namespace) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        estimator = HEADS[head](obs_shape, 4, hidden=args.hidden)
    model = ProgressAttribution(estimator, learning_rate=args.lr, replay_episodes=len(train), seed=args.seed)
    model.replay.add(train)
    epochs, start = [], time.perf_counter()
    for epoch in range(args.epochs):
        for minibatch in model.replay.minibatches(len(train) // 64, 64, model.generator):
            model.train_step(minibatch)
        key = f"{model.channel}/explained_variance"  # absent where every episode had the same outcome
        held_out, trained = model.fit_report(test).get(key), model.fit_report(train).get(key)
        epochs.append({"epoch": epoch + 1,
                       "held_out_explained_variance": None if held_out is None else round(held_out, 4),
                       "train_explained_variance": None if trained is None else round(trained, 4)})
    return {"epochs": epochs, "credit_on_held_out": credit_split(model, test),
            "wall_s": round(time.perf_counter() - start, 1)}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="creditgym/Sokoban-6x6-2b-v0", help="Sokoban id to play")
    parser.add_argument("--num-envs", type=int, default=512, help="boards played at once")
    parser.add_argument("--rollouts", type=int, default=80, help="rollouts of 16 steps per board to collect")
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training episodes")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the estimator")
    parser.add_argument("--hidden", type=int, default=256, help="hidden width of the estimator")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS), help="estimator heads")
    parser.add_argument("--seed", type=int, default=0, help="seeds the levels, the random play and the estimators")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    env_kwargs = {"obs_mode": "egocentric", "action_mask": True, "rewards": "outcome"}
    episodes = random_play_episodes(args.env, env_kwargs, num_envs=args.num_envs, rollouts=args.rollouts,
                                    seed=args.seed)
    if len(episodes) < 10:
        parser.error(f"random play finished only {len(episodes)} episodes: raise --rollouts or --num-envs")
    split = int(0.8 * len(episodes))
    train, test = episodes[:split], episodes[split:]
    result = {"example": "spa_estimator_fit", "creditgym": creditgym.__version__, "env_id": args.env,
              "env_kwargs": env_kwargs, "settings": {k: v for k, v in vars(args).items() if k != "env"},
              "episodes": {"train": len(train), "held_out": len(test),
                           "solved": round(sum(e.success for e in episodes) / len(episodes), 4),
                           "mean_length": round(sum(len(e) for e in episodes) / len(episodes), 1)},
              "heads": {head: fit(head, tuple(train[0].obs.shape[1:]), train, test, args) for head in args.heads}}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
