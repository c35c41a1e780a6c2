"""The reference side of the drop-in's acceptance tests: the five pipelines on real ``vllm serve`` servers.

Greedy outputs of the reference must repeat exactly between runs, or no comparison with the drop-in can hold.
"""

import json
import os
import time

import pytest
from pipelines import PIPELINES, SERVER_ORDER, make_inputs
from reference_servers import pool_engine_settings, serve_flags

N_INPUTS = 8
pytestmark = pytest.mark.engine


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


@pytest.mark.parametrize("name", SERVER_ORDER)
def test_pipeline_repeats_exactly(name, reference_urls):
    pipeline = PIPELINES[name]
    chain = pipeline.build(reference_urls(list(pipeline.models)))
    inputs = make_inputs(N_INPUTS, seed=0)
    started = time.monotonic()
    first = chain.batch(inputs)
    first_s = time.monotonic() - started
    second = chain.batch(inputs)
    one_by_one = chain.batch(inputs, config={"max_concurrency": 1})
    total_s = time.monotonic() - started
    assert len(first) == len(second) == len(inputs)
    assert all(isinstance(out, str | dict) for out in first)
    assert first == second, f"{name}: two identical batches gave different greedy outputs"
    differing = [i for i, (a, b) in enumerate(zip(first, one_by_one, strict=True)) if a != b]
    record = {"pipeline": name, "first_batch_s": round(first_s, 2), "three_batches_s": round(total_s, 2),
              "distinct_outputs": len({json.dumps(out, sort_keys=True) for out in first}),
              "differ_concurrent_vs_sequential": differing}
    print(json.dumps(record))
    if os.environ.get("SAMULLM_REF_RECORD"):
        with open(os.environ["SAMULLM_REF_RECORD"], "a") as f:
            f.write(json.dumps({**record, "first": first, "sequential": one_by_one}) + "\n")
    # Outputs in input order: a batch answered one request at a time gives the same texts per input.
    assert not differing, f"{name}: inputs {differing} differ between concurrent and one-at-a-time batches"


@pytest.mark.xfail(strict=True, reason="the tiny models' dummy weights (uniform in +-1e-3, norms included) make the "
                   "greedy text depend on the last prompt token only, which the chat template fixes: every prompt "
                   "to a model gets the same answer, so comparisons cannot tell prompts apart")
def test_outputs_depend_on_the_input(reference_urls):
    """Without input-dependent outputs, a drop-in that answered the wrong request would still match. Runs on the
    pair of servers the last pipeline test left running (router and graph_loop share it)."""
    pipeline = PIPELINES["router"]
    outputs = pipeline.build(reference_urls(list(pipeline.models))).batch(make_inputs(N_INPUTS, seed=0))
    assert len(set(outputs)) > len(pipeline.models)
