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
import sys
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

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
from samullm_lc.runtime.engine_logs import EngineLog, redirect_output
from samullm_lc.runtime.pool import default_engine_settings
from samullm_lc.runtime.vllm_engine import EngineSettings, engine_settings_for

DEFAULT_SCALE = 0.5
STOP_SECONDS = 10.0
"""How long a profiling process stopped early gets to exit."""
PROFILE_FORMAT = 2
"""Part of the cache key: profiles of format 1 counted importing vLLM in the load time."""


def default_cache_dir() -> Path:
    """``$SAMULLM_CACHE_DIR/profiles``, else ``~/.cache/samullm_lc/profiles`` (``samullm_lc/cache.py``)."""
    return cache.cache_dir("profiles")


def profiles_for(cluster: Cluster, models: list[str], *, backend: str = "vllm",
                 engine_log: EngineLog | None = None) -> dict[str, EngineProfile]:
    """The measured profiles a planner needs on ``cluster``: each model's one-core profile on a ``cpu`` cluster
    (the CPU engine's speed is measured, not modelled); none on GPUs or on the ``sim`` backend."""
    if cluster.spec.kind != "cpu" or backend == "sim" or not models:
        return {}
    return pool_profiles(models, engine_log=engine_log)


def pool_profiles(models: list[str], *, cache_dir: str | Path | None = None, scale: float = DEFAULT_SCALE,
                  seed: int = 0, engine_log: EngineLog | None = None) -> dict[str, EngineProfile]:
    """The one-core CPU profile of each model: read from the cache, or measured there first.

    The missing ones are measured side by side, one process per core of this process, largest model first (a
    pool runs its CPU engines so too, one per core, beside each other). Their engines write to ``engine_log``,
    opened here (a new file, its path printed) when none is given and something is to be measured.
    """
    import vllm

    exit_if_reimported_main()
    folder = Path(cache_dir or default_cache_dir())
    settings = {model: _pool_settings(model) for model in dict.fromkeys(models)}
    paths = {model: _cached_path(model, folder, settings[model], scale, seed, vllm.__version__) for model in settings}
    missing = [model for model, path in paths.items() if not path.exists()]
    if missing:
        engine_log = engine_log or EngineLog.open()
        print(f"measuring the one-core engine profile of {', '.join(missing)} (once, then cached)", file=sys.stderr,
              flush=True)
        _measure_side_by_side(missing, settings, paths, scale, seed, engine_log)
    return {model: EngineProfile.load(paths[model]) for model in models}


def pool_profile(model: str, *, cache_dir: str | Path | None = None, scale: float = DEFAULT_SCALE,
                 seed: int = 0, engine_log: EngineLog | None = None) -> EngineProfile:
    """The profile of ``model`` on one CPU core with the pool's engine settings (see ``pool_profiles``)."""
    return pool_profiles([model], cache_dir=cache_dir, scale=scale, seed=seed, engine_log=engine_log)[model]


def _pool_settings(model: str) -> EngineSettings:
    """The engine settings the pool gives ``model`` on one CPU core."""
    return default_engine_settings(Cluster.parse("1xcpu"))(EngineSpec(engine_id=0, model=model, devices=(0,)))


def _cached_path(model: str, folder: Path, settings: EngineSettings, scale: float, seed: int,
                 vllm_version: str) -> Path:
    """Where ``model``'s profile is cached: keyed by its files, the pool's engine settings, the grid and vLLM."""
    key_source = json.dumps([settings.model_dump(), _files_digest(Path(settings.model)), scale, seed,
                             vllm_version, PROFILE_FORMAT], sort_keys=True, default=str)
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    return folder / f"{Path(model).name}-{key}.profile.json"


def _measure_side_by_side(models: list[str], settings: dict[str, EngineSettings], paths: dict[str, Path],
                          scale: float, seed: int, engine_log: EngineLog) -> None:
    """Measure ``models``, each in a fresh process on a core of its own, as many at once as there are cores, the
    largest first so the slowest does not start last; ``ProfileError`` if one fails. A process still measuring
    when this ends otherwise (an error, Ctrl-C) is stopped, so none is left writing beside the next attempt."""
    context = mp.get_context("spawn")
    waiting = sorted(models, key=lambda model: -engine_settings_for(model)[1].num_params)
    free_cores = sorted(os.sched_getaffinity(0))
    running: dict[int, tuple[Any, str, int]] = {}  # process sentinel -> (process, model, core)
    failed: list[str] = []
    log_path = str(engine_log.path) if engine_log.path is not None else None
    try:
        while waiting or running:
            while waiting and free_cores:
                model, core = waiting.pop(0), free_cores.pop(0)
                paths[model].parent.mkdir(parents=True, exist_ok=True)
                process = context.Process(target=_measure, name=f"samullm-profile-{Path(model).name}", args=(
                    model, settings[model].model_dump(), scale, seed, str(paths[model]), core, log_path))
                process.start()
                running[process.sentinel] = (process, model, core)
            for sentinel in wait(list(running)):
                process, model, core = running.pop(sentinel)
                process.join()
                free_cores.append(core)
                if process.exitcode == REIMPORTED_MAIN_EXIT_CODE:
                    raise ProfileError(f"profiling {model} failed: {REIMPORTED_MAIN_ADVICE}")
                if process.exitcode != 0 or not paths[model].exists():
                    failed.append(f"{model} (exit code {process.exitcode})")
    finally:
        for process, _, _ in running.values():
            process.terminate()
            process.join(STOP_SECONDS)
    if failed:
        raise ProfileError(f"profiling {', '.join(failed)} on one CPU core failed; the engine's error is in "
                           f"{engine_log.where}")


def _files_digest(folder: Path) -> str:
    """Digest of a model folder's config files (a regenerated tiny model with other shapes re-profiles)."""
    if not folder.is_dir():
        return str(folder)
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.json")):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def _measure(model: str, settings: dict, scale: float, seed: int, path: str, core: int, log_path: str | None) -> None:
    """In a fresh process pinned to one core: profile the engine and write the profile."""
    redirect_output(log_path)
    pin_process(cpu_pinning([core]))
    from samullm_lc.profiling.profiler import profile_engine

    _, architecture = engine_settings_for(model)
    profile = profile_engine(EngineSettings(**settings), architecture=architecture, hardware="cpu", scale=scale,
                             seed=seed)
    temporary = Path(path + ".tmp")
    profile.save(temporary)
    temporary.replace(path)
