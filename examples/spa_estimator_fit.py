"""Does SPA's progress estimator learn? Fit it to random play's outcomes on Sokoban and test it on held-out episodes.

SPA-RL regresses Σ_t ĉ(s_t, a_t) onto each episode's outcome. This collects episodes of uniformly random play
(among the moves that change the board), trains the estimator on 80% of them and reports, after every epoch, the
explained variance of the outcome on the other 20% (0 = no better than predicting the mean outcome; then the step
rewards are noise) and where the credit of solved episodes goes: to the final, solving move or to the moves before.

It also asks whether ĉ ranks the moves of a state as the best play would. The solver gives every move of a
held-out state its regret: the moves it wastes against the fewest that solve the board, all of them for a move
into a dead-lock. `regret_ranking` reports how often ĉ's favourite move is an optimal one (ties share the pick)
and the chance that an optimal move outscores a wasteful one (an AUC: 0.5 is no better than chance). A dense
reward that ranks moves this way can shorten the agent's horizon (issue 6's myopic PBRS does, at 1.0 by
construction); one that does not cannot. `mean_score_by_move` shows where the credit goes: to walks or pushes,
optimal, wasteful or dead-locking ones. Box distance after the move (the `box_distance` potential) is scored
alongside as a hand-written reference, and `--checkpoints` scores the estimators of PPO runs trained with SPA
(`learned_reward: "spa"`) the same way, on held-out random play and on states their own policy visits.

Two estimator heads are compared on the same episodes and seed:
- `per-action`: creditgym's `GridProgressEstimator` (one output per action, read at the action taken);
- `action-input`: the action one-hot fed into the first layer beside the observation, with tanh units (creditgym's
  estimator until session 6).

    python examples/spa_estimator_fit.py --env creditgym/Sokoban-6x6-2b-v0 --epochs 12
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

import creditgym
from creditgym.agents.evaluate import load_policy
from creditgym.agents.ppo import PPOConfig, make_learned_reward, sample_actions
from creditgym.agents.runs import read_checkpoint
from creditgym.envs.sokoban.level import Tile
from creditgym.envs.sokoban.rules import Action, apply_move
from creditgym.wrappers.learned import EpisodeAssembler, StepEpisode
from creditgym.wrappers.potentials import SolverDistance, box_distance, one_hot
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


def held_out_states(episodes: list, count: int, seed: int) -> Tensor:
    """Up to `count` observations drawn without replacement from the steps of `episodes`."""
    obs = torch.cat([e.obs for e in episodes])
    pick = torch.randperm(len(obs), generator=torch.Generator().manual_seed(seed))[:count]
    return obs[pick]


@torch.no_grad()
def policy_states(checkpoint: str, count: int, seed: int, num_envs: int = 256) -> Tensor:
    """`count` states the PPO policy of `checkpoint` visits (sampled actions), on its own env and view."""
    config, agent = load_policy(checkpoint, torch.device("cpu"))
    envs = gym.make_vec(config.env_id, num_envs=num_envs, **config.env_kwargs)
    obs, info = envs.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    states = []
    for _ in range(math.ceil(count / num_envs)):
        obs = torch.as_tensor(obs)
        states.append(obs)
        mask = info.get("action_mask")  # runs trained without the mask sample among all four moves
        logits, _ = agent(obs, None if mask is None else torch.as_tensor(mask))
        obs, _, _, _, info = envs.step(sample_actions(logits, generator))
    envs.close()
    return torch.cat(states)[:count]


SOLVER = SolverDistance(unsolvable=-math.inf)
"""One solver for every call: it caches each level's walk, and the same levels recur between checkpoints."""


class MoveOutcomes(NamedTuple):
    """Per state and move, ``(N, 4)`` each; NaN (False for `pushes`) for a move that leaves the board as it is."""

    regrets: np.ndarray
    """1 + d(s') − d(s), with d the fewest moves that solve a board; inf for a move into a dead-lock."""
    box_scores: np.ndarray
    """Minus the box distance after the move."""
    pushes: np.ndarray
    """The move pushes a box."""


def move_outcomes(obs: Tensor) -> MoveOutcomes:
    """Every move of every state in `obs`, judged by the solver. Rows whose state is dead-locked stay NaN."""
    regrets = np.full((len(obs), len(Action)), np.nan)
    box_scores = np.full_like(regrets, np.nan)
    pushes = np.zeros(regrets.shape, dtype=bool)
    for row, board in enumerate(obs.argmax(1).numpy().astype(np.int8)):
        moves_left = -SOLVER(board)
        if math.isinf(moves_left):
            continue
        player = tuple(int(i) for i in np.argwhere((board == Tile.PLAYER) | (board == Tile.PLAYER_ON_TARGET))[0])
        for action in Action:
            after = board.copy()
            move = apply_move(after, player, action)
            if move.moved:
                regrets[row, action] = 1 - SOLVER(after) - moves_left
                box_scores[row, action] = float(box_distance(one_hot(after))[0])
                pushes[row, action] = move.pushed
    return MoveOutcomes(regrets, box_scores, pushes)


def mean_score_by_move(scores: np.ndarray, outcomes: MoveOutcomes) -> dict[str, float | None]:
    """Mean score of each kind of move: walks and pushes, optimal (regret 0), wasteful or into a dead-lock."""
    effective = ~np.isnan(outcomes.regrets)
    optimal, dead_lock = effective & (outcomes.regrets == 0), effective & np.isinf(outcomes.regrets)
    wasteful = effective & ~optimal & ~dead_lock
    walks, pushes = effective & ~outcomes.pushes, outcomes.pushes
    kinds = {"optimal_walk": optimal & walks, "wasteful_walk": wasteful & walks, "optimal_push": optimal & pushes,
             "wasteful_live_push": wasteful & pushes, "dead_locking_push": dead_lock}
    return {kind: round(float(scores[mask].mean()), 4) if mask.any() else None for kind, mask in kinds.items()}


def regret_ranking(scores: np.ndarray, regrets: np.ndarray) -> dict[str, float]:
    """How well `scores` ``(N, 4)`` rank each state's moves by their `regrets` (from `move_outcomes`).

    Only states with both an optimal move and a wasteful one (regret above 0, dead-locks included) count.
    `greedy_optimal`: how often the top-scored move is optimal, against `chance_optimal` for a uniformly random
    move. `optimal_over_wasteful_auc`: the chance that an optimal move outscores a wasteful one of the same state
    (ties count half); `live_over_dead_lock_auc`: the same for live moves against dead-locking ones.
    """
    effective = ~np.isnan(regrets)
    optimal = effective & (regrets == 0)
    wasteful = effective & (regrets > 0)
    dead_lock = effective & np.isinf(regrets)
    rows = optimal.any(1) & wasteful.any(1)
    masked = np.where(effective, scores, -np.inf)[rows]
    top = masked == masked.max(1, keepdims=True)
    greedy = (top & optimal[rows]).sum(1) / top.sum(1)  # ties share the pick

    def auc(better: np.ndarray, worse: np.ndarray) -> float | None:
        wins = pairs = 0.0
        for s, b, w in zip(scores, better, worse, strict=True):
            if b.any() and w.any():
                diff = s[b][:, None] - s[w][None, :]
                wins += (diff > 0).sum() + 0.5 * (diff == 0).sum()
                pairs += diff.size
        return round(float(wins / pairs), 4) if pairs else None

    return {"states": int(rows.sum()), "greedy_optimal": round(float(greedy.mean()), 4),
            "chance_optimal": round(float((optimal[rows].sum(1) / effective[rows].sum(1)).mean()), 4),
            "optimal_over_wasteful_auc": auc(optimal, wasteful),
            "live_over_dead_lock_auc": auc(effective & ~dead_lock, dead_lock)}


def judge(scores: np.ndarray, outcomes: MoveOutcomes) -> dict[str, dict]:
    """`regret_ranking` and `mean_score_by_move` of `scores` ``(N, 4)``."""
    return {"regret_ranking": regret_ranking(scores, outcomes.regrets),
            "mean_score_by_move": mean_score_by_move(scores, outcomes)}


def estimator_scores(estimator: nn.Module, obs: Tensor) -> np.ndarray:
    """ĉ(s, a) of every move, ``(N, 4)``."""
    with torch.no_grad():
        return torch.stack([estimator(obs, torch.full((len(obs),), int(a))) for a in Action], 1).double().numpy()


def checkpoint_estimator(path: str, obs_shape: tuple[int, ...]) -> tuple[nn.Module, dict]:
    """The SPA estimator saved in a PPO run's checkpoint, and where that run stood; it must see `obs_shape`."""
    file, state = read_checkpoint(path, torch.device("cpu"))
    config = PPOConfig(**state["config"])
    if config.learned_reward != "spa":
        raise SystemExit(f"{path}: the run's learned_reward is {config.learned_reward!r}; pass runs trained with spa")
    trained_shape = tuple(state["next_obs"].shape[1:])
    if trained_shape != obs_shape:
        raise SystemExit(f"{path}: the run saw observations of shape {trained_shape}, not {obs_shape}; pass runs "
                         f"on --env with the egocentric view (env_kwargs obs_mode 'egocentric')")
    model = make_learned_reward(config, trained_shape, len(Action), torch.device("cpu"))
    model.load_state_dict(state["learned_reward"])
    return model.estimator, {"checkpoint": str(file), "env_steps": int(state["global_step"]), "gamma": config.gamma}


def plot(result: dict, path: str) -> None:
    """Both AUCs of each SPA run's estimator against its env steps, beside the references that do not train."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = {"optimal_over_wasteful_auc": "P(optimal move scores above a wasteful one)",
               "live_over_dead_lock_auc": "P(live move scores above a dead-locking one)"}
    references = {"exact potential (myopic PBRS)": 1.0, "chance": 0.5}
    figure, axes = plt.subplots(1, 2, figsize=(16, 4.5), sharey=True)
    for axis, (metric, label) in zip(axes, metrics.items(), strict=True):
        for states, style in (("random play", "-"), ("on_policy_states", "--")):
            runs: dict[str, list[tuple[int, float]]] = {}
            for row in result["checkpoints"]:
                report = row if states == "random play" else row.get(states)
                if report:
                    runs.setdefault(str(Path(row["checkpoint"]).parent.name), []).append(
                        (row["env_steps"], report["regret_ranking"][metric]))
            where = "random-play states" if states == "random play" else "its policy's states"
            for color, (run, points) in enumerate(runs.items()):
                axis.plot(*zip(*points, strict=True), marker=".", linestyle=style, color=f"C{color}",
                          label=f"SPA in PPO ({run}), {where}")
        lines = {**references, "box distance": result["box_distance"]["regret_ranking"][metric],
                 **{f"SPA fit to random play ({head})": report["regret_ranking"][metric]
                    for head, report in result["heads"].items()}}
        for (name, value), style in zip(lines.items(), ("-", ":", "--", "-.", (0, (1, 3))), strict=False):
            axis.axhline(value, color="grey", linestyle=style, linewidth=1, label=name)
        axis.set(title=label, xlabel="env steps of the PPO run", ylabel="AUC", ylim=(-0.02, 1.02))
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(f"Does SPA's estimator rank moves by their regret? {result['env_id']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def fit(head: str, obs_shape: tuple[int, ...], train: list, test: list, args: argparse.Namespace,
        regret_states: tuple[Tensor, MoveOutcomes]) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        estimator = HEADS[head](obs_shape, 4, hidden=args.hidden)
    model = ProgressAttribution(estimator, learning_rate=args.lr, replay_episodes=len(train), seed=args.seed)
    model.replay.add(train)
    epochs, start = [], time.perf_counter()
    batch = min(64, len(train))  # fewer than 64 episodes: one minibatch of them all, not zero minibatches an epoch
    for epoch in range(args.epochs):
        for minibatch in model.replay.minibatches(len(train) // batch, batch, model.generator):
            model.train_step(minibatch)
        key = f"{model.channel}/explained_variance"  # absent where every episode had the same outcome
        held_out, trained = model.fit_report(test).get(key), model.fit_report(train).get(key)
        epochs.append({"epoch": epoch + 1,
                       "held_out_explained_variance": None if held_out is None else round(held_out, 4),
                       "train_explained_variance": None if trained is None else round(trained, 4)})
    states, outcomes = regret_states
    return {"epochs": epochs, "credit_on_held_out": credit_split(model, test),
            **judge(estimator_scores(estimator, states), outcomes),
            "wall_s": round(time.perf_counter() - start, 1)}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="creditgym/Sokoban-6x6-2b-v0", help="Sokoban id to play")
    parser.add_argument("--num-envs", type=int, default=512, help="boards played at once")
    parser.add_argument("--rollouts", type=int, default=80, help="rollouts of 16 steps per board to collect")
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training episodes")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the estimator")
    parser.add_argument("--hidden", type=int, default=256, help="hidden width of the estimator")
    parser.add_argument("--heads", nargs="*", default=list(HEADS), choices=list(HEADS),
                        help="estimator heads to fit to random play (none: only score --checkpoints)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the levels, the random play and the estimators")
    parser.add_argument("--regret-states", type=int, default=20_000,
                        help="held-out states whose moves are ranked against the solver's regrets")
    parser.add_argument("--checkpoints", nargs="*", default=[],
                        help="PPO checkpoints (files, or run dirs for their last one) trained with SPA, whose "
                             "estimators to score too; PPO's keep_checkpoints keeps one per checkpoint")
    parser.add_argument("--policy-states", type=int, default=5_000,
                        help="also score each checkpoint's estimator on this many states its own policy visits "
                             "(0: only on held-out random play)")
    parser.add_argument("--plot", help="write a PNG of the rankings against the runs' env steps here")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar on stderr (--no-progress for logs)")
    args = parser.parse_args(argv)
    if not args.env.startswith("creditgym/Sokoban-") or args.env not in gym.registry:
        parser.error(f"--env must be a registered Sokoban id such as creditgym/Sokoban-6x6-2b-v0, got {args.env!r}")
    if min(args.num_envs, args.rollouts, args.hidden, args.regret_states) < 1 or args.seed < 0:
        parser.error("--num-envs, --rollouts, --hidden and --regret-states must be at least 1, --seed 0 or more")
    if args.epochs < 0 or args.policy_states < 0 or not args.lr > 0:
        parser.error("--epochs and --policy-states must be 0 or more, --lr positive")
    missing = [path for path in args.checkpoints if not Path(path).exists()]
    if missing:
        parser.error(f"--checkpoints: no such file or folder: {', '.join(missing)}")
    if args.plot and not Path(args.plot).parent.is_dir():
        parser.error(f"--plot: no folder {Path(args.plot).parent}; create it or write the PNG elsewhere")
    torch.set_num_threads(1)
    # stderr: stdout holds only the JSON result, which the documented command redirects to a file
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), disable=not args.progress)
    with bar:
        result = _fit_and_score(args, parser, bar)
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, indent=2))
    return result


def _fit_and_score(args: argparse.Namespace, parser: argparse.ArgumentParser, bar: Progress) -> dict:
    task = bar.add_task("random play", total=2 + len(args.heads) + len(args.checkpoints))
    env_kwargs = {"obs_mode": "egocentric", "action_mask": True, "rewards": "outcome"}
    episodes = random_play_episodes(args.env, env_kwargs, num_envs=args.num_envs, rollouts=args.rollouts,
                                    seed=args.seed)
    if len(episodes) < 10:
        parser.error(f"random play finished only {len(episodes)} episodes: raise --rollouts or --num-envs")
    split = int(0.8 * len(episodes))
    train, test = episodes[:split], episodes[split:]
    bar.update(task, advance=1, description="solver regrets")
    states = held_out_states(test, args.regret_states, args.seed)
    outcomes = move_outcomes(states)
    bar.advance(task)
    heads = {}
    for head in args.heads:
        bar.update(task, description=f"fit {head} head")
        heads[head] = fit(head, tuple(train[0].obs.shape[1:]), train, test, args, (states, outcomes))
        bar.advance(task)
    result = {"example": "spa_estimator_fit", "creditgym": creditgym.__version__, "env_id": args.env,
              "env_kwargs": env_kwargs,
              "settings": {k: v for k, v in vars(args).items() if k not in ("env", "progress")},
              "episodes": {"train": len(train), "held_out": len(test),
                           "solved": round(sum(e.success for e in episodes) / len(episodes), 4),
                           "mean_length": round(sum(len(e) for e in episodes) / len(episodes), 1)},
              "heads": heads,
              "box_distance": judge(outcomes.box_scores, outcomes),
              "checkpoints": []}
    for path in args.checkpoints:
        bar.update(task, description=f"score {path}")
        estimator, run = checkpoint_estimator(path, tuple(states.shape[1:]))
        row = {**run, **judge(estimator_scores(estimator, states), outcomes)}
        if args.policy_states:
            visited = policy_states(path, args.policy_states, args.seed)
            row["on_policy_states"] = judge(estimator_scores(estimator, visited), move_outcomes(visited))
        result["checkpoints"].append(row)
        bar.advance(task)
    result["checkpoints"].sort(key=lambda row: (str(Path(row["checkpoint"]).parent), row["env_steps"]))
    return result


if __name__ == "__main__":
    main()
