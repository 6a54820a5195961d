"""LLM GRPO with and without learned process rewards (SPA, PRIME, IGPO, OPRL) on a dialogue task, on the CPU.

The task is `creditgym/Dialogue-Gather-v0` cut down to one domain (restaurant) and one hidden requirement: ask the
simulated user what they want, then `<propose>{"slot": "value"}</propose>`. Two turns suffice ("What else matters
to you?", then the proposal); episodes are cut at three. Success means the proposal names the hidden slot and value.

The policy is a small random Llama (4 layers, width 128) over a byte-level BPE vocabulary learnt from expert
dialogues, after a short supervised warm-up on those dialogues. SmolLM2-135M is too slow for this on a shared 2-core
CPU (a single forward pass over 8 x 358 tokens takes about 8 s), and a byte-level tiny model does not learn to read
the user's answer within minutes; a BPE vocabulary makes "Italian" or "cuisine" one token. The env's long system
prompt (every slot and value) is replaced by one line, which keeps prompts around 70 tokens.

Every variant starts from the same warmed-up weights and runs the same seeds for the same number of iterations
(G tasks x K rollouts each), policy learning rate 5e-4; only the learned reward differs. The PRIME/OPRL PRM learns
at 5e-5: at 5e-4 (the papers' PRM:policy ratio is about 2:1) PRIME's PRM drifted far from its reference within
30 updates and PRIME's success fell to 3% (`--prm-lr 5e-4` reproduces it).

- sparse: GRPO on the env's rewards, per-turn reward-to-go normalised in the group (advantage="turn");
- spa: plus SPA's progress reward (a linear head on turn-final hidden states), same advantage;
- prime: PRIME's implicit PRM (token rewards, cross-entropy) and its advantages;
- igpo: plus IGPO's information gain (the change in p(ground-truth proposal)), advantage="turn";
- oprl: OPRL's implicit PRM (trajectory DPO) and A = A^E + w·A^S.

    python examples/llm_process_rewards.py --out results/llm_process_rewards \\
        --copy-plot docs/img/llm_process_rewards.png

It writes `results.json` (success per iteration per variant and seed, and a final evaluation on 128 fixed seeds;
the library versions, the CPU and a fingerprint of the warmed-up weights, which all variants start from) and
`success.png` to `--out`, and prints a Markdown table. PRIME's 20-80% accuracy filter and IGPO's turn normalization
became defaults after the docs' table was recorded; `--no-prime-filter --turn-normalization returns` runs as it did.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import tokenizers
import torch
import transformers
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

import creditgym
from creditgym.agents.llm import LLMPolicy, LLMTrainConfig, LLMTrainer, RolloutCollector
from creditgym.agents.llm.trainer import training_seeds
from creditgym.benchmarking import cpu_model
from creditgym.envs.dialogue.questioner import OPEN_QUESTION
from creditgym.llm.models import CHATML_TEMPLATE

ENV_ID = "creditgym/Dialogue-Gather-v0"
ENV_KWARGS = {"domains": ["restaurant"], "min_slots": 1, "max_slots": 1, "expose_ground_truth": True}
INSTRUCTIONS = 'Ask the user what they want, then propose: <propose>{"slot": "value"}</propose>'
VARIANTS: dict[str, dict[str, Any]] = {
    "sparse": {"advantage": "turn"},
    "spa": {"advantage": "turn", "learned_reward": "spa"},
    "prime": {"learned_reward": "prime"},
    "igpo": {"advantage": "turn", "learned_reward": "igpo"},
    "oprl": {"learned_reward": "oprl"},
}
# Env seeds of the expert dialogues (supervised warm-up data, which RL tasks may share, as fine-tuning data does) and
# of the evaluation tasks, far above every training task (seed * 1_000_003 + k, training_seeds), so that no RL seed
# is evaluated on the very env seeds it trained on; `main` checks it. The task space holds only 81 dialogues (27 slot
# values x 3 openings), so evaluation still measures fresh samples of the same tasks, not unseen ones.
DEMO_SEEDS = 1_000_000
DEMO_DIALOGUES = 300
EVAL_SEEDS = 2**40
MODEL_METRICS = ("progress", "implicit_prm", "info_gain")  # what the learned reward models log


class CompactInstructions(gym.Wrapper):
    """One line of instructions instead of the env's list of every slot and value (short prompts for the CPU)."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        info["instructions"] = INSTRUCTIONS
        return obs, info


def make_env() -> gym.Env:
    return CompactInstructions(gym.make(ENV_ID, **ENV_KWARGS))


def expert_dialogues(count: int, first_seed: int) -> list[list[dict[str, str]]]:
    """The optimal two-turn dialogue for each seed: an open question, then the ground-truth proposal."""
    env, dialogues = make_env(), []
    for seed in range(first_seed, first_seed + count):
        opening, info = env.reset(seed=seed)
        answer, *_ = env.step(OPEN_QUESTION)
        dialogues.append([{"role": "system", "content": info["instructions"]}, {"role": "user", "content": opening},
                          {"role": "assistant", "content": OPEN_QUESTION}, {"role": "user", "content": answer},
                          {"role": "assistant", "content": info["ground_truth"]}])
    return dialogues


def tiny_bpe_model(dialogues: list[list[dict[str, str]]], seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A random 4-layer Llama and a byte-level BPE tokenizer (every byte stays encodable) learnt from `dialogues`."""
    specials = ["<|im_start|>", "<|im_end|>", "<|pad|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in d) for d in dialogues]
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=specials[0], eos_token=specials[1],
                                        pad_token=specials[2], chat_template=CHATML_TEMPLATE)
    tokenizer.padding_side = "left"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval(), tokenizer


def weights_sha256(model: torch.nn.Module) -> str:
    """A fingerprint of the weights: the state_dict's names, dtypes, shapes and bytes, in key order.

    The 300-step warm-up is chaotic: a different summation order, CPU or library build moves its end point (and
    every variant's start) by far more than rounding, so results.json records which weights the runs started from.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def warm_up(policy: LLMPolicy, dialogues: list[list[dict[str, str]]], *, steps: int, seed: int) -> None:
    """Supervised steps on the expert replies (both turns), 16 replies per step."""
    examples = []
    for dialogue in dialogues:
        for turn in (2, 4):
            prompt = policy.chat_prompt(dialogue[:turn])
            reply = policy.tokenizer(dialogue[turn]["content"], add_special_tokens=False)["input_ids"]
            examples.append((prompt, [*reply, policy.tokenizer.eos_token_id]))
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        chosen = [examples[i] for i in torch.randint(len(examples), (16,), generator=generator).tolist()]
        width = max(len(p) + len(r) for p, r in chosen)
        ids = torch.full((len(chosen), width), policy.pad_id)
        attention = torch.zeros((len(chosen), width), dtype=torch.long)
        targets = torch.zeros((len(chosen), width))
        for row, (prompt, reply) in enumerate(chosen):
            ids[row, :len(prompt) + len(reply)] = torch.tensor(prompt + reply)
            attention[row, :len(prompt) + len(reply)] = 1
            targets[row, len(prompt):len(prompt) + len(reply)] = 1
        logprobs, _ = policy.sequence_logprobs(ids, attention, targets)
        loss = -(logprobs * targets).sum() / targets.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def evaluate(policy: LLMPolicy, *, episodes: int, seed: int) -> float:
    """Success on the evaluation seeds, sampling as in training (temperature 1) with a fixed generator."""
    collector = RolloutCollector([make_env() for _ in range(episodes)], policy, group_size=1, max_turns=3,
                                 history_turns=None, max_prompt_tokens=1024)
    played = collector.collect(eval_seeds(episodes), generator=torch.Generator().manual_seed(seed))
    return float(np.mean([e.success for e in played]))


def eval_seeds(episodes: int) -> range:
    return range(EVAL_SEEDS, EVAL_SEEDS + episodes)


def overlapping_seeds(args: argparse.Namespace) -> str | None:
    """Whether a run's training tasks would share env seeds with the evaluation tasks (which sit above every
    training task of a seed below about 10**6)."""
    evaluation = eval_seeds(args.eval_episodes)
    for seed in args.seeds:  # the training tasks depend on the seed and the budget, not on the variant
        trained = training_seeds(variant_config(args.variants[0], seed, args))
        if max(trained.start, evaluation.start) < min(trained.stop, evaluation.stop):
            return (f"--seeds {seed} trains on env seeds {trained.start}-{trained.stop - 1}, which meet the "
                    f"evaluation seeds {evaluation.start}-{evaluation.stop - 1}: choose a smaller seed")
    return None


def variant_config(name: str, seed: int, args: argparse.Namespace) -> LLMTrainConfig:
    return LLMTrainConfig(
        algo="grpo", model="tiny-bpe", env_id=ENV_ID, env_kwargs=dict(ENV_KWARGS), iterations=args.iterations,
        num_groups=args.groups, group_size=args.group_size, max_turns=3, history_turns=None, max_new_tokens=24,
        learning_rate=args.lr, micro_batch_size=64, seed=seed, device="cpu", threads=1, progress=False,
        tensorboard=False, checkpoint_every=0, runs_dir=str(Path(args.out) / "runs"), run_name=f"{name}-s{seed}",
        overwrite=True,  # the example owns out/runs; a rerun with the same seed reproduces the same run
        **learned_reward_settings(name, args), **advantage_settings(name, args), **VARIANTS[name])


def advantage_settings(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """--turn-normalization for the variants with per-turn advantages, and PRIME's accuracy filter switched off with
    --no-prime-filter: the settings whose defaults changed after the docs' table was recorded."""
    settings: dict[str, Any] = {}
    if args.turn_normalization is not None and VARIANTS[name].get("advantage") == "turn":
        settings["turn_normalization"] = args.turn_normalization
    if name == "prime" and not args.prime_filter:
        settings.update(min_group_accuracy=0.0, max_group_accuracy=1.0)
    return settings


def learned_reward_settings(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The learned reward's flags for the variants that have one (the config refuses them on the sparse one)."""
    if "learned_reward" not in VARIANTS[name]:
        return {}
    settings: dict[str, Any] = {"learned_reward_coef": args.coef}
    if name in ("prime", "oprl"):
        settings["learned_reward_lr"] = args.prm_lr
    if name == "spa":
        settings["spa_epochs"] = args.spa_epochs
    return settings


def run_variant(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, seed: int,
                args: argparse.Namespace, advance: Callable[[], Any] = lambda: None) -> dict[str, Any]:
    """Train one variant on one seed from the warmed-up `model`; `advance` is called after every iteration."""
    config = variant_config(name, seed, args)
    trainer = LLMTrainer(config, model=copy.deepcopy(model), tokenizer=tokenizer, make_env=make_env)
    start = time.perf_counter()
    rows = []
    for iteration in range(1, args.iterations + 1):
        rows.append(trainer.learn(until_iteration=iteration))
        advance()
    seconds = time.perf_counter() - start
    return {"success": [row["charts/success_rate"] for row in rows], "env_steps": int(rows[-1]["global_step"]),
            "final_success": evaluate(trainer.policy, episodes=args.eval_episodes, seed=seed), "seconds": seconds,
            "reward_channels": series(rows, lambda name: name.startswith("reward/")),
            "reward_model": series(rows, lambda name: name.split("/")[0] in MODEL_METRICS)}


def series(rows: list[dict[str, Any]], wanted: Callable[[str], bool]) -> dict[str, list[Any]]:
    """Each wanted metric over the iterations, None where an iteration did not log it (PRIME's accuracy filter can
    leave an iteration no group to score)."""
    return {name: [row.get(name) for row in rows] for name in dict.fromkeys(k for row in rows for k in row)
            if wanted(name)}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = len(next(iter(next(iter(results["variants"].values())).values()))["success"])
    window = min(5, iterations)  # one iteration's 32 episodes are noisy: show a moving average
    figure, axis = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for name, runs in results["variants"].items():
        curves = np.array([run["success"] for run in runs.values()])
        smooth = np.array([np.convolve(c, np.ones(window) / window, mode="valid") for c in curves])
        x = np.arange(window, curves.shape[1] + 1)
        axis.plot(x, smooth.mean(0), label=name)
        axis.fill_between(x, smooth.min(0), smooth.max(0), alpha=0.12)
    axis.axhline(results["warm_up_success"], color="grey", linestyle=":", label="after warm-up (evaluation)")
    axis.set(xlabel="iteration", ylabel=f"training success ({window}-iteration mean)", ylim=(0, 0.8),
             title="GRPO + learned process rewards, Dialogue (1 slot), tiny LM\n"
                   "mean over seeds, band = min-max")
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="learned rewards to compare (sparse: none)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="RL seeds (tasks and sampling)")
    parser.add_argument("--iterations", type=int, default=30, help="GRPO iterations per run")
    parser.add_argument("--groups", type=int, default=8, help="G: tasks per iteration")
    parser.add_argument("--group-size", type=int, default=4, help="K: rollouts per task")
    parser.add_argument("--lr", type=float, default=5e-4, help="policy learning rate")
    parser.add_argument("--prm-lr", type=float, default=5e-5, help="PRIME/OPRL PRM learning rate")
    parser.add_argument("--coef", type=float, default=1.0, help="learned_reward_coef of every learned reward")
    parser.add_argument("--spa-epochs", type=int, default=1, help="SPA head updates per round (spa_epochs)")
    parser.add_argument("--turn-normalization", choices=("returns", "rewards"),
                        help="turn_normalization of the variants with per-turn advantages (sparse, spa, igpo): "
                             "returns, or rewards (IGPO's order); default: the config's, rewards for igpo, else "
                             "returns (the docs' table ran igpo with returns)")
    parser.add_argument("--prime-filter", action=argparse.BooleanOptionalAction, default=True,
                        help="train PRIME only on groups solved 20-80%% of the time, PRIME's accuracy filter "
                             "(min/max_group_accuracy; --no-prime-filter trains on every group, as the docs' table)")
    parser.add_argument("--warm-up-steps", type=int, default=300, help="supervised steps before RL")
    parser.add_argument("--eval-episodes", type=int, default=128, help="episodes of the final evaluation")
    parser.add_argument("--out", default="results/llm_process_rewards", help="folder for results.json and success.png")
    parser.add_argument("--copy-plot", help="also copy the plot here (e.g. docs/img/llm_process_rewards.png)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar over every run's iterations (--no-progress for logs)")
    args = parser.parse_args(argv)
    if args.warm_up_steps < 0 or args.eval_episodes < 1:
        parser.error("--warm-up-steps must be 0 or more and --eval-episodes at least 1")
    if len(set(args.seeds)) < len(args.seeds):  # the same run twice, of which results.json would keep one
        parser.error(f"--seeds repeats a seed: {args.seeds}")
    if args.copy_plot and not Path(args.copy_plot).parent.is_dir():
        parser.error(f"--copy-plot: no folder {Path(args.copy_plot).parent}; create it or copy the plot elsewhere")
    try:  # every run's settings, refused before the warm-up rather than after the runs before it
        for name in args.variants:
            for seed in args.seeds:
                variant_config(name, seed, args)
    except ValueError as error:
        parser.error(str(error))
    overlap = overlapping_seeds(args)
    if overlap is not None:
        parser.error(overlap)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   disable=not args.progress)
    with bar:
        task = bar.add_task("warm-up", total=len(args.variants) * len(args.seeds) * args.iterations)
        start = time.perf_counter()
        dialogues = expert_dialogues(DEMO_DIALOGUES, DEMO_SEEDS)
        model, tokenizer = tiny_bpe_model(dialogues, seed=0)
        policy = LLMPolicy(model, tokenizer, max_new_tokens=24)
        warm_up(policy, dialogues, steps=args.warm_up_steps, seed=0)
        model.eval()
        results: dict[str, Any] = {
            "command": " ".join(["python", *sys.argv]), "env_id": ENV_ID, "env_kwargs": ENV_KWARGS,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "copy_plot", "progress")},
            # what the warm-up's end point depends on beyond the settings (see weights_sha256)
            "creditgym": creditgym.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
            "warm_up_sha256": weights_sha256(model),
            "warm_up_success": evaluate(policy, episodes=args.eval_episodes, seed=0),
            "warm_up_seconds": time.perf_counter() - start, "variants": {}}
        print(f"after {args.warm_up_steps} warm-up steps: evaluation success {results['warm_up_success']:.0%}")
        for name in args.variants:
            results["variants"][name] = {}
            for seed in args.seeds:
                bar.update(task, description=f"{name} seed {seed}")
                run = run_variant(name, model, tokenizer, seed, args, advance=lambda: bar.advance(task))
                results["variants"][name][str(seed)] = run
                print(f"{name} seed {seed}: training success {run['success'][0]:.0%} -> {run['success'][-1]:.0%}, "
                      f"evaluation {run['final_success']:.0%}, {run['seconds']:.0f} s", flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=1))
    results["total_seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "success.png")
    if args.copy_plot:
        shutil.copyfile(out / "success.png", args.copy_plot)
    print(markdown_table(results))


def markdown_table(results: dict[str, Any]) -> str:
    """Per variant: mean training success over the first and last five iterations, evaluation success, env steps."""
    lines = ["| variant | train success, iters 1-5 | train success, last 5 | eval success (per seed) | env steps |",
             "|---|---|---|---|---|"]
    for name, runs in results["variants"].items():
        curves = np.array([run["success"] for run in runs.values()])
        held_out = [run["final_success"] for run in runs.values()]
        steps = [run["env_steps"] for run in runs.values()]
        lines.append(f"| {name} | {curves[:, :5].mean():.2f} | {curves[:, -5:].mean():.2f} | {np.mean(held_out):.2f} "
                     f"({', '.join(f'{s:.2f}' for s in held_out)}) | {int(np.mean(steps))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
