"""Tests of the tiny random-weight models: deterministic files, a lossless tokenizer, consistent special
tokens, a working chat template, safe concurrent builds, and one real vLLM CPU engine run."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from samullm_lc.errors import UnknownModelError
from samullm_lc.tinymodels import TINY_MODELS, default_cache_dir, ensure_tiny_model, model_files
from samullm_lc.tinymodels.specs import TinyModelSpec
from samullm_lc.tinymodels.tokenizer import EOS_TOKEN, SPECIAL_TOKENS

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAMES = sorted(TINY_MODELS)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _unicode_samples() -> list[str]:
    rng = random.Random(0)
    fixed = [
        "",
        " ",
        "Hello, world!",
        "  leading and trailing spaces  ",
        "tabs\tand\nnew\r\nlines",
        "naïve café — “quotes” ‘single’ …",
        "日本語のテキスト、中文，한국어",
        "emoji 🎉👩‍💻🏳️‍🌈 and flags 🇫🇮",
        "combining e\u0301 and zero\u200bwidth\ufeff",
        "nul\x00byte and \x7f delete",
        "\U0010ffff max code point",
        "text with <|user|> and <|eos|> markers",
    ]
    planes = [(0x20, 0x7F), (0xA0, 0x2FFF), (0x3000, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF)]
    randoms = []
    for _ in range(200):
        chars = []
        for _ in range(rng.randint(1, 40)):
            low, high = planes[rng.randrange(len(planes))]
            chars.append(chr(rng.randint(low, high)))
        randoms.append("".join(chars))
    return fixed + randoms


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding every tiny model."""
    root = tmp_path_factory.mktemp("tiny-models")
    for name in MODEL_NAMES:
        ensure_tiny_model(name, root)
    return root


def test_two_builds_are_byte_identical(cache: Path, tmp_path: Path) -> None:
    """Building again, in another folder, gives the same folder names and the same bytes."""
    for name in MODEL_NAMES:
        first = ensure_tiny_model(name, cache)
        second = ensure_tiny_model(name, tmp_path)
        assert first.name == second.name
        assert _digests(first) == _digests(second)


def test_build_is_independent_of_hash_seed_and_threads() -> None:
    """A fresh interpreter with another hash seed and one Rayon thread writes the same files."""
    name = "tiny-llama-s"
    script = (
        "import hashlib, json; from samullm_lc.tinymodels import model_files, get_spec; "
        f"files = model_files(get_spec({name!r})); "
        "print(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in files.items()}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "RAYON_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    expected = {k: hashlib.sha256(v).hexdigest() for k, v in model_files(TINY_MODELS[name]).items()}
    assert json.loads(out.stdout) == expected


def test_specs_are_distinct_and_vocab_matches_tokenizer(cache: Path) -> None:
    """Each model has its own vocabulary size, and config, tokenizer and spec agree on it."""
    assert len({spec.vocab_size for spec in TINY_MODELS.values()}) == len(TINY_MODELS)
    assert {spec.architecture for spec in TINY_MODELS.values()} >= {"LlamaForCausalLM", "Qwen2ForCausalLM"}
    for name in MODEL_NAMES:
        folder = ensure_tiny_model(name, cache)
        config = json.loads((folder / "config.json").read_text())
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        assert config["vocab_size"] == tokenizer.get_vocab_size() == TINY_MODELS[name].vocab_size
        assert config["max_position_embeddings"] == 4096


def test_tokenizer_round_trips_arbitrary_unicode(cache: Path) -> None:
    """Every string encodes and decodes back: exactly for Llama, NFC-normalized for Qwen2."""
    from transformers import AutoTokenizer

    for name in MODEL_NAMES:
        folder = ensure_tiny_model(name, cache)
        fast = Tokenizer.from_file(str(folder / "tokenizer.json"))
        hf = AutoTokenizer.from_pretrained(folder)
        nfc = TINY_MODELS[name].tokenizer_style == "qwen2"
        for text in _unicode_samples():
            expected = unicodedata.normalize("NFC", text) if nfc else text
            ids = fast.encode(text, add_special_tokens=False).ids
            assert fast.decode(ids, skip_special_tokens=False) == expected
            assert hf.encode(text, add_special_tokens=False) == ids, "tokenizer.json and transformers disagree"
            assert hf.decode(ids) == expected
            assert max(ids, default=0) < TINY_MODELS[name].vocab_size


def test_english_text_is_compressed(cache: Path) -> None:
    """The trained merges make common English words shorter than their bytes."""
    tokenizer = Tokenizer.from_file(str(ensure_tiny_model("tiny-llama-l", cache) / "tokenizer.json"))
    text = "The people of the world could find water in the house."
    assert len(tokenizer.encode(text).ids) < len(text.encode()) / 2


def test_eos_id_agrees_everywhere(cache: Path) -> None:
    """config.json, generation_config.json, tokenizer.json and transformers name the same EOS/BOS/PAD ids."""
    from transformers import AutoTokenizer

    for name in MODEL_NAMES:
        folder = ensure_tiny_model(name, cache)
        config = json.loads((folder / "config.json").read_text())
        generation = json.loads((folder / "generation_config.json").read_text())
        raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
        hf = AutoTokenizer.from_pretrained(folder)
        eos = raw.token_to_id(EOS_TOKEN)
        assert eos == SPECIAL_TOKENS.index(EOS_TOKEN)
        assert config["eos_token_id"] == generation["eos_token_id"] == hf.eos_token_id == eos
        assert config["bos_token_id"] == generation["bos_token_id"] == hf.bos_token_id
        assert config["pad_token_id"] == generation["pad_token_id"] == hf.pad_token_id
        assert len(hf) == config["vocab_size"]


def test_chat_template_renders(cache: Path) -> None:
    """The chat template wraps turns in role markers, ends them with EOS and opens the assistant turn."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(ensure_tiny_model("tiny-qwen2-m", cache))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again?"},
    ]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|bos|><|system|>\nBe brief.<|eos|>\n<|user|>\nHi there<|eos|>\n"
        "<|assistant|>\nHello.<|eos|>\n<|user|>\nAgain?<|eos|>\n<|assistant|>\n"
    )
    ids = hf.encode(text, add_special_tokens=False)
    for marker in ("<|bos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|eos|>"):
        assert hf.convert_tokens_to_ids(marker) in ids


def test_concurrent_builds_share_one_folder(tmp_path: Path) -> None:
    """Many simultaneous callers get the same complete folder and leave no temporary folders behind."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(lambda _: ensure_tiny_model("tiny-llama-s", tmp_path), range(8)))
    assert len(set(paths)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {
        p.name for p in paths[0].iterdir()
    }


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    """An unknown model name raises UnknownModelError naming every valid model."""
    with pytest.raises(UnknownModelError) as caught:
        ensure_tiny_model("tiny-gpt-xxl", tmp_path)
    for name in MODEL_NAMES:
        assert name in str(caught.value)


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$SAMULLM_CACHE_DIR moves the default cache."""
    monkeypatch.setenv("SAMULLM_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tiny-models"
    monkeypatch.delenv("SAMULLM_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "samullm_lc" / "tiny-models"


def test_spec_rejects_head_size_the_cpu_backend_lacks() -> None:
    """A head width the vLLM CPU attention backend does not implement is refused up front."""
    with pytest.raises(ValueError, match="head_dim"):
        TinyModelSpec(
            name="bad",
            architecture="LlamaForCausalLM",
            hidden_size=128,
            num_layers=1,
            num_heads=8,
            num_kv_heads=8,
            intermediate_size=256,
            vocab_size=300,
        )


@pytest.mark.engine
def test_vllm_cpu_engine_generates_and_stops_at_eos(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real vLLM engine loads a tiny model with dummy weights, generates, chats and stops at our EOS."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    vllm = pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    spec = TINY_MODELS["tiny-llama-s"]
    llm = vllm.LLM(
        model=str(ensure_tiny_model(spec.name, cache)),
        **spec.vllm_kwargs(),
        enforce_eager=True,
        distributed_executor_backend="uni",
        kv_cache_memory_bytes=64 * 1024**2,
        max_model_len=512,
        seed=0,
    )
    try:
        plain = llm.generate(["The people of the world"] * 4, vllm.SamplingParams(temperature=1.0, max_tokens=16))
        assert all(0 < len(o.outputs[0].token_ids) <= 16 for o in plain)
        assert all(isinstance(o.outputs[0].text, str) for o in plain)
        # Only EOS and one other token allowed: each request stops at EOS after a few tokens.
        eos_only = vllm.SamplingParams(temperature=1.0, max_tokens=200, allowed_token_ids=[spec.eos_token_id, 100])
        stopped = llm.generate(["Hello"] * 8, eos_only)
        for output in stopped:
            completion = output.outputs[0]
            assert completion.finish_reason == "stop"
            assert completion.token_ids[-1] == spec.eos_token_id
            assert len(completion.token_ids) < 200
        chat = llm.chat([{"role": "user", "content": "Hi"}], vllm.SamplingParams(temperature=1.0, max_tokens=8))
        assert chat[0].prompt_token_ids[:2] == [spec.bos_token_id, SPECIAL_TOKENS.index("<|user|>")]
        assert llm.llm_engine.model_config.dtype == torch.float32
    finally:
        llm.llm_engine.engine_core.shutdown()
