"""Memory soak: every registered env, in each observation mode, played for many seeded episodes of random valid
actions; reports Python heap (tracemalloc) and RSS growth after a warm-up, and the allocation sites that grew most.

Prints one JSON object. Run: `python benchmarks/env_soak.py` (about 5 minutes on 2 cores; `--env ID` for some ids).

A cache that fills up grows early and then stops; a leak keeps growing with the steps. So each entry is judged by
its growth over the second half of its measured steps (a least-squares slope over memory samples taken between
episodes, after `gc.collect()`), and `leak_suspected` marks the entries above `--max-growth-per-1k-steps`. Rerun a
flagged entry longer to tell which it is, e.g. `--env creditgym/ToolUse-v1 --steps 200000 --seconds 120 --extra`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

import creditgym
from creditgym.benchmarking import cpu_model
from creditgym.envs import obs_modes, registered_ids
from creditgym.envs.dialogue import negotiation_v0
from creditgym.envs.dialogue.deal import ITEMS
from creditgym.envs.dialogue.env import DialogueGatherEnv
from creditgym.envs.dialogue.scenarios import DOMAINS
from creditgym.envs.shop.env import ShopEnv
from creditgym.envs.testing import INVALID_PROBES
from creditgym.envs.tooluse.env import ToolUseEnv

#: Entries beyond the registered ids, chosen with --extra.
EXTRAS = ("batched_sokoban", "sync_vector_text", "negotiation")
ROOT = Path(__file__).resolve().parent.parent
_PACKAGE = str(ROOT / "creditgym") + os.sep
_STDLIB = os.path.dirname(os.__file__) + os.sep
_NEGOTIATION_CHAT = ("Hi, what do you value most?", "I really need the books.", "Could you give me a hat?",
                     "That seems unfair to me.", "Let us split the balls.")


def registered_cases(env_ids: Sequence[str], modes: Sequence[str] | None) -> list[tuple[str, dict]]:
    """Each id once per declared observation mode (the conformance suite's enumeration in tests/envs), keeping only
    `modes` where given; a natively text env declares no modes and is always kept."""
    cases = []
    for env_id in env_ids:
        declared = obs_modes(env_id)
        if not declared:
            cases.append((env_id, {}))
        cases += [(env_id, {"obs_mode": mode}) for mode in declared if modes is None or mode in modes]
    return cases


def valid_action(env: gym.Env, info: dict[str, Any], rng: np.random.Generator, invalid_share: float = 0.0) -> Any:
    """A uniformly random valid action in the env's current state (with probability `invalid_share`, for text envs,
    one of the conformance suite's invalid probes instead)."""
    space = env.action_space
    # Shop searches of three instruction words are refused when all three are stop words (about 1 step in 40).
    if isinstance(space, spaces.Discrete):
        return int(space.start + rng.integers(space.n))
    if isinstance(space, spaces.Text) and invalid_share and rng.random() < invalid_share:
        return str(rng.choice(INVALID_PROBES))
    base = env.unwrapped
    if isinstance(base, ShopEnv):  # as benchmarks/shop_throughput.py: a search uses three words of the instruction
        action = str(rng.choice(base.available_actions()))
        if action.startswith("search["):
            words = base.goal.instruction.split()
            action = f"search[{' '.join(words[i] for i in rng.integers(len(words), size=3))}]"
        return action
    if isinstance(base, ToolUseEnv):  # any turn of the reference plan (real tool calls), or the answer
        task = base.task
        turns = ["".join(f"<tool_call>{json.dumps(call.to_dict())}</tool_call>" for call in turn) for turn in task.plan]
        return str(rng.choice([*turns, f"<answer>{task.answer_text()}</answer>"]))
    if isinstance(base, DialogueGatherEnv):  # a question about one of the domain's slots, or a proposal
        domain = DOMAINS[base.state()["domain"]]
        if rng.random() < 0.1:
            proposal = {slot.name: str(rng.choice(slot.values)) for slot in domain.slots}
            return f"<propose>{json.dumps(proposal)}</propose>"
        return str(rng.choice([slot.question for slot in domain.slots]))
    choices = info.get("available_actions")
    if choices:
        return str(rng.choice(choices))
    raise ValueError(f"no rule for a valid action of {type(base).__name__} (no info['available_actions']); add one "
                     "to valid_action in benchmarks/env_soak.py")


class SingleEnv:
    """One env through `gymnasium.make` (time limit and order enforcing included), reset with seed `seed + episode`
    at every episode."""

    kind = "gymnasium.make"

    def __init__(self, env_id: str, kwargs: dict, seed: int, invalid_share: float) -> None:
        self.env = gym.make(env_id, **kwargs)
        self.seed, self.invalid_share = seed, invalid_share
        self.rng = np.random.default_rng(seed)
        self.steps = self.episodes = self.invalid_actions = 0
        _, self.info = self.env.reset(seed=seed)

    def step(self) -> bool:
        """One step; True when it ended an episode (and the env was reset)."""
        action = valid_action(self.env, self.info, self.rng, self.invalid_share)
        _, _, terminated, truncated, self.info = self.env.step(action)
        self.steps += 1
        self.invalid_actions += bool(self.info.get("invalid_action"))
        if terminated or truncated:
            self.episodes += 1
            _, self.info = self.env.reset(seed=self.seed + self.episodes)
            return True
        return False

    def close(self) -> None:
        self.env.close()


class BatchedSokoban:
    """`gymnasium.make_vec` with the batched torch entry point (same-step autoreset); one step moves every board."""

    kind = "gymnasium.make_vec, vector_entry_point (torch, autoreset)"

    def __init__(self, env_id: str, num_envs: int, seed: int) -> None:
        self.env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
        self.generator = torch.Generator().manual_seed(seed)
        self.num_envs = num_envs
        self.steps = self.episodes = self.invalid_actions = 0
        self.env.reset(seed=seed)

    def step(self) -> bool:
        actions = torch.randint(int(self.env.single_action_space.n), (self.num_envs,), generator=self.generator)
        _, _, terminated, truncated, _ = self.env.step(actions)
        self.steps += 1
        self.episodes += int((terminated | truncated).sum())
        return True

    def close(self) -> None:
        self.env.close()


class SyncTextVector:
    """`gymnasium.make_vec(..., vectorization_mode="sync")` of a text env (its text view where it has several);
    seeded once, gymnasium's autoreset starts the next episodes."""

    kind = "gymnasium.make_vec, sync (text)"

    def __init__(self, env_id: str, num_envs: int, seed: int, invalid_share: float) -> None:
        kwargs = {"obs_mode": "text"} if "text" in obs_modes(env_id) else {}
        self.env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", **kwargs)
        self.rng = np.random.default_rng(seed)
        self.invalid_share = invalid_share
        self.steps = self.episodes = self.invalid_actions = 0
        _, self.infos = self.env.reset(seed=seed)

    def step(self) -> bool:
        actions = tuple(valid_action(env, self._info(i), self.rng, self.invalid_share)
                        for i, env in enumerate(self.env.envs))
        _, _, terminated, truncated, self.infos = self.env.step(actions)
        self.steps += 1
        self.episodes += int(np.sum(terminated | truncated))
        invalid = self.infos.get("invalid_action")
        self.invalid_actions += 0 if invalid is None else int(np.sum(invalid & self.infos["_invalid_action"]))
        return True

    def _info(self, index: int) -> dict[str, Any]:
        """Sub-env `index`'s top-level info values, from the vector env's batched info."""
        return {key: value[index] for key, value in self.infos.items()
                if not key.startswith("_") and not isinstance(value, dict) and self.infos[f"_{key}"][index]}

    def close(self) -> None:
        self.env.close()


class Negotiation:
    """The PettingZoo negotiation (ParallelEnv), reset with seed `seed + episode`; the player to move chats,
    proposes a random split, accepts a standing offer or walks away."""

    kind = "pettingzoo ParallelEnv"

    def __init__(self, seed: int) -> None:
        self.env = negotiation_v0.parallel_env()
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.steps = self.episodes = self.invalid_actions = 0
        _, self.infos = self.env.reset(seed=seed)

    def step(self) -> bool:
        actions = {agent: self._move(self.infos[agent]) if self.infos[agent]["your_turn"] else ""
                   for agent in self.env.agents}
        _, _, _, _, self.infos = self.env.step(actions)
        self.steps += 1
        self.invalid_actions += sum(bool(info.get("invalid_action")) for info in self.infos.values())
        if not self.env.agents:
            self.episodes += 1
            _, self.infos = self.env.reset(seed=self.seed + self.episodes)
            return True
        return False

    def _move(self, info: dict[str, Any]) -> str:
        roll = self.rng.random()
        if roll < 0.2 and info["partner_offer"] is not None:
            return "<accept>"
        if roll < 0.25:
            return "<nodeal>"
        if roll < 0.6:
            return str(self.rng.choice(_NEGOTIATION_CHAT))
        keep = {item: int(self.rng.integers(count + 1)) for item, count in zip(ITEMS, info["counts"], strict=True)}
        return f"<propose>{json.dumps(keep)}</propose>"

    def close(self) -> None:
        self.env.close()


def rss_bytes() -> int:
    """Resident set size now (Linux /proc/self/statm); elsewhere the peak from `resource`, which only rises."""
    try:  # os-level reads: pathlib would leave its own small allocations in the figures
        descriptor = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            resident_pages = int(os.read(descriptor, 200).split()[1])
        finally:
            os.close(descriptor)
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def _sample(samples: np.ndarray, row: int, steps: int) -> None:
    """Row `row` of `samples`: steps, traced Python heap, and RSS less tracemalloc's own bookkeeping (which grows
    with what it traces). The array is allocated before measuring, so sampling adds nothing to the heap."""
    gc.collect()  # cheap: the warm-up's objects are frozen out of the collector
    samples[row] = steps, tracemalloc.get_traced_memory()[0], rss_bytes() - tracemalloc.get_tracemalloc_memory()


def _snapshot() -> tracemalloc.Snapshot:
    # The earlier snapshot, held while measuring, is tracemalloc's own allocation: leave it out of the sites.
    return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])


def _per_1k(samples: Sequence[tuple[int, ...]], column: int) -> float | None:
    """Least-squares growth of `column` in bytes per 1,000 steps; None with fewer than three samples."""
    if len(samples) < 3:
        return None
    steps = np.array([s[0] for s in samples], float)
    values = np.array([s[column] for s in samples], float)
    if np.ptp(steps) == 0:
        return None
    return round(float(np.polyfit(steps, values, 1)[0]) * 1000, 1)


def _where(frame: tracemalloc.Frame) -> str:
    """file:line, the file relative to site-packages, the standard library or the repository where it is in one."""
    name = frame.filename
    if "site-packages" + os.sep in name:
        name = name.split("site-packages" + os.sep, 1)[1]
    else:
        for prefix in (str(ROOT) + os.sep, _STDLIB):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
    return f"{name}:{frame.lineno}"


def growth_sites(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int) -> list[dict[str, Any]]:
    """The `top` allocation sites (file:line of the allocating line) whose live memory grew most, each with the
    innermost creditgym line on the way there (`via`) of its biggest-growing call path."""
    sites: dict[str, dict[str, Any]] = {}
    for stat in after.compare_to(before, "traceback"):
        site = sites.setdefault(_where(stat.traceback[-1]), {"bytes": 0, "blocks": 0, "via": None, "_best": 0})
        site["bytes"] += stat.size_diff
        site["blocks"] += stat.count_diff
        if stat.size_diff > site["_best"]:
            site["_best"] = stat.size_diff
            ours = [frame for frame in stat.traceback if frame.filename.startswith(_PACKAGE)]
            site["via"] = _where(ours[-1]) if ours else None
    ranked = sorted(sites.items(), key=lambda item: -item[1]["bytes"])[:top]
    return [{"site": where, "bytes": site["bytes"], "blocks": site["blocks"], "via": site["via"]}
            for where, site in ranked if site["bytes"] > 0]


def soak(name: str, make_player: Callable[[], Any], args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then play up to `args.steps` steps (or `args.seconds`), sampling memory between episodes.

    `make_player()` returns an object with `step() -> bool` (True when the step ended an episode), `close()`,
    `kind` and the counters `steps`, `episodes` and `invalid_actions`."""
    tracemalloc.start(args.frames)
    try:
        start = time.perf_counter()
        player = make_player()
        while True:  # warm-up: caches fill, lazy imports happen; it ends between episodes
            ended = player.step()
            if ended and (player.steps >= args.warmup_steps or time.perf_counter() - start >= args.warmup_seconds):
                break
        warmup_steps, warmup_episodes, warmup_invalid = player.steps, player.episodes, player.invalid_actions
        # A full collection takes ~0.2 s in this process (torch and friends): freeze what exists now out of the
        # collector, so that each sample's collection only looks at objects made since.
        gc.collect()
        gc.freeze()
        samples = np.zeros((2 * args.samples + 2, 3), np.int64)  # room for the step and the time triggers
        before = _snapshot()
        _sample(samples, 0, 0)
        taken = 1
        start = time.perf_counter()
        every_steps, every_seconds = max(1, args.steps // args.samples), args.seconds / args.samples
        last_steps, last_time = 0, start
        while True:
            ended = player.step()
            if not ended:
                continue
            steps, now = player.steps - warmup_steps, time.perf_counter()
            done = steps >= args.steps or now - start >= args.seconds or taken == len(samples) - 1
            if done or steps - last_steps >= every_steps or now - last_time >= every_seconds:
                _sample(samples, taken, steps)
                taken += 1
                last_steps, last_time = steps, time.perf_counter()
            if done:
                break
        seconds = time.perf_counter() - start
        after = _snapshot()
        sites = growth_sites(before, after, args.top)
        player.close()
    finally:
        gc.unfreeze()
        tracemalloc.stop()
    samples = samples[:taken].tolist()
    steps = samples[-1][0]
    second_half = [s for s in samples if s[0] >= steps / 2]
    heap_late, rss_late = _per_1k(second_half, 1), _per_1k(second_half, 2)
    reasons = []
    if heap_late is not None and heap_late > args.max_growth_per_1k_steps:
        reasons.append("heap")
    if rss_late is not None and rss_late > args.max_rss_growth_per_1k_steps:
        reasons.append("rss")
    entry = {
        "name": name,
        "kind": player.kind,
        "warmup_steps": warmup_steps,
        "steps": steps,
        "episodes": player.episodes - warmup_episodes,
        "seconds": round(seconds, 2),
        "invalid_actions": player.invalid_actions - warmup_invalid,
        "samples": len(samples),
        "heap_bytes_after_warmup": samples[0][1],
        "heap_growth_bytes": samples[-1][1] - samples[0][1],
        "heap_growth_per_1k_steps": round((samples[-1][1] - samples[0][1]) * 1000 / max(steps, 1), 1),
        "heap_growth_per_1k_steps_second_half": heap_late,
        "rss_bytes_after_warmup": samples[0][2],
        "rss_growth_bytes": samples[-1][2] - samples[0][2],
        "rss_growth_per_1k_steps_second_half": rss_late,
        "top_growth_sites": sites,
        # [measured steps, heap, RSS less tracemalloc's bookkeeping]: a cache flattens out, a leak keeps rising
        "memory_samples": samples,
        "leak_suspected": bool(reasons),
        "leak_evidence": reasons,
    }
    if isinstance(player, BatchedSokoban | SyncTextVector):
        entry["num_envs"] = player.num_envs if isinstance(player, BatchedSokoban) else player.env.num_envs
    return entry


def _entries(args: argparse.Namespace) -> list[tuple[str, Callable[[], Any]]]:
    def single(env_id: str, kwargs: dict) -> Callable[[], Any]:
        return lambda: SingleEnv(env_id, kwargs, args.seed, args.invalid_share)

    entries = [(env_id + (f" obs_mode={kwargs['obs_mode']}" if kwargs else ""), single(env_id, kwargs))
               for env_id, kwargs in registered_cases(args.env, args.obs_mode)]
    if "batched_sokoban" in args.extra:
        entries.append((f"batched_sokoban {args.batched_env} x{args.num_envs}",
                        lambda: BatchedSokoban(args.batched_env, args.num_envs, args.seed)))
    if "sync_vector_text" in args.extra:
        entries.append((f"sync_vector_text {args.vector_text_env} x{args.num_text_envs}",
                        lambda: SyncTextVector(args.vector_text_env, args.num_text_envs, args.seed,
                                               args.invalid_share)))
    if "negotiation" in args.extra:
        entries.append(("negotiation_v0.parallel_env", lambda: Negotiation(args.seed)))
    return entries


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", nargs="*", default=None, metavar="ID",
                        help="registered ids to soak (default: every creditgym id; none with a bare --env)")
    parser.add_argument("--obs-mode", nargs="+", default=None, metavar="MODE",
                        help="only these observation modes of envs that declare several (default: all of them)")
    parser.add_argument("--extra", nargs="*", default=list(EXTRAS), choices=EXTRAS, metavar="NAME",
                        help=f"entries beyond the registered ids, from {', '.join(EXTRAS)} (default: all; none with a "
                             "bare --extra)")
    parser.add_argument("--steps", type=int, default=20_000,
                        help="measured steps per entry after the warm-up (vector envs: vector steps)")
    parser.add_argument("--seconds", type=float, default=10.0, help="cap on each entry's measured time")
    parser.add_argument("--warmup-steps", type=int, default=2_000, help="steps played before measuring")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="cap on each entry's warm-up time")
    parser.add_argument("--samples", type=int, default=20, help="memory samples per entry (taken between episodes)")
    parser.add_argument("--max-growth-per-1k-steps", type=float, default=5_000.0,
                        help="Python heap growth per 1,000 steps, over the second half, above which an entry is "
                             "marked leak_suspected (bytes; steady envs measure up to ~1,600 in a 10 s run)")
    parser.add_argument("--max-rss-growth-per-1k-steps", type=float, default=50_000.0,
                        help="the same for RSS, less tracemalloc's bookkeeping (bytes; RSS moves in whole pages "
                             "and allocator arenas, so it is noisier)")
    parser.add_argument("--frames", type=int, default=4, help="call frames tracemalloc keeps per allocation")
    parser.add_argument("--top", type=int, default=3, help="growth sites reported per entry")
    parser.add_argument("--seed", type=int, default=0, help="seeds the envs (seed + episode) and the random actions")
    parser.add_argument("--invalid-share", type=float, default=0.0,
                        help="share of text actions replaced by invalid text (the conformance suite's probes)")
    parser.add_argument("--batched-env", default="creditgym/Sokoban-6x6-1b-v0",
                        help="Sokoban id for the batched_sokoban entry")
    parser.add_argument("--num-envs", type=int, default=64, help="boards in the batched_sokoban entry")
    parser.add_argument("--vector-text-env", default="creditgym/Sokoban-6x6-1b-v0",
                        help="env id for the sync_vector_text entry (its text view where it has several)")
    parser.add_argument("--num-text-envs", type=int, default=4, help="envs in the sync_vector_text entry")
    args = parser.parse_args(argv)
    if min(args.steps, args.samples, args.frames, args.top, args.num_envs, args.num_text_envs) < 1:
        parser.error("--steps, --samples, --frames, --top, --num-envs and --num-text-envs must be at least 1")
    if args.samples < 3:
        parser.error(f"--samples must be at least 3 for a second-half slope, got {args.samples}")
    if not (args.seconds > 0 and args.warmup_seconds >= 0 and args.warmup_steps >= 0 and args.seed >= 0):
        parser.error("--seconds must be positive, and --warmup-seconds, --warmup-steps and --seed 0 or more")
    if not 0 <= args.invalid_share <= 1:
        parser.error(f"--invalid-share must be from 0 to 1, got {args.invalid_share}")
    known = registered_ids()
    args.env = known if args.env is None else args.env
    unknown = [env_id for env_id in [*args.env, args.batched_env, args.vector_text_env] if env_id not in known]
    if unknown:
        parser.error(f"unknown env ids {unknown}; `creditgym list` shows the registered ones")
    if gym.spec(args.batched_env).vector_entry_point is None:
        parser.error(f"--batched-env {args.batched_env} has no batched entry point; use a creditgym/Sokoban id")
    torch.set_num_threads(1)
    entries = _entries(args)
    if not entries:
        parser.error("nothing to soak: give --env ids, --extra names, or an --obs-mode some env declares")

    results = []
    start = time.perf_counter()
    # BabyAI's level generator prints "Sampling rejected: ..." to stdout; keep stdout to the one JSON object (and
    # print nowhere that keeps it: a StringIO would grow as the soak runs).
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for number, (name, make_player) in enumerate(entries, start=1):
            print(f"[{number}/{len(entries)}] {name} ...", file=sys.stderr, flush=True)
            entry = soak(name, make_player, args)
            results.append(entry)
            print(f"    {entry['steps']:,} steps, {entry['episodes']:,} episodes, {entry['seconds']} s; heap "
                  f"{entry['heap_growth_per_1k_steps']:+,.0f} B per 1k steps (second half "
                  f"{entry['heap_growth_per_1k_steps_second_half']}), RSS {entry['rss_growth_bytes']:+,} B"
                  + ("  LEAK SUSPECTED" if entry["leak_suspected"] else ""), file=sys.stderr, flush=True)
    result = {
        "benchmark": "env_soak",
        "creditgym": creditgym.__version__,
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "python": platform.python_version(),
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "settings": vars(args),
        "total_seconds": round(time.perf_counter() - start, 1),
        "leaks_suspected": [entry["name"] for entry in results if entry["leak_suspected"]],
        "entries": results,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
