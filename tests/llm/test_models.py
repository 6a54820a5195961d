"""Model loading: the tiny offline test model, the local-folder path, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from creditgym.llm import HFChatModel, load_policy_model, tiny_test_model
from creditgym.llm.models import cache_dir


def test_tiny_model_is_offline_deterministic_and_chat_ready() -> None:
    model_a, tokenizer = tiny_test_model(seed=3)
    model_b, _ = tiny_test_model(seed=3)
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    text = tokenizer.apply_chat_template([{"role": "user", "content": "héllo"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nhéllo<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: every string round-trips
    assert tokenizer.padding_side == "left"


def test_no_progress_hides_the_weight_loading_bar_for_that_load_only(tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    model, tokenizer = tiny_test_model()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    capfd.readouterr()
    load_policy_model(tmp_path, progress=False)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # as it was, for other code
    load_policy_model(tmp_path)
    assert "Loading weights" in capfd.readouterr().err


def test_local_folder_loads_and_chats(tmp_path: Path) -> None:
    model, tokenizer = tiny_test_model()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_policy_model(tmp_path)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    saved = model.state_dict()
    assert saved.keys() == loaded.state_dict().keys()
    assert all(torch.equal(saved[name], value) for name, value in loaded.state_dict().items())  # the saved weights
    chat = HFChatModel(loaded, loaded_tokenizer, max_new_tokens=5)
    replies = chat.generate([[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a longer one"}]])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    # greedy decoding of a batch equals decoding each conversation alone (left padding is handled)
    assert chat.generate([[{"role": "user", "content": "a longer one"}]]) == replies[1:]


def test_sampling_keys_are_checked_and_seeded() -> None:
    chat = HFChatModel(*tiny_test_model(), max_new_tokens=6)
    batch = [[{"role": "user", "content": "hi"}]]
    assert chat.generate(batch, temperature=1.0, seed=7) == chat.generate(batch, temperature=1.0, seed=7)
    # top_p None is allowed by check_sampling and means no cut, as top_p 1 does (it used to raise in float()).
    assert chat.generate(batch, temperature=1.0, seed=7, top_p=None) == chat.generate(batch, temperature=1.0, seed=7)
    with pytest.raises(TypeError, match="max_tokenz"):
        chat.generate(batch, max_tokenz=3)


def test_unseeded_sampling_follows_the_models_own_seed() -> None:
    # Without a seed, every call used to sample from a restored fork of torch's global generator: the same noise on
    # every call, and different noise whenever the caller's code had drawn from it.
    batch = [[{"role": "user", "content": "hi"}]]
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        chat = HFChatModel(*tiny_test_model(), max_new_tokens=8, temperature=1.0, seed=5)
        runs.append([chat.generate(batch)[0] for _ in range(4)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1, runs[0]
    before = torch.random.get_rng_state()
    HFChatModel(*tiny_test_model(), max_new_tokens=4, temperature=1.0).generate(batch)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_unknown_model_names_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="smollm2-135m"):
        load_policy_model("not-a-model")
    with pytest.raises(ValueError, match="offline"):
        load_policy_model("some-org/not-in-the-local-cache")
    with pytest.raises(ValueError, match="unknown model .*a local model folder"):  # was a hub repo-id error
        load_policy_model(tmp_path / "missing" / "folder")
    with pytest.raises(ValueError, match="has no config.json"):  # was a hint to install sentencepiece
        load_policy_model(tmp_path)


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CREDITGYM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "models"


def test_a_model_folder_is_saved_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from creditgym.llm.models import save_model_folder

    model, tokenizer = tiny_test_model(seed=0)
    target = tmp_path / "model"
    save_model_folder(model, tokenizer, target)
    assert (target / "config.json").exists()
    save_model_folder(model, tokenizer, target)  # another process finished first: its copy is kept
    # An interrupted save left a half-written folder (517 MiB for SmolLM2) in the cache for ever
    monkeypatch.setattr(type(tokenizer), "save_pretrained", lambda *args, **kwargs: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_model_folder(model, tokenizer, tmp_path / "other")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]


def test_hf_chat_model_checks_the_batch_like_the_servers() -> None:
    chat = HFChatModel(*tiny_test_model(seed=0))
    with pytest.raises(TypeError, match=r"batch\[0\] is a message, not a conversation"):
        chat.generate([{"role": "user", "content": "hi"}])  # type: ignore[list-item]
