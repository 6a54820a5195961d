"""Compare finished runs side by side: env steps to success thresholds per seed, the ratio to a baseline, and
success curves with seed bands.

Runs are grouped by what they were trained with: the config fields that differ between the given runs, other
than the seed and bookkeeping such as the run's folder, device or logging (`BOOKKEEPING`). So three seeds each of
`--learned-reward spa` and plain PPO form two groups, labelled ``learned_reward=spa`` and ``learned_reward=None``.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

import creditgym
from creditgym.agents.plots import plot_seed_bands, read_metrics

#: Config fields that do not change what a run learns, so they never split runs into groups.
BOOKKEEPING = frozenset({
    "seed", "run_name", "runs_dir", "device", "threads", "precision", "checkpoint_every", "keep_checkpoints",
    "overwrite", "progress", "tensorboard", "record_envs", "record_trajectories", "rollout_backend", "num_workers",
    "ray_address", "ray_wait_for_cpus", "generation_backend", "generation_url", "generation_model", "vllm_python",
    "vllm_dtype", "vllm_kv_cache_gb", "micro_batch_size",
})
#: Budgets differ between runs that are otherwise alike; comparisons are made at equal env steps instead.
BUDGETS = frozenset({"total_steps", "iterations"})


def steps_to(rows: list[dict[str, float]], threshold: float, *, skip_steps: int = 0,
             min_episodes: int = 500) -> int | None:
    """First env step at which training success, over the last `min_episodes` finished episodes, reaches `threshold`.

    Updates before `skip_steps` are ignored: early on only short episodes have ended, and those are mostly
    successes, so the first updates overstate success (use the time limit times the number of envs).
    """
    window: list[tuple[float, float]] = []  # (episodes, successes) per update, newest last
    for row in rows:
        if row["global_step"] <= skip_steps or "charts/success_rate" not in row:
            continue
        episodes = row.get("charts/episodes", 1.0)
        window.append((episodes, episodes * row["charts/success_rate"]))
        while len(window) > 1 and sum(e for e, _ in window[1:]) >= min_episodes:
            window.pop(0)
        total = sum(e for e, _ in window)
        if total >= min_episodes and sum(s for _, s in window) / total >= threshold:
            return int(row["global_step"])
    return None


def read_step(rows: list[dict[str, float]], step: float) -> float | None:
    """The env step of the first logged row at or after `step`, where success at `step` is read (None: the run
    never got there). Not the last row before it: a run that logs every 8,192 steps would be read up to a whole
    rollout early, and so against a run that logs often, at fewer env steps."""
    return next((row["global_step"] for row in rows if row["global_step"] >= step), None)


def success_at(rows: list[dict[str, float]], step: float, *, skip_steps: int = 0,
               min_episodes: int = 500) -> float | None:
    """Training success over the last `min_episodes` episodes finished by the first logged row at or after env step
    `step` (`read_step`), leaving out updates before `skip_steps` as `steps_to` does (None: the run never got to
    `step`, or no episode finished in between)."""
    end = read_step(rows, step)
    if end is None:
        return None
    episodes = successes = 0.0
    kept = [r for r in rows if skip_steps < r["global_step"] <= end and "charts/success_rate" in r]
    for row in reversed(kept):
        count = row.get("charts/episodes", 1.0)
        episodes += count
        successes += count * row["charts/success_rate"]
        if episodes >= min_episodes:
            break
    return successes / episodes if episodes else None


def warm_up_steps(config: dict[str, Any]) -> int:
    """Env steps to skip before judging success: PPO's time limit times its envs (only short episodes have ended
    before that); none for LLM runs, whose every iteration finishes all its episodes."""
    if config.get("algo", "ppo") != "ppo" or "num_envs" not in config:
        return 0
    # The run's own limit where it set one (env_kwargs, as PPO passes it to the env), else its env's.
    limit = (config.get("env_kwargs") or {}).get("max_episode_steps")
    if not isinstance(limit, int) or isinstance(limit, bool):
        try:
            limit = gym.spec(config["env_id"]).max_episode_steps or 0
        except gym.error.Error:
            limit = 0
    return int(config["num_envs"]) * limit


@dataclass
class Run:
    """One run folder's config and metrics."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, float]]

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def last_step(self) -> float:
        return self.rows[-1]["global_step"] if self.rows else 0


def load_run(path: str | Path) -> Run:
    """A run folder written by `creditgym train` (PPO or LLM), with errors that say what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a run folder; pass folders that `creditgym train` wrote")
    for name in ("config.json", "metrics.jsonl"):
        if not (path / name).is_file():
            raise ValueError(f"{path} has no {name}, so it is not a run folder written by `creditgym train` "
                             f"(or the run stopped before its first update)")
    try:
        record = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / 'config.json'} is not valid JSON ({err}); it is damaged") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{path / 'config.json'} has no 'config' object; it was not written by `creditgym train`")
    rows = [row for row in read_metrics(path) if isinstance(row, dict) and isinstance(row.get("global_step"),
                                                                                       (int, float))]
    return Run(path, record["config"], rows)


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by label: the config fields (outside `BOOKKEEPING` and `BUDGETS`) whose values differ between runs."""
    def settings(run: Run) -> dict[str, str]:
        return {key: json.dumps(value, sort_keys=True) for key, value in run.config.items()
                if key not in BOOKKEEPING | BUDGETS}

    every = [settings(run) for run in runs]
    keys = sorted({key for s in every for key in s})
    differing = [key for key in keys if len({s.get(key) for s in every}) > 1]
    groups: dict[str, list[Run]] = {}
    for run, s in zip(runs, every, strict=True):
        label = ", ".join(f"{key}={_short(s.get(key))}" for key in differing) or _env_name(run.config)
        groups.setdefault(label, []).append(run)
    return groups


#: what `creditgym compare` writes beside the runs by default, which the next `compare runs/exp/*` globs up
COMPARE_OUTPUTS = ("comparison.json", "comparison.png")


def load_runs(paths: Sequence[str | Path | Run]) -> list[Run]:
    """Each run folder once (loaded ones pass through), in the order given; files that an earlier compare wrote
    beside the runs (`COMPARE_OUTPUTS`) are left out."""
    paths = [p for p in paths if isinstance(p, Run) or not (Path(p).name in COMPARE_OUTPUTS and Path(p).is_file())]
    if not paths:
        raise ValueError("pass at least one run folder")
    unique = dict.fromkeys(p.path if isinstance(p, Run) else Path(p).resolve() for p in paths)
    loaded = {p.path: p for p in paths if isinstance(p, Run)}
    return [loaded.get(path) or load_run(path) for path in unique]


def compare_runs(paths: Sequence[str | Path | Run], *, thresholds: Sequence[float] = (0.5, 0.8),
                 baseline: str | None = None, min_episodes: int = 500) -> dict[str, Any]:
    """Per group: each seed's env steps to every threshold, their mean and its standard error over seeds (`*_se`),
    success at the shared budget (read at each run's first logged row at or after it, `shared_steps_read_at`) and
    env-steps/s; with `baseline` (a label, or a unique part of one), the baseline's mean steps over each group's.

    `seed_noise` compares each group with the baseline (without one, every two groups) on each of those means: a
    difference is within seed noise where the groups' mean ± 2·SE intervals overlap, and a warning says so. That is
    a rough screen, not a test: with 2 or 3 seeds the SE itself is uncertain, so even intervals that do not overlap
    are weak evidence. Groups with a single seed have no SE and are not screened (a warning says that too).
    """
    if any(not 0 < t <= 1 for t in thresholds):
        raise ValueError(f"thresholds must be success rates in (0, 1], got {list(thresholds)}")
    if min_episodes < 1:
        raise ValueError(f"the window (--window) must be at least 1 episode, got {min_episodes}")
    runs = load_runs(paths)
    groups = group_runs(runs)
    shared_budget = min(run.last_step for run in runs)
    warnings = _warnings(runs, groups)
    result: dict[str, Any] = {"creditgym": creditgym.__version__, "runs": len(runs), "shared_env_steps": shared_budget,
                              "thresholds": list(thresholds), "window_episodes": min_episodes, "groups": {},
                              "warnings": warnings}
    for label, members in groups.items():
        seeds = {}
        names = [run.path.name for run in members]
        for run in members:
            skip = warm_up_steps(run.config)
            # By folder: runs of one group may share a seed (a cpu and a cuda run, say), and each must count.
            seeds[run.path.name if names.count(run.path.name) == 1 else str(run.path)] = {
                "seed": run.seed,
                "run_dir": str(run.path),
                **{_key(t): steps_to(run.rows, t, skip_steps=skip, min_episodes=min_episodes) for t in thresholds},
                "success_at_shared_steps": success_at(run.rows, shared_budget, skip_steps=skip,
                                                      min_episodes=min_episodes),
                "shared_steps_read_at": read_step(run.rows, shared_budget),
                "env_steps_per_s": next((row["charts/sps"] for row in reversed(run.rows) if "charts/sps" in row),
                                        None),
                **held_out_success(run.path),
            }
        result["groups"][label] = {"seeds": seeds, **_means(seeds, thresholds)}
    read_at = [seed["shared_steps_read_at"] for group in result["groups"].values() for seed in group["seeds"].values()]
    if max(read_at) > shared_budget:  # runs that log at other steps: say how far apart their readings are
        warnings.append(f"success at {shared_budget:,.0f} steps is read at each run's first logged row at or after "
                        f"them, here {min(read_at):,.0f} to {max(read_at):,.0f} env steps (shared_steps_read_at)")
    if baseline is not None:
        base = _find_label(baseline, result["groups"])
        result["baseline"] = base
        for summary in result["groups"].values():
            for t in thresholds:
                key = _key(t)
                # A mean over only the seeds that got there would flatter a group, so ratios need every seed.
                whole = all(seed[key] is not None for group in (summary, result["groups"][base])
                            for seed in group["seeds"].values())
                summary[f"speedup_{key}"] = round(result["groups"][base][key] / summary[key], 3) if whole else None
    result["seed_noise"] = _seed_noise(result, [_key(t) for t in thresholds] + list(_RATES))
    return result


def plot_comparison(paths: Sequence[str | Path | Run], out: str | Path, *, title: str = "") -> Path:
    """Training success against env steps, one seed band per group."""
    runs = load_runs(paths)
    groups = group_runs(runs)
    skip = max(warm_up_steps(run.config) for run in runs)
    return plot_seed_bands({label: [run.rows for run in members] for label, members in groups.items()}, out,
                           title=title, skip_steps=skip)


def _key(threshold: float) -> str:
    return f"steps_to_{threshold * 100:g}"


#: Per-seed success rates a group gets the mean and standard error of.
_RATES = ("success_at_shared_steps", "held_out_greedy", "held_out_sampled")


def _means(seeds: dict[str, dict[str, Any]], thresholds: Sequence[float]) -> dict[str, Any]:
    """Each threshold's mean steps over the seeds that got there, and each rate's mean over every seed, each with
    its standard error over seeds (`_se`: sample standard deviation / √n; None with fewer than 2 seeds)."""
    out: dict[str, Any] = {}
    for t in thresholds:
        reached = [seed[_key(t)] for seed in seeds.values() if seed[_key(t)] is not None]
        out[_key(t)] = round(statistics.mean(reached)) if reached else None
        out[f"{_key(t)}_se"] = round(_se(reached)) if len(reached) > 1 else None
        out[f"{_key(t)}_reached"] = f"{len(reached)}/{len(seeds)}"
    for key in _RATES:
        values = [seed[key] for seed in seeds.values()]
        # A mean over some seeds only would not be the group's, so a missing one leaves it unset.
        whole = bool(values) and None not in values
        out[key] = round(statistics.mean(values), 4) if whole else None
        out[f"{key}_se"] = round(_se(values), 4) if whole and len(values) > 1 else None
    return out


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values))


def _seed_noise(result: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
    """For each compared pair of groups (each against the baseline, else every two) and each key where both have a
    mean over all their seeds and a standard error: whether their mean ± 2·SE intervals overlap. Adds a warning for
    each pair within seed noise, and one for single-seed groups."""
    groups = result["groups"]
    base = result.get("baseline")
    pairs = [(base, label) for label in groups if label != base] if base else list(itertools.combinations(groups, 2))
    single = [label for label, group in groups.items() if len(group["seeds"]) < 2]
    if single and len(groups) > 1:
        one = len(single) == 1
        result["warnings"].append(f"{', '.join(map(repr, single))} {'has' if one else 'have'} one seed, so no "
                                  f"standard error: a difference to {'it' if one else 'them'} cannot be told from "
                                  "seed noise; run more seeds")
    checks = []
    for key in keys:
        for first, second in pairs:
            a, b = groups[first], groups[second]
            # Steps need every seed there, as a mean over those that got there would flatter a group.
            if any(group[f"{key}_se"] is None or any(seed[key] is None for seed in group["seeds"].values())
                   for group in (a, b)):
                continue
            within = abs(a[key] - b[key]) <= 2 * (a[f"{key}_se"] + b[f"{key}_se"])
            checks.append({"metric": key, "groups": [first, second], "difference": round(b[key] - a[key], 4),
                           "within_seed_noise": within})
            if within:
                show = _show_steps if key.startswith("steps_to_") else _show_rate
                result["warnings"].append(
                    f"{_metric_name(key, result['shared_env_steps'])}: the difference between {second!r} and "
                    f"{first!r} is within seed noise (their mean ± 2·SE intervals overlap: {show(b[key])} ± "
                    f"{show(2 * b[f'{key}_se'])} and {show(a[key])} ± {show(2 * a[f'{key}_se'])}); more seeds are "
                    "needed to tell them apart")
    return checks


def _metric_name(key: str, shared_steps: float) -> str:
    if key.startswith("steps_to_"):
        return f"steps to {key.removeprefix('steps_to_')}%"
    if key == "success_at_shared_steps":
        return f"success at {shared_steps:,.0f} steps"
    return key.replace("_", " ").replace("held out", "held-out") + " success"


def _show_steps(value: float) -> str:
    return f"{value:,.0f}"


def _show_rate(value: float) -> str:
    return f"{value:.1%}"


def held_out_success(run_dir: Path) -> dict[str, float | None]:
    """The success rates `creditgym eval RUN` (greedy, eval.json) and `--sample` (eval-sampled.json) wrote into
    the run folder; None where that evaluation has not been run."""
    found: dict[str, float | None] = {"held_out_greedy": None, "held_out_sampled": None}
    for key, name, nested in (("held_out_greedy", "eval.json", "greedy"),
                              ("held_out_sampled", "eval-sampled.json", "sampled")):
        for path, part in ((run_dir / name, None), (run_dir / "eval.json", nested)):
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as err:
                if part is None:  # said once per file
                    warnings.warn(f"{path} cannot be read ({err}), so its held-out success is left out; run "
                                  f"creditgym eval {run_dir} again", stacklevel=2)
                continue
            if part is not None:  # the demo's layout before session 13: both results in eval.json
                data = data.get(part) if isinstance(data, dict) else None
            rate = data.get("success_rate") if isinstance(data, dict) else None
            if isinstance(rate, int | float) and not isinstance(rate, bool):
                found[key] = float(rate)
                break
    return found


def _find_label(wanted: str, groups: dict[str, Any]) -> str:
    if wanted in groups:
        return wanted
    matches = [label for label in groups if wanted in label]
    if len(matches) != 1:
        raise ValueError(f"--baseline {wanted!r} matches {len(matches)} of the groups {sorted(groups)}; "
                         f"give one label, or a part of exactly one")
    return matches[0]


def _warnings(runs: Sequence[Run], groups: dict[str, list[Run]]) -> list[str]:
    notes = []
    envs = sorted({str(run.config.get("env_id")) for run in runs})
    if len(envs) > 1:
        notes.append(f"the runs trained on different envs ({', '.join(envs)}); their steps are not comparable")
    budgets = sorted({run.last_step for run in runs})
    if len(budgets) > 1:
        notes.append(f"the runs reached different env steps ({budgets[0]:,.0f} to {budgets[-1]:,.0f}); success is "
                     f"compared at {budgets[0]:,.0f}, the fewest")
    warm_up = max(warm_up_steps(run.config) for run in runs)
    if budgets[0] <= warm_up:
        notes.append(f"success at {budgets[0]:,.0f} env steps is not given: only short episodes, mostly successes, "
                     f"have ended before {warm_up:,.0f} (the time limit times the envs); train longer")
    for label, members in groups.items():
        seeds = [run.seed for run in members]
        for seed in sorted({s for s in seeds if seeds.count(s) > 1}, key=str):
            folders = ", ".join(str(run.path) for run in members if run.seed == seed)
            notes.append(f"group {label!r} holds seed {seed} more than once ({folders}); they differ only in "
                         "bookkeeping such as the device, so both count: pass one of them if that was not meant")
    return notes


def _short(encoded: str | None) -> str:
    if encoded is None:
        return "unset"
    value = json.loads(encoded)
    if value is None:
        return "none"
    return value if isinstance(value, str) else json.dumps(value)


def _env_name(config: dict[str, Any]) -> str:
    return str(config.get("env_id", "runs")).split("/")[-1]
