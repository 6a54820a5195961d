"""GRPO on a text env with the embedded SmolLM2-135M-Instruct, on the CPU: Sokoban's text view, Shop or Dialogue.

A few iterations show the loop working and print success, reward channels and generated tokens/s per iteration.
A 135M model will not solve these tasks in a few CPU iterations; this is the smoke run, not a result.

    python examples/llm_grpo.py --env sokoban --iterations 3
    python examples/llm_grpo.py --env shop --iterations 3
    python examples/llm_grpo.py --env dialogue --iterations 3

Bigger models on a GPU (the same trainer; bf16 autocast is on by default on CUDA):

    creditgym train --algo grpo --model /models/Qwen2.5-1.5B-Instruct --env creditgym/Sokoban-6x6-1b-v0 \\
        --device cuda --num-groups 16 --group-size 8 --max-turns 10 --history-turns 2 --max-new-tokens 128 \\
        --learning-rate 1e-6 --micro-batch-size 8 --num-minibatches 4 --kl-coef 0.001 --iterations 200
    # 7B on one 80 GB card: add --lora-rank 64 --learning-rate 1e-5 (the frozen base doubles as the KL reference)
    # Dialogue wants the whole conversation in the prompt: --history-turns none --max-turns 12
    creditgym eval runs/<the run> --episodes 200 --device cuda   # held-out levels, greedy; --sample to sample
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from creditgym.agents.llm import LLMTrainConfig, LLMTrainer
from creditgym.agents.llm.config import ALGOS

# env -> (id, settings that differ between envs for the CPU smoke run)
PRESETS = {
    "sokoban": ("creditgym/Sokoban-6x6-1b-v0", {"history_turns": 1, "max_new_tokens": 24}),
    "shop": ("creditgym/Shop-v1", {"history_turns": 1, "max_new_tokens": 32}),
    "dialogue": ("creditgym/Dialogue-Gather-v0", {"history_turns": None, "max_new_tokens": 32}),
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(PRESETS), default="sokoban", help="which text env to train on")
    parser.add_argument("--iterations", type=int, default=3, help="rollout-and-update iterations")
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m or a local model folder")
    parser.add_argument("--algo", default="grpo", choices=ALGOS, help="the policy-gradient estimator")
    parser.add_argument("--seed", type=int, default=1, help="seeds the tasks, the sampling and the updates")
    args = parser.parse_args(argv)
    env_id, settings = PRESETS[args.env]
    try:  # bad numbers and unknown models, as one line rather than a traceback
        config = LLMTrainConfig(
            algo=args.algo, model=args.model, env_id=env_id, iterations=args.iterations, num_groups=2, group_size=4,
            max_turns=3, learning_rate=1e-5, advantage="turn" if args.algo == "ppo_llm" else "episode",
            micro_batch_size=4, progress=False, runs_dir="runs", checkpoint_every=0, seed=args.seed, **settings,
        )
        trainer = LLMTrainer(config)
    except ValueError as error:
        parser.error(str(error))
    for iteration in range(1, args.iterations + 1):
        metrics = trainer.learn(until_iteration=iteration)
        channels = ", ".join(f"{k.split('/')[1]} {v:+.2f}" for k, v in metrics.items() if k.startswith("reward/"))
        print(f"iteration {iteration}: success {metrics['charts/success_rate']:.0%}, return "
              f"{metrics['charts/episodic_return']:+.2f} ({channels}), invalid {metrics['charts/invalid_rate']:.0%}, "
              f"{metrics['charts/tokens_per_s']:.0f} generated tokens/s, loss {metrics['losses/policy_loss']:+.4f}")
    print(f"run written to {trainer.run_dir}")


if __name__ == "__main__":
    main()
