"""The trainer's scoring passes over a rollout batch, with its shared prompt prefix run once or in every row.

Collects one batched rollout of a text env with the policy (as `llm_rollout.py` does), packs it as the trainer
does, then times `LLMPolicy.sequence_logprobs` over micro-batches: without grad (the old and reference logprobs of
every update) and with a backward pass (the policy loss). Each setting runs with `shared_prefix` set to the batch's
shared prefix and to 0, alternating, and reports the best of `--repeats`. So does LLM SPA's feature pass
(`turn_end_hidden_states`, the hidden state at each turn's end; no grad). Prints one JSON object.

    python benchmarks/llm_scoring.py --model smollm2-135m --episodes 16 --max-turns 2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

import creditgym
from creditgym.agents.llm import policy as policy_module
from creditgym.agents.llm.batch import TokenBatch, pack_episodes
from creditgym.agents.llm.policy import LLMPolicy
from creditgym.agents.llm.rollout import Episode
from creditgym.benchmarking import add_llm_arguments, cpu_model, llm_rollout
from creditgym.wrappers.llm_progress import turn_end_hidden_states


def _score(policy: LLMPolicy, batch: TokenBatch, shared_prefix: int, micro_batch: int, backward: bool) -> float:
    """Seconds for one pass over the batch in micro-batches."""
    start = time.perf_counter()
    for rows in torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device).split(micro_batch):
        with torch.set_grad_enabled(backward):
            logprobs, _ = policy.sequence_logprobs(batch.input_ids[rows], batch.attention_mask[rows],
                                                   batch.action_mask[rows], shared_prefix=shared_prefix)
            if backward:
                logprobs.sum().backward()
    policy.model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@torch.no_grad()
def _spa_features(policy: LLMPolicy, episodes: list[Episode], shared: bool, micro_batch: int) -> float:
    """Seconds for SPA's turn-end hidden states of every episode. It finds the shared prefix itself, so the plain
    pass raises the minimum it shares above any prompt's length."""
    minimum = policy_module.MIN_SHARED_PREFIX
    policy_module.MIN_SHARED_PREFIX = minimum if shared else 10**9
    try:
        start = time.perf_counter()
        turn_end_hidden_states(policy, episodes, micro_batch_size=micro_batch)
        return time.perf_counter() - start
    finally:
        policy_module.MIN_SHARED_PREFIX = minimum


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_llm_arguments(parser, episodes=16, max_turns=2)
    parser.add_argument("--micro-batch", type=int, default=8, help="rows per scoring pass (micro_batch_size)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per setting; the best is reported")
    args = parser.parse_args(argv)
    if min(args.micro_batch, args.repeats) < 1:
        parser.error("--micro-batch and --repeats must be at least 1")
    policy, device, episodes, _ = llm_rollout(parser, args)
    batch = pack_episodes(episodes, policy.pad_id, device)
    seconds: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, shared in (("plain", 0), ("shared", batch.shared_prefix)):
            for pass_name, backward in (("score", False), ("backward", True)):
                seconds.setdefault(f"{pass_name}_{name}_s", []).append(
                    _score(policy, batch, shared, args.micro_batch, backward))
            seconds.setdefault(f"spa_features_{name}_s", []).append(
                _spa_features(policy, episodes, bool(shared), args.micro_batch))
    best = {key: round(min(values), 2) for key, values in seconds.items()}
    result = {
        "benchmark": "llm_scoring", "creditgym": creditgym.__version__,
        "machine": cpu_model(), "settings": vars(args), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "threads": args.threads,
        "rows": batch.input_ids.shape[0], "width": batch.input_ids.shape[1], "shared_prefix": batch.shared_prefix,
        "tokens": int(batch.attention_mask.sum()), **best,
        "score_speedup": round(best["score_plain_s"] / best["score_shared_s"], 2),
        "backward_speedup": round(best["backward_plain_s"] / best["backward_shared_s"], 2),
        "spa_features_speedup": round(best["spa_features_plain_s"] / best["spa_features_shared_s"], 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
