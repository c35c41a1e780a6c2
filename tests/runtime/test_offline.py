"""Nothing reaches the network: models resolve to local folders or fail clearly; engine processes run with
the hub offline and vLLM's usage statistics off, unless the user set those variables."""

import json
import os
import subprocess
import sys

import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.runtime.vllm_engine import OFFLINE_DEFAULTS, engine_settings_for, local_model_folder

_PIN = ("import os, json; from samullm_lc.runtime.backends.vllm_worker import pin_process; "
        "from samullm_lc.runtime.backends.worker_messages import Pinning; "
        "pin_process(Pinning(env={})); "
        "print(json.dumps({k: os.environ.get(k) for k in %r}))" % sorted(OFFLINE_DEFAULTS))


def _engine_process_env(**preset: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_DEFAULTS}
    env.update(preset)
    out = subprocess.run([sys.executable, "-c", _PIN], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_engine_processes_run_offline_without_usage_statistics_unless_the_user_says_otherwise():
    assert _engine_process_env() == OFFLINE_DEFAULTS
    assert _engine_process_env(HF_HUB_OFFLINE="0")["HF_HUB_OFFLINE"] == "0"  # the user's choice stands


@pytest.mark.parametrize("model", ["Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf", "/no/such/folder"])
def test_a_model_that_is_not_local_fails_with_how_to_get_it(model, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="never downloads models.*huggingface-cli download"):
        engine_settings_for(model)


def test_a_hub_id_in_the_local_cache_resolves_to_its_folder(monkeypatch, tmp_path):
    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert local_model_folder("acme/tiny") == str(snapshot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert local_model_folder("acme/elsewhere") == "acme/elsewhere"  # the user allowed downloads
