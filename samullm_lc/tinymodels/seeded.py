"""Tiny models with seeded random weights saved in their folder, for tests whose outputs must depend on the
prompt.

vLLM's dummy weights (the plain tiny models) are uniform in a tiny range, norms included, so a greedy answer
depends only on the last prompt token, which a chat template makes the same for every prompt: every prompt
gets the same answer. A comparison of two ways of serving a pipeline could then not tell answers apart.
Here the same shapes get transformers' own initialisation (seeded, float32) written as safetensors, which the
engine loads (``load_format="auto"``); greedy answers then differ from prompt to prompt.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from samullm_lc.cache import build_cached_folder
from samullm_lc.tinymodels.build import SPEC_FILE, default_cache_dir, ensure_tiny_model

WEIGHTS_FILE = "model.safetensors"


def ensure_seeded_tiny_model(name: str, *, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """The folder of tiny model ``name`` with seeded random weights (built in the cache on first use)."""
    import torch

    base = ensure_tiny_model(name, cache_dir)
    digest = hashlib.sha256(f"{base.name}|{seed}|{torch.__version__}|".encode() + Path(__file__).read_bytes())
    root = base.parent
    target = root / f"{name}-seeded{seed}-{digest.hexdigest()[:10]}"
    if (target / WEIGHTS_FILE).is_file():
        return target

    def write(staging: Path) -> None:
        for file in base.iterdir():
            shutil.copy2(file, staging / file.name)
        _write_weights(staging, seed)

    return build_cached_folder(target, WEIGHTS_FILE, write)


def _write_weights(folder: Path, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), torch_dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)


def is_tiny_model_folder(folder: str | Path) -> bool:
    """A folder written by ``tinymodels`` (it carries its spec), with or without saved weights."""
    return (Path(folder) / SPEC_FILE).is_file()


__all__ = ["default_cache_dir", "ensure_seeded_tiny_model", "is_tiny_model_folder"]
