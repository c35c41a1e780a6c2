"""Write a tiny model's folder (config, tokenizer, generation config) into a cache, on demand.

The folder holds no weights: vLLM fills them with ``load_format="dummy"``. Everything in it is
generated in code, byte for byte the same on every machine, in well under a second. The folder name
carries a fingerprint of the spec and of the generating code, so a changed spec never reuses a stale
folder. Concurrent callers are safe: each builds in its own temporary folder and renames it into
place atomically; the first rename wins and the others discard their copy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from samullm_lc.cache import build_cached_folder, cache_dir
from samullm_lc.errors import UnknownModelError
from samullm_lc.tinymodels import specs as _specs_module
from samullm_lc.tinymodels import tokenizer as _tokenizer_module
from samullm_lc.tinymodels.specs import TINY_MODELS, TinyModelSpec
from samullm_lc.tinymodels.tokenizer import (
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    train_tokenizer,
)

SPEC_FILE = "samullm_tiny_model.json"
# Bump when the layout of the written files changes without a change to the specs or tokenizer code.
_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """Return ``$SAMULLM_CACHE_DIR/tiny-models``, else ``~/.cache/samullm_lc/tiny-models`` (``samullm_lc/cache.py``)."""
    return cache_dir("tiny-models")


def get_spec(name: str) -> TinyModelSpec:
    """Return the spec of a tiny model, or raise ``UnknownModelError`` naming the valid ones."""
    try:
        return TINY_MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown tiny model {name!r}; valid names: {', '.join(sorted(TINY_MODELS))}"
        ) from None


def fingerprint(spec: TinyModelSpec) -> str:
    """Return a short hash of the spec and of the code that writes its files."""
    digest = hashlib.sha256()
    digest.update(f"format={_FORMAT_VERSION}\n".encode())
    digest.update(spec.model_dump_json().encode())
    for module_file in (__file__, _specs_module.__file__, _tokenizer_module.__file__):
        digest.update(Path(module_file).read_bytes())
    return digest.hexdigest()[:10]


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def model_files(spec: TinyModelSpec) -> dict[str, bytes]:
    """Return every file of the model folder, name -> contents."""
    tokenizer = train_tokenizer(spec.vocab_size, spec.tokenizer_style)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "added_tokens_decoder": {
            str(token_id): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for token_id, token in enumerate(SPECIAL_TOKENS)
        },
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.max_position_embeddings,
        "padding_side": "left",
        "chat_template": CHAT_TEMPLATE,
    }
    generation_config = {
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id,
        "pad_token_id": spec.pad_token_id,
    }
    return {
        "config.json": _json_bytes(spec.hf_config()),
        "generation_config.json": _json_bytes(generation_config),
        "tokenizer.json": tokenizer.to_str(pretty=True).encode("utf-8") + b"\n",
        "tokenizer_config.json": _json_bytes(tokenizer_config),
        "special_tokens_map.json": _json_bytes(
            {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
        ),
        SPEC_FILE: _json_bytes(spec.model_dump(mode="json")),
    }


def ensure_tiny_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """Return the folder of tiny model ``name``, building it in the cache first if it is missing."""
    spec = get_spec(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"{spec.name}-{fingerprint(spec)}"
    if (target / SPEC_FILE).is_file():
        return target

    def write(staging: Path) -> None:
        for file_name, contents in model_files(spec).items():
            (staging / file_name).write_bytes(contents)

    return build_cached_folder(target, SPEC_FILE, write)
