"""Where samullm_lc caches what it builds or measures: one root, set by ``$SAMULLM_CACHE_DIR``.

Engine profiles live under ``<root>/profiles``, tiny models under ``<root>/tiny-models``; the root is
``~/.cache/samullm_lc`` unless ``SAMULLM_CACHE_DIR`` names another folder.
"""

from __future__ import annotations

import os
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
