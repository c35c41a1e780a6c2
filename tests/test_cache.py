"""One cache root for everything samullm_lc caches: $SAMULLM_CACHE_DIR, else ~/.cache/samullm_lc."""

from pathlib import Path

import pytest

from samullm_lc.cache import cache_dir
from samullm_lc.errors import ConfigError
from samullm_lc.profiling.pool_profiles import default_cache_dir as profiles_dir
from samullm_lc.tinymodels.build import default_cache_dir as tiny_models_dir


def test_profiles_and_tiny_models_share_the_root_samullm_cache_dir_sets(monkeypatch, tmp_path):
    monkeypatch.delenv("SAMULLM_CACHE", raising=False)
    monkeypatch.setenv("SAMULLM_CACHE_DIR", str(tmp_path))
    assert profiles_dir() == tmp_path / "profiles" == cache_dir("profiles")
    assert tiny_models_dir() == tmp_path / "tiny-models"
    monkeypatch.delenv("SAMULLM_CACHE_DIR")
    assert profiles_dir() == Path.home() / ".cache" / "samullm_lc" / "profiles"
    assert tiny_models_dir() == Path.home() / ".cache" / "samullm_lc" / "tiny-models"


def test_the_retired_variable_is_refused_rather_than_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMULLM_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="SAMULLM_CACHE is set but no longer read.*SAMULLM_CACHE_DIR"):
        profiles_dir()
