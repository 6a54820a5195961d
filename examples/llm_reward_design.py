"""The reward-design selection loop on 6x6 two-box Sokoban, and a real SmolLM2 design iteration.

Default: the candidates come from `HandWrittenCandidates`, a stand-in chat model that returns HAND-WRITTEN
programs (one good distance-and-placement reward, one that farms a bonus for moving, one that crashes, one that is
not code); the designer critiques, validates, dry-runs and trains each, keeps the argmax of fitness, then trains
PPO on the sparse task reward with the same budget and seeds. It prints whether the selected reward beat sparse:
with `--final-seeds`, on fresh seeds after re-training (selection fitness is the maximum over the candidates, so
it is optimistic and beats sparse on its own seeds more often than it should).

    python examples/llm_reward_design.py --train-steps 60000 --seeds 1 2 --final-seeds 3 4

With `--model`, a real model writes the candidates and the example reports how many passed each stage, and the
sparse comparison when one passes them all. The model runs locally with transformers, or on any OpenAI-compatible
server given `--base-url` (then `--model` is the name the server serves), e.g. vLLM (docs/scaling.md):

    python examples/llm_reward_design.py --model smollm2-135m --samples 4 --train-steps 8192
    python examples/llm_reward_design.py --model smollm2-135m --base-url http://127.0.0.1:8000/v1 --samples 8
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

import creditgym  # registers the envs
from creditgym.llm.chat import ChatModelError
from creditgym.wrappers.llm_reward.designer import CRITIC_PROMPT, DesignerConfig, RewardDesigner, strict_json

# --- HAND-WRITTEN programs, not model output -------------------------------------------------------------------
GOOD = '''```python
def targets(board):
    return [[r, c] for r, row in enumerate(board) for c, ch in enumerate(row) if ch in ".*+"]

def distance(state):
    goals = targets(state["board"])
    return sum(min(abs(b[0] - g[0]) + abs(b[1] - g[1]) for g in goals) for b in state["boxes"])

def compute_dense_reward(state, action, next_state):
    closer = 0.2 * (distance(state) - distance(next_state))
    stuck = -0.5 if next_state["deadlock"] and not state["deadlock"] else 0.0
    return closer + stuck, {"closer": closer, "deadlock": stuck}
```'''
FARMS_MOVEMENT = '''```python
def compute_dense_reward(state, action, next_state):
    moved = 0.2 if next_state["player"] != state["player"] else 0.0
    return moved, {"moved": moved}
```'''
CRASHES = "```python\ndef compute_dense_reward(state, action, next_state):\n    return state['walls'], {}\n```"
NOT_CODE = "A good reward would count the boxes on targets."
HAND_WRITTEN = [GOOD, FARMS_MOVEMENT, CRASHES, NOT_CODE]


class HandWrittenCandidates:
    """A stand-in ChatModel: design requests get the hand-written programs above; reviews always pass."""

    model = "hand-written"

    def generate(self, batch: list[list[dict]], **sampling: object) -> list[str]:
        if batch[0][0]["content"] == CRITIC_PROMPT:
            return ["Reviewed by hand.\nVERDICT: PASS"] * len(batch)
        return [HAND_WRITTEN[k % len(HAND_WRITTEN)] for k in range(len(batch))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="run a real design iteration with this model (e.g. smollm2-135m) instead "
                        "of the hand-written candidates")
    parser.add_argument("--base-url", help="OpenAI-compatible server that serves --model, e.g. "
                        "http://127.0.0.1:8000/v1 for vLLM (default: run --model locally with transformers)")
    parser.add_argument("--samples", type=int, default=4, help="candidates per iteration (real model)")
    parser.add_argument("--iterations", type=int, default=1, help="design iterations (real model)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest program or review (real model)")
    parser.add_argument("--train-steps", type=int, default=60_000, help="env steps of every PPO run")
    parser.add_argument("--num-envs", type=int, default=32, help="parallel envs of every PPO run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="PPO seeds (fitness is the mean)")
    parser.add_argument("--final-seeds", type=int, nargs="+", default=[], help="fresh PPO seeds on which the best "
                        "program and sparse are re-trained for the comparison")
    parser.add_argument("--runs-dir", default="runs/llm_reward_design", help="where programs and reports go")
    parser.add_argument("--seed", type=int, default=0, help="seeds program sampling and the dry-run transitions")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.base_url and not args.model:
        parser.error("--base-url needs --model, the name of the model the server serves")
    try:  # bad numbers, unknown models and unreachable servers, as one line rather than a traceback
        return design(args)
    except (ValueError, ChatModelError) as error:
        parser.error(str(error))


def design(args: argparse.Namespace) -> int:
    real = args.model is not None
    config = DesignerConfig(
        env_id="creditgym/Sokoban-6x6-2b-v0", env_kwargs={"obs_mode": "egocentric", "action_mask": True},
        iterations=args.iterations if real else 1, samples=args.samples if real else len(HAND_WRITTEN),
        max_new_tokens=args.max_new_tokens, train_steps=args.train_steps,
        num_envs=args.num_envs, seeds=tuple(args.seeds), final_seeds=tuple(args.final_seeds), runs_dir=args.runs_dir,
        # a rerun of the example replaces its last run of the same kind
        run_name=f"{Path(args.model).name}-{'server' if args.base_url else 'local'}" if real else "hand-written",
        overwrite=True, compare_sparse=True, ppo_kwargs={"device": "cpu"}, seed=args.seed,
    )
    if args.base_url:
        from creditgym.llm import OpenAIChatModel

        # a small CPU server answers the K concurrent requests slowly, so wait minutes rather than fail
        chat = OpenAIChatModel(args.base_url, model=args.model, timeout=600)
    elif real:
        from creditgym.llm import HFChatModel

        chat = HFChatModel.from_pretrained(args.model)
    else:
        chat = HandWrittenCandidates()
    designer = RewardDesigner(chat, config, model_name=args.model or HandWrittenCandidates.model)
    result = designer.run()
    generated = result.stage_counts["generated"]
    trained = {c.id: c.stages["train"] for c in result.candidates if c.stages.get("train", {}).get("passed")}
    # Everything a results table quotes, so the printed JSON alone can check it (docs/data keeps one); failed
    # candidates' fitness is -inf, which JSON writes as null.
    summary: dict[str, object] = {
        "env_id": config.env_id, "model": designer.model_name, "creditgym": creditgym.__version__,
        "torch": torch.__version__, "config": {k: v for k, v in asdict(config).items() if k != "runs_dir"},
        "stage_pass_rates": {stage: f"{n}/{generated}" for stage, n in result.stage_counts.items()},
        "critic_verdicts": [c.stages["critic"]["verdict"] for c in result.candidates if "critic" in c.stages],
        "fitness": {c.id: c.fitness for c in result.candidates},
        "fitness_per_seed": {cid: train["success_rates"] for cid, train in trained.items()},
        "errors": {c.id: c.errors[0][:200] for c in result.candidates if c.errors},
        "components": {cid: train["components"] for cid, train in trained.items()},
        "sparse": None if result.sparse is None else {k: v for k, v in result.sparse.items() if k != "ppo_runs"},
        # PPO trains whole rollouts of num_envs * num_steps, so a budget that is no multiple of one is rounded down
        "env_steps": args.train_steps,
        "env_steps_trained": next((train["env_steps"] for train in trained.values()), None),
        "best": None if result.best is None else result.best.id,
    }
    if result.best is not None and result.sparse is not None and result.sparse["fitness"] is not None:
        sparse = result.sparse["fitness"]
        summary.update(selected_success=result.best.fitness, sparse_success=sparse,
                       selected_beats_sparse=result.best.fitness > sparse)
    if result.final is not None:
        best, sparse = result.final["best"]["fitness"], result.final["sparse"]["fitness"]
        summary.update(final_seeds=args.final_seeds, final_selected_success=best, final_sparse_success=sparse,
                       final_selected_beats_sparse=None if best is None or sparse is None else best > sparse)
    summary["warnings"] = result.warnings
    print(strict_json(summary))
    print(f"programs and report: {result.run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
