"""`ChatModel` over a local `transformers` causal LM (judges, user simulators, reward designers, evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from creditgym.seeding import seeded_torch

from .chat import check_batch, check_sampling
from .models import load_policy_model


class HFChatModel:
    """Batched chat replies from a local causal LM: one left-padded `generate` call per batch.

    `max_new_tokens` and `temperature` set the defaults; each `generate` call may override them, plus `top_p`
    and `seed`. `temperature=0` decodes greedily. A call without a seed samples with the next seed from the model's
    own generator, seeded by `seed`, so successive calls differ, repeat from run to run and never use torch's
    global generators.

        chat = HFChatModel.from_pretrained("smollm2-135m")
        chat.generate([[{"role": "user", "content": "Say hi"}]], max_new_tokens=8)
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, max_new_tokens: int = 256,
                 temperature: float = 0.0, seed: int = 0) -> None:
        if max_new_tokens < 1 or temperature < 0:
            raise ValueError("max_new_tokens must be at least 1 and temperature at least 0")
        self.model = model
        self.seeds = np.random.default_rng(seed)
        """Where calls without a seed take theirs."""
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.defaults: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature}

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str = "cpu", **defaults: Any) -> HFChatModel:
        """Load with `load_policy_model` (the embedded `smollm2-135m` or a local folder); never downloads."""
        model, tokenizer = load_policy_model(name_or_path, device=device)
        return cls(model, tokenizer, **defaults)

    def generate(self, batch: list[list[dict]], **sampling: Any) -> list[str]:
        check_sampling(sampling)
        check_batch(batch)
        if not batch:
            return []
        params = {**self.defaults, **sampling}
        texts = [self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                 for messages in batch]
        device = next(self.model.parameters()).device
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        temperature = float(params["temperature"])
        options: dict[str, Any] = {"max_new_tokens": int(params["max_new_tokens"]), "do_sample": temperature > 0,
                                   "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            top_p = params.get("top_p")  # None means no nucleus cut, as check_sampling allows
            options.update(temperature=temperature, top_p=1.0 if top_p is None else float(top_p), top_k=0)
        seed = params.get("seed")
        if seed is None and temperature > 0:
            seed = int(self.seeds.integers(2**31 - 1))
        with seeded_torch(None if seed is None else int(seed), device), torch.no_grad():
            output = self.model.generate(**inputs, **options)
        replies = output[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(replies, skip_special_tokens=True)]
