"""Where samullm_lc caches what it builds or measures: one root, set by ``$SAMULLM_CACHE_DIR``.

Engine profiles live under ``<root>/profiles``, tiny models under ``<root>/tiny-models``; the root is
``~/.cache/samullm_lc`` unless ``SAMULLM_CACHE_DIR`` names another folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from samullm_lc.errors import ConfigError

CACHE_ENV_VAR = "SAMULLM_CACHE_DIR"
RETIRED_ENV_VAR = "SAMULLM_CACHE"
"""Read by the profile cache until both caches shared ``SAMULLM_CACHE_DIR``; refused, so no cache moves silently."""


def cache_dir(kind: str) -> Path:
    """The cache folder for ``kind`` (``profiles``, ``tiny-models``): ``$SAMULLM_CACHE_DIR/<kind>``, else
    ``~/.cache/samullm_lc/<kind>``. Not created here."""
    if os.environ.get(RETIRED_ENV_VAR):
        raise ConfigError(
            f"{RETIRED_ENV_VAR} is set but no longer read: every samullm_lc cache lives under {CACHE_ENV_VAR}; "
            f"rename the variable to {CACHE_ENV_VAR} (profiles then go to $SAMULLM_CACHE_DIR/profiles)"
        )
    root = os.environ.get(CACHE_ENV_VAR)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "samullm_lc"
    return base / kind


def build_cached_folder(target: Path, done_marker: str, write: Callable[[Path], None]) -> Path:
    """``target``, built by ``write`` into a staging folder beside it and renamed into place atomically.
    Concurrent builders are safe: the first rename wins, and a later one that finds ``done_marker`` in
    ``target`` discards its copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent))
    try:
        staging.chmod(0o755)
        write(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / done_marker).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
