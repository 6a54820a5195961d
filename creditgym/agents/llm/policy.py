"""LLMPolicy: a `transformers` causal LM as a text-env policy, with the token ids and logprobs training needs.

Prompts use the model's chat template. A multi-turn conversation grows by appending token ids: the generated
tokens go in unchanged (never re-tokenised), then the template's text that closes the assistant turn and opens the
next user turn. The logprob of every generated token is therefore recomputed later on exactly the context it was
sampled from.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

# Stand-ins rendered through the chat template to find the text around a turn; no real message contains them.
_ASSISTANT_MARK = "\u27e6creditgym-assistant\u27e7"
_USER_MARK = "\u27e6creditgym-user\u27e7"

Generators = torch.Generator | Sequence[torch.Generator] | None
"""what `generate` samples from: one generator for every row, or one per prompt (None: torch's global one)"""


@dataclass
class _Held:
    """What a `ConversationCache` keeps of one conversation: the tokens whose keys and values it holds (a prompt and
    its reply but the reply's last token, never fed to the model) and those keys and values, per layer
    `(keys, values)` of shape [heads, len(tokens), head dim]."""

    tokens: list[int]
    layers: list[tuple[Tensor, Tensor]]


class ConversationCache:
    """The keys and values of each conversation's tokens, kept from one `LLMPolicy.generate` call to the next: a
    conversation whose next prompt extends them (a multi-turn episode's next turn, whose prompt is this turn's with
    the reply and the next observation appended) encodes only its new tokens instead of the whole prompt.

    Keep one for a rollout and drop it afterwards: it holds every conversation's keys and values (SmolLM2-135M:
    46 KB a token in float32).
    """

    def __init__(self) -> None:
        self._held: dict[Hashable, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def discard(self, key: Hashable) -> None:
        """Forget what is held for `key` (a conversation that has ended), if anything."""
        self._held.pop(key, None)

    def _take(self, key: Hashable, prompt: Sequence[int]) -> _Held | None:
        """What is held for `key`, if `prompt` extends its tokens by at least one token (the next logits need one)."""
        held = self._held.get(key)
        if held is None or len(prompt) <= len(held.tokens) or list(prompt[:len(held.tokens)]) != held.tokens:
            return None
        return held


@dataclass
class Generation:
    """One sampled reply: its token ids, the logprob of each under the sampling distribution, and its text."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    stopped: bool
    """the reply ended with a stop token (False: cut at max_new_tokens)"""


class LLMPolicy:
    """Samples replies for a batch of token prompts and scores token sequences, both at `temperature`.

    Logprobs are those of softmax(logits / temperature), the distribution the tokens were drawn from, so the
    ratio π_new / π_old in the trainers compares like with like. Sampling draws from the full distribution (no
    top-k / top-p) for the same reason. On CUDA, `bf16=True` runs forward passes under bfloat16 autocast.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, temperature: float = 1.0,
                 max_new_tokens: int = 64, bf16: bool = False) -> None:
        if temperature <= 0:
            raise ValueError("temperature must be positive for a sampling policy (use greedy=True to decode greedily)")
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.bf16 = bf16
        self.pad_id = int(tokenizer.pad_token_id)
        stop = {tokenizer.eos_token_id}
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stop.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        self.stop_ids = {int(token) for token in stop if token is not None}
        self._cache_kwarg = _cache_kwarg(model)
        # Keys and values can be carried to another batch only where every layer keeps all of them (no sliding window)
        self._can_carry_cache = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
        self._head_alone = _logits_are_output_layer(model)
        self._closing, self._user_open, self._user_close, self.incremental = self._template_pieces()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- prompts ------------------------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation rendered with the chat template, ending with the assistant header."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self._encode(text)

    def continuation(self, observation: str, *, stopped: bool) -> list[int]:
        """Token ids that close the assistant turn just generated and add `observation` as the next user turn.

        When the reply ended with the stop token, that token already closes it and is not repeated.
        """
        closing = self._closing
        eos = self.tokenizer.eos_token or ""
        if stopped and eos and closing.startswith(eos):
            closing = closing[len(eos):]
        return self._encode(closing + self._user_open + observation + self._user_close)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _template_pieces(self) -> tuple[str, str, str, bool]:
        base = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": _ASSISTANT_MARK}]
        closed = self.tokenizer.apply_chat_template(base, tokenize=False)
        extended = self.tokenizer.apply_chat_template(base + [{"role": "user", "content": _USER_MARK}],
                                                      tokenize=False, add_generation_prompt=True)
        closing = closed.split(_ASSISTANT_MARK, 1)[1]
        # Templates that rewrite earlier turns (e.g. dropping old <think> blocks) are not append-only: every turn
        # then starts a fresh prompt instead of extending the conversation's token sequence.
        incremental = extended.startswith(closed) and _USER_MARK in extended[len(closed):]
        if not incremental:
            return closing, "", "", False
        user_open, user_close = extended[len(closed):].split(_USER_MARK, 1)
        return closing, user_open, user_close, True

    # -- sampling -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], *, generator: Generators = None, greedy: bool = False,
                 conversations: ConversationCache | None = None,
                 keys: Sequence[Hashable] | None = None) -> list[Generation]:
        """One reply per prompt from a single batched decode: left padding, a KV cache, and rows that finish
        leave the batch (their cache rows are dropped) so the rest decode faster.

        `generator` is one generator that samples every row (each token, all rows in one draw), or one generator
        per prompt, each sampling its own row only: a prompt's reply then does not depend on the prompts beside it
        or on its place in the batch (an evaluation's episodes sample alike whatever its batch size).

        With `conversations`, each prompt's keys and values are kept there under its entry of `keys` (one per
        prompt), and a prompt that extends what is kept for its key encodes only its new tokens. Replies are those
        of a fresh encoding up to float rounding.
        """
        if not prompts:
            return []
        if conversations is not None and (keys is None or len(keys) != len(prompts)):
            raise ValueError(f"generate with conversations needs one key per prompt ({len(prompts)}), got "
                             f"{None if keys is None else len(keys)}")
        row_generators = per_prompt_generators(generator, len(prompts))
        device = self.device
        held = ([conversations._take(key, prompt) for key, prompt in zip(keys, prompts, strict=True)]
                if conversations is not None and keys is not None and self._can_carry_cache else [])
        if held and all(held):
            cache, logits, attention, next_position = self._extend(prompts, held)  # type: ignore[arg-type]
            # Held again once this call's replies are in the cache: until then the batched cache is the one copy.
            held = []
            for key in keys:  # type: ignore[union-attr]
                conversations.discard(key)  # type: ignore[union-attr]
        else:
            cache = DynamicCache(config=self.model.config)
            # Identical prompts (a group's episodes on their first turn) are encoded once: their rows share that
            # cache and first logits, then sample on their own.
            distinct: dict[tuple[int, ...], int] = {}
            source = [distinct.setdefault(tuple(prompt), len(distinct)) for prompt in prompts]
            logits, attention, next_position = self._prefill([list(prompt) for prompt in distinct], cache)
            if len(distinct) < len(prompts):
                index = torch.tensor(source, device=device)
                cache.batch_select_indices(index)
                logits, attention, next_position = logits[index], attention[index], next_position[index]

        def keep(rows: Sequence[int]) -> None:
            """Hold what the cache has of these rows (indices into `live`) in `conversations`."""
            if conversations is None or keys is None or not self._can_carry_cache:
                return
            for j in rows:
                columns = attention[j].bool()
                fed = [*prompts[live[j]], *tokens[live[j]][:-1]]
                conversations._held[keys[live[j]]] = _Held(
                    fed, [(layer.keys[j][:, columns], layer.values[j][:, columns]) for layer in cache.layers])

        tokens: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        live = list(range(len(prompts)))
        for _ in range(self.max_new_tokens):
            log_probs = torch.log_softmax(logits.float() / self.temperature, dim=-1)
            if greedy:
                chosen = log_probs.argmax(-1)
            elif row_generators is not None:
                probs = log_probs.exp()
                chosen = torch.cat([torch.multinomial(probs[j], 1, generator=row_generators[row])
                                    for j, row in enumerate(live)])
            else:
                chosen = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(1)
            chosen_lp = log_probs.gather(1, chosen[:, None]).squeeze(1)
            going = []
            for j, (token, lp) in enumerate(zip(chosen.tolist(), chosen_lp.tolist(), strict=True)):
                tokens[live[j]].append(token)
                logprobs[live[j]].append(lp)
                if token not in self.stop_ids:
                    going.append(j)
            if not going or len(tokens[live[going[0]]]) >= self.max_new_tokens:
                keep(range(len(live)))
                break
            if len(going) < len(live):
                keep(sorted(set(range(len(live))) - set(going)))
                index = torch.tensor(going, device=device)
                cache.batch_select_indices(index)
                chosen, attention, next_position = chosen[index], attention[index], next_position[index]
                live = [live[j] for j in going]
            attention = torch.cat([attention, attention.new_ones((len(live), 1))], dim=1)
            logits = self._next_logits(chosen[:, None], attention, next_position[:, None], cache)
            next_position = next_position + 1
        return [Generation(ids, lps, self.tokenizer.decode(ids, skip_special_tokens=True),
                           bool(ids) and ids[-1] in self.stop_ids) for ids, lps in zip(tokens, logprobs, strict=True)]

    def _prefill(self, prompts: list[list[int]], cache: DynamicCache) -> tuple[Tensor, Tensor, Tensor]:
        """Encode `prompts` into `cache`, left-padded: each row's next-token logits, attention mask and next
        position."""
        device = self.device
        # Prompts that open alike (the same instructions) encode that part once, for every row: the cache holds
        # [shared prefix][left padding][own tokens] per row, at the positions a plain left-padded batch gives them.
        shared = shared_prefix_length(prompts)
        if shared:
            prefix = torch.tensor(prompts[0][:shared], dtype=torch.long, device=device)[None]
            ones = torch.ones_like(prefix)
            self._next_logits(prefix, ones, torch.arange(shared, device=device)[None], cache)
            cache.batch_repeat_interleave(len(prompts))
        width = max(len(p) for p in prompts) - shared
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), shared + width), dtype=torch.long)
        attention[:, :shared] = 1
        for row, prompt in enumerate(prompts):
            own = prompt[shared:]
            input_ids[row, width - len(own):] = torch.tensor(own, dtype=torch.long)
            attention[row, shared + width - len(own):] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp_min(0)[:, shared:]
        logits = self._next_logits(input_ids, attention, positions, cache)
        return logits, attention, positions[:, -1] + 1

    def _extend(self, prompts: list[list[int]], held: list[_Held]) -> tuple[DynamicCache, Tensor, Tensor, Tensor]:
        """A cache of what `held` holds for each prompt, and the prompts' new tokens encoded into it: the cache,
        each row's next-token logits, attention mask and next position.

        Each row's held keys and values are right-aligned after left padding, their rotary positions already
        applied, and its new tokens are right-aligned after that (padding between the two is masked), at the positions
        that follow the held tokens: the positions a fresh encoding gives them."""
        device = self.device
        length = max(len(entry.tokens) for entry in held)
        new = [prompt[len(entry.tokens):] for prompt, entry in zip(prompts, held, strict=True)]
        width = max(len(tokens) for tokens in new)
        layers = []
        for index in range(len(held[0].layers)):
            first = held[0].layers[index][0]
            keys = first.new_zeros((len(prompts), first.shape[0], length, first.shape[2]))
            values = torch.zeros_like(keys)
            for row, entry in enumerate(held):
                row_keys, row_values = entry.layers[index]
                keys[row, :, length - row_keys.shape[1]:] = row_keys
                values[row, :, length - row_values.shape[1]:] = row_values
            layers.append((keys, values))
        cache = DynamicCache(layers, config=self.model.config)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), length + width), dtype=torch.long)
        positions = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, (entry, tokens) in enumerate(zip(held, new, strict=True)):
            attention[row, length - len(entry.tokens):length] = 1
            attention[row, length + width - len(tokens):] = 1
            input_ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
            positions[row, width - len(tokens):] = torch.arange(len(entry.tokens), len(entry.tokens) + len(tokens))
        input_ids, attention, positions = input_ids.to(device), attention.to(device), positions.to(device)
        logits = self._next_logits(input_ids, attention, positions, cache)
        return cache, logits, attention, positions[:, -1] + 1

    def _next_logits(self, input_ids: Tensor, attention: Tensor, positions: Tensor, cache: DynamicCache) -> Tensor:
        with self.autocast():
            out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **{self._cache_kwarg: cache})
        return out.logits[:, -1]

    # -- scoring ------------------------------------------------------------------------------------------------
    def sequence_logprobs(self, input_ids: Tensor, attention_mask: Tensor, action_mask: Tensor, *,
                          with_hidden: bool = False, shared_prefix: int = 0,
                          entropy_out: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logprobs ``(B, L)`` of the action tokens (0 elsewhere) and, with `with_hidden`, the last hidden state
        ``(B, L, H)`` at the position that predicts each token (the state a value head reads), 0 elsewhere.
        `entropy_out`, a ``(B, L)`` tensor, receives the entropy of the (tempered) distribution each action token
        was drawn from, without grad, where the vocabulary-sized logits are at hand anyway.

        Only the positions where a row predicts one of its own action tokens go through the LM head, which keeps the
        vocabulary-sized logits small for long multi-turn sequences (models that transform the head's logits, as
        Gemma's soft-capping does, run their own forward instead, with logits at every row's positions). The first
        `shared_prefix` tokens, which every row must have alike (`shared_row_prefix` of the whole batch), run once
        for all rows: the rest of each row attends to their cached keys and values, and gradients flow back through
        them. Give the same value for every part of a batch, so that a row's logprobs do not depend on which rows it
        is scored with. A row's numbers still move by float rounding (a few 1e-7 in logprobs) with the width of its
        micro-batch, which its longest row sets: the attention kernel blocks its sums by the width.
        """
        width = input_ids.shape[1]
        # A micro-batch of short rows cut from a batch padded to its longest row: the columns after every row's end
        # change nothing before them (causal attention), so they are not run, and come back as 0. One padding column
        # stays: without any, transformers drops the attention mask for a plain causal kernel, whose sums round
        # differently again.
        used = min(_attended_width(attention_mask) + 1, width)
        if used < width:
            logprobs, hidden = self._sequence_logprobs(
                input_ids[:, :used], attention_mask[:, :used], action_mask[:, :used], with_hidden, shared_prefix,
                None if entropy_out is None else entropy_out[:, :used])
            if entropy_out is not None:
                entropy_out[:, used:] = 0
            logprobs = torch.nn.functional.pad(logprobs, (0, width - used))
            return logprobs, None if hidden is None else torch.nn.functional.pad(hidden, (0, 0, 0, width - used))
        return self._sequence_logprobs(input_ids, attention_mask, action_mask, with_hidden, shared_prefix, entropy_out)

    def _sequence_logprobs(self, input_ids: Tensor, attention_mask: Tensor, action_mask: Tensor, with_hidden: bool,
                           shared_prefix: int, entropy_out: Tensor | None) -> tuple[Tensor, Tensor | None]:
        predicts = torch.zeros_like(action_mask, dtype=torch.bool)
        predicts[:, :-1] = action_mask[:, 1:].bool()
        # (row, position) of every position that predicts one of its row's action tokens, in row-major order
        rows, positions = predicts.nonzero(as_tuple=True)
        shared = shared_prefix  # also for a single row: its logprobs must not depend on the rows beside it
        if shared and not (bool((positions >= shared).all())
                           and bool((input_ids[:, :shared] == input_ids[:1, :shared]).all())
                           and bool(attention_mask[:, :shared].bool().all())):
            raise ValueError(f"shared_prefix={shared_prefix}, but the rows do not all start with those tokens before "
                             "their first action token; pass shared_row_prefix(...) of the batch, or 0")
        prefix = self.shared_prefix_inputs(input_ids, attention_mask, shared)
        with self.autocast():
            if self._head_alone:
                # The decoder, then the output layer at each row's own positions: the vocabulary-sized logits (and
                # the logsumexp and softmax over them) cover the action tokens only, not every row at every other
                # row's positions as `logits_to_keep` (one set of positions for the whole batch) would.
                last = self.model.get_decoder()(input_ids=input_ids[:, shared:], attention_mask=attention_mask,
                                                **prefix).last_hidden_state
                logits = self.model.get_output_embeddings()(last[rows, positions - shared])
            else:
                # The model's own forward, for models that transform the output layer's logits (see
                # `_logits_are_output_layer`): logits at the union of the rows' positions, each row's own kept.
                keep = predicts.any(0).nonzero().squeeze(1)
                out = self.model(input_ids=input_ids[:, shared:], attention_mask=attention_mask,
                                 logits_to_keep=keep - shared, output_hidden_states=with_hidden, **prefix)
                logits = out.logits[rows, torch.searchsorted(keep, positions)]
                last = out.hidden_states[-1] if with_hidden else None
        logits = logits.float() / self.temperature
        targets = input_ids[rows, positions + 1]
        token_lp = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        result = torch.zeros(input_ids.shape, dtype=token_lp.dtype, device=input_ids.device)
        result[rows, positions + 1] = token_lp
        result = result * action_mask
        if entropy_out is not None:
            with torch.no_grad():
                entropy = torch.logsumexp(logits, dim=-1) - (logits.softmax(-1) * logits).sum(-1)
                entropy_out.zero_()
                entropy_out[rows, positions + 1] = entropy.to(entropy_out.dtype)
                entropy_out.mul_(action_mask)
        if not with_hidden or last is None:
            return result, None
        last = last.float()
        hidden = torch.zeros((*input_ids.shape, last.shape[-1]), dtype=last.dtype, device=last.device)
        hidden[rows, positions + 1] = last[rows, positions - shared]
        return result, hidden * action_mask[..., None]

    def prompt_end_hidden(self, prompts: list[list[int]], *, batch_size: int) -> Tensor:
        """The last hidden state ``(B, H)`` at each prompt's final token, which predicts the first token of the reply
        to it: the state a value head reads for the prompt (as `sequence_logprobs(..., with_hidden=True)` reads it
        for each generated token). Prompts run right-padded, `batch_size` at a time; the tokens all of them open with
        (the instructions) run once per chunk, as in scoring, and as many for every chunk, so that a prompt's state
        does not depend on the chunk it runs in."""
        shared = shared_prefix_length(prompts)  # each prompt keeps its final token, whose state is read
        ends = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            ids = torch.full((len(chunk), max(map(len, chunk))), self.pad_id, dtype=torch.long, device=self.device)
            attention = torch.zeros_like(ids)
            for row, prompt in enumerate(chunk):
                ids[row, :len(prompt)] = torch.tensor(prompt, device=self.device)
                attention[row, :len(prompt)] = 1
            prefix = self.shared_prefix_inputs(ids, attention, shared)
            with self.autocast():  # the decoder alone: no logits are needed
                hidden = self.model.get_decoder()(input_ids=ids[:, shared:], attention_mask=attention,
                                                  **prefix).last_hidden_state
            ends.append(hidden[torch.arange(len(chunk), device=self.device), attention.sum(-1) - 1 - shared].float())
        return torch.cat(ends)

    def shared_prefix_inputs(self, input_ids: Tensor, attention_mask: Tensor, shared: int) -> dict[str, Any]:
        """Keyword arguments under which the LM, or its decoder, given ``input_ids[:, shared:]`` reads the first
        `shared` tokens, alike in every row, from one pass over the first row (a cache repeated per row; gradients
        flow back through it). ``{"use_cache": False}`` for `shared` 0."""
        if not shared:
            return {"use_cache": False}
        cache = DynamicCache(config=self.model.config)
        with self.autocast():  # the decoder alone: the prefix needs no logits
            self.model.get_decoder()(input_ids=input_ids[:1, :shared], attention_mask=attention_mask[:1, :shared],
                                     use_cache=True, **{self._cache_kwarg: cache})
        cache.batch_repeat_interleave(input_ids.shape[0])
        return {"use_cache": True, self._cache_kwarg: cache}

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.bf16 and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield


def per_prompt_generators(generator: Generators, rows: int) -> Sequence[torch.Generator] | None:
    """The per-prompt generators, when `generator` is a sequence of them (one per prompt); None for one generator.
    Generation back ends share it, so that each takes either."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    generators = list(generator)
    if len(generators) != rows:
        raise ValueError(f"generator: pass one torch.Generator, or one per prompt ({rows}), not {len(generators)}")
    return generators


def _attended_width(attention_mask: Tensor) -> int:
    """One past the last column any row attends to (at least 1)."""
    columns = attention_mask.bool().any(0).nonzero()
    return max(int(columns[-1]) + 1, 1) if len(columns) else 1


# Below this many tokens an extra forward pass for the shared part costs more than encoding it in every row saves.
MIN_SHARED_PREFIX = 32


def shared_prefix_length(prompts: list[list[int]], limit: int | None = None) -> int:
    """Tokens every prompt starts with, at most `limit`: by default each keeps at least one of its own, as its
    first logits must come from the batched pass. 0 for a single prompt or when fewer than MIN_SHARED_PREFIX are
    shared."""
    if len(prompts) < 2:
        return 0
    if limit is None:
        limit = min(len(prompt) for prompt in prompts) - 1
    first = prompts[0]
    shared = 0
    while shared < limit and all(prompt[shared] == first[shared] for prompt in prompts):
        shared += 1
    return shared if shared >= MIN_SHARED_PREFIX else 0


def shared_row_prefix(input_ids: Tensor, attention_mask: Tensor, action_mask: Tensor) -> int:
    """Leading tokens that every row of a token batch has alike, all attended, up to the first position that
    predicts an action token: `sequence_logprobs`'s `shared_prefix`. 0 for a single row or when fewer than
    MIN_SHARED_PREFIX are shared."""
    predicting = action_mask[:, 1:].bool().any(0).nonzero()
    if input_ids.shape[0] < 2 or not len(predicting):
        return 0
    alike = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)
    shared = min(int(alike.long().cumprod(0).sum()), int(predicting[0]))
    return shared if shared >= MIN_SHARED_PREFIX else 0


# Architectures whose causal LM's logits are its output layer on the decoder's last hidden state and nothing more
# (SmolLM2 is a llama). Others, such as Gemma-2 (soft-capping), Cohere (logit_scale) or Granite (logits_scaling),
# score through their own forward: slower, and right whatever they do to their logits.
_PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})
# Config fields with which causal LMs transform the output layer's logits, refused even on the types above
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _logits_are_output_layer(model: PreTrainedModel) -> bool:
    """Whether the model's logits are its output layer applied to its decoder's last hidden state, and nothing more,
    so that `sequence_logprobs` may apply that layer itself to the positions it needs."""
    configs = (model.config, model.config.get_text_config())  # a multimodal model keeps them in its text config
    return (model.config.model_type in _PLAIN_HEAD_TYPES and model.get_output_embeddings() is not None
            and all(getattr(c, name, None) is None for c in configs for name in _LOGIT_TRANSFORMS))


def _cache_kwarg(model: PreTrainedModel) -> str:
    """Recent transformers name the KV-cache argument `cache`; earlier releases `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
