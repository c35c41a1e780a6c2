"""The reference side of the drop-in's acceptance tests: servers configured as the pool's engines, inputs.

The servers themselves run in ``test_dropin_matches_servers.py``. Found while building them: with vLLM's dummy
weights (uniform in +-1e-3, norms included) a greedy answer depends only on the last prompt token, so every
prompt gets the same answer; the comparison therefore serves seeded random weights. Greedy outputs repeated
exactly run to run, and between batches of 1 and of 8-32 (0 differences over the five pipelines).
"""

from pipelines import make_inputs
from reference_servers import pool_engine_settings, serve_flags


def test_serve_flags_come_from_the_pool_settings():
    settings = pool_engine_settings("tiny-llama-s")
    flags = serve_flags(settings)
    assert settings.kv_cache_memory_bytes == 128 * 2**20 and settings.max_model_len == 2048
    for expected in (["--kv-cache-memory-bytes", str(128 * 2**20)], ["--max-model-len", "2048"],
                     ["--seed", "0"], ["--load-format", "dummy"], ["--dtype", "float32"]):
        i = flags.index(expected[0])
        assert flags[i:i + 2] == expected
    for flag in ("--no-enable-chunked-prefill", "--no-enable-prefix-caching", "--enforce-eager"):
        assert flag in flags


def test_make_inputs_is_deterministic_and_varied():
    inputs = make_inputs(20, seed=0)
    assert inputs == make_inputs(20, seed=0) and inputs != make_inputs(20, seed=1)
    lengths = sorted(len(x["text"]) for x in inputs)
    assert lengths[0] < 80 and lengths[-1] > 500
