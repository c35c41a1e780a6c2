"""Engine profiles of the pool's CPU engine slots, measured as the pool runs them and cached on disk.

A CPU slot is one core: the engine runs in its own process pinned to that core, with the pool's engine
settings (chunked prefill off, a fixed KV cache). Its speed is measured, not modelled, so the planner
needs this profile for every model it runs on ``cpu``. Profiles are cached under a key of the model files'
fingerprint, the engine settings, the grid scale and the vLLM version; a change to any re-measures.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path

from samullm_lc import cache
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.errors import ProfileError
from samullm_lc.planner.cluster import Cluster
from samullm_lc.runtime.backends.base import EngineSpec
from samullm_lc.runtime.backends.vllm_worker import (
    REIMPORTED_MAIN_ADVICE,
    REIMPORTED_MAIN_EXIT_CODE,
    cpu_pinning,
    exit_if_reimported_main,
    pin_process,
)
from samullm_lc.runtime.pool import default_engine_settings
from samullm_lc.runtime.vllm_engine import engine_settings_for

DEFAULT_SCALE = 0.5
PROFILE_FORMAT = 2
"""Part of the cache key: profiles of format 1 counted importing vLLM in the load time."""


def default_cache_dir() -> Path:
    """``$SAMULLM_CACHE_DIR/profiles``, else ``~/.cache/samullm_lc/profiles`` (``samullm_lc/cache.py``)."""
    return cache.cache_dir("profiles")


def pool_profiles(models: list[str], *, cache_dir: str | Path | None = None, scale: float = DEFAULT_SCALE,
                  seed: int = 0) -> dict[str, EngineProfile]:
    """The one-core CPU profile of each model (measured once, then read from the cache)."""
    return {model: pool_profile(model, cache_dir=cache_dir, scale=scale, seed=seed) for model in models}


def pool_profile(model: str, *, cache_dir: str | Path | None = None, scale: float = DEFAULT_SCALE,
                 seed: int = 0) -> EngineProfile:
    """The profile of ``model`` on one CPU core with the pool's engine settings."""
    import vllm

    exit_if_reimported_main()
    settings = default_engine_settings(Cluster.parse("1xcpu"))(EngineSpec(engine_id=0, model=model, devices=(0,)))
    key_source = json.dumps([settings.model_dump(), _files_digest(Path(settings.model)), scale, seed,
                             vllm.__version__, PROFILE_FORMAT], sort_keys=True, default=str)
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"{Path(model).name}-{key}.profile.json"
    if path.exists():
        return EngineProfile.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    context = mp.get_context("spawn")
    core = min(os.sched_getaffinity(0))
    process = context.Process(target=_measure, args=(model, settings.model_dump(), scale, seed, str(path), core))
    process.start()
    process.join()
    if process.exitcode == REIMPORTED_MAIN_EXIT_CODE:
        raise ProfileError(f"profiling {model} failed: {REIMPORTED_MAIN_ADVICE}")
    if process.exitcode != 0 or not path.exists():
        raise ProfileError(f"profiling {model} on one CPU core failed (exit code {process.exitcode}); "
                           f"run `samullm profile {model} --out FILE` to see the engine's error")
    return EngineProfile.load(path)


def _files_digest(folder: Path) -> str:
    """Digest of a model folder's config files (a regenerated tiny model with other shapes re-profiles)."""
    if not folder.is_dir():
        return str(folder)
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.json")):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def _measure(model: str, settings: dict, scale: float, seed: int, path: str, core: int) -> None:
    """In a fresh process pinned to one core: profile the engine and write the profile."""
    pin_process(cpu_pinning([core]))
    from samullm_lc.profiling.profiler import profile_engine
    from samullm_lc.runtime.vllm_engine import EngineSettings

    _, architecture = engine_settings_for(model)
    profile = profile_engine(EngineSettings(**settings), architecture=architecture, hardware="cpu", scale=scale,
                             seed=seed)
    temporary = Path(path + ".tmp")
    profile.save(temporary)
    temporary.replace(path)
