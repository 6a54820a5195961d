"""Shop throughput: catalog build and open times, search latency, and env steps/s including search.

Prints one JSON object. Run: `python benchmarks/shop_throughput.py` (add `--num-products 100000` for the
WebShop-scale catalog).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch

import creditgym
from creditgym.benchmarking import cpu_model, target_report
from creditgym.envs.shop.expert import ShopExpert
from creditgym.envs.shop.index import ShopCatalog

TARGETS = {"expert_steps_per_s": 2_000}


def build_times(num_products: int, seed: int) -> dict[str, float]:
    """Seconds to generate and index a catalog from nothing, and to open the cached file and run a first search."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        built = ShopCatalog.generated(seed, num_products, folder)
        build = time.perf_counter() - start
        start = time.perf_counter()
        fresh = ShopCatalog(built.path, built.__reduce__())  # a new object, so a new connection and empty caches
        fresh.search("gluten free snack bar")
        open_and_search = time.perf_counter() - start
    return {"catalog_build_s": round(build, 3), "cached_open_and_first_search_s": round(open_and_search, 4)}


def expert(env: gym.Env, seconds: float) -> tuple[float, float, float, float]:
    """Steps per wall-clock and per CPU second (the machine may be shared) with the scripted expert (every
    episode searches), its success rate and searches per step. Seeded once, then reset without a seed."""
    policy = ShopExpert()
    steps = episodes = successes = searches = 0
    env.reset(seed=0)
    start, cpu_start = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        env.reset()
        terminated = truncated = False
        while not (terminated or truncated):
            action = policy(env)
            searches += action.startswith("search[")
            _, _, terminated, truncated, info = env.step(action)
            steps += 1
        episodes += 1
        successes += info["success"]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return steps / wall, steps / cpu, successes / episodes, searches / steps


def random_valid(env: gym.Env, seconds: float) -> float:
    """Steps/s choosing uniformly among the available actions; searches use three words of the instruction."""
    rng = np.random.default_rng(0)
    _, info = env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        actions = info["available_actions"]
        action = actions[rng.integers(len(actions))]
        if action.startswith("search["):
            words = env.unwrapped.goal.instruction.split()
            action = f"search[{' '.join(words[i] for i in rng.integers(len(words), size=3))}]"
        _, _, terminated, truncated, info = env.step(action)
        steps += 1
        if terminated or truncated:
            _, info = env.reset()
    return steps / (time.perf_counter() - start)


def search_latency(catalog: ShopCatalog, env: gym.Env, queries: int) -> dict[str, float]:
    """Milliseconds per search for goal-derived queries (attributes and type, as the expert searches)."""
    texts = []
    for seed in range(queries):
        env.reset(seed=seed)
        goal = env.unwrapped.goal
        texts.append(f"{' '.join(goal.attributes)} {goal.product_type}")
    times = []
    for text in texts:
        start = time.perf_counter()
        catalog.search(text)
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "search_ms_mean": round(float(np.mean(times)), 3),
        "search_ms_p95": round(float(np.percentile(times, 95)), 3),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-products", type=int, default=2000, help="catalog size (2000 is Shop-v1's default)")
    parser.add_argument("--catalog-seed", type=int, default=0, help="seed of the procedural catalog")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per steps/s figure")
    parser.add_argument("--queries", type=int, default=200, help="goal queries timed for the search latency")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or min(args.num_products, args.queries) < 1:
        parser.error("--seconds must be positive, and --num-products and --queries at least 1")
    result: dict = {
        "benchmark": "shop_throughput",
        "creditgym": creditgym.__version__,
        "machine": cpu_model(),
        "threads": torch.get_num_threads(),
        "settings": vars(args),
        "num_products": args.num_products,
        **build_times(args.num_products, args.catalog_seed),
    }
    env = gym.make("creditgym/Shop-v1", num_products=args.num_products, catalog_seed=args.catalog_seed)
    result.update(search_latency(env.unwrapped.catalog, env, args.queries))
    rate, cpu_rate, success, searches = expert(env, args.seconds)
    result.update(
        expert_steps_per_s=round(rate),
        expert_steps_per_cpu_s=round(cpu_rate),
        expert_success=round(success, 3),
        expert_searches_per_step=round(searches, 3),
        random_valid_steps_per_s=round(random_valid(env, args.seconds)),
    )
    result["targets"] = target_report(result, TARGETS)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
