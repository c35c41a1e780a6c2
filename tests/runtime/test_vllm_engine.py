"""The real CPU engine: step recording, and the simulator reproducing the engine's own schedule."""

import numpy as np
import pytest

from samullm_lc.costmodel.latency.linear import LinearLatencyModel
from samullm_lc.costmodel.simulator import simulate
from samullm_lc.errors import ConfigError, EngineError
from samullm_lc.profiling.profiler import Workload, run_workload
from samullm_lc.profiling.step_recorder import StepRecorder
from samullm_lc.runtime.vllm_engine import (
    EngineSettings,
    engine_settings_for,
    scheduler_config_of,
    shutdown_llm,
    start_llm,
)

pytestmark = pytest.mark.engine
ONE_SECOND_STEPS = LinearLatencyModel(intercept_seconds=1.0, coefficients={})


def _engine_steps(llm, workload):
    with StepRecorder(llm) as recorder:
        run = run_workload(llm, workload, seed=3, recorder=recorder)
    features, _ = recorder.feature_matrix()
    return features, run


def _simulated_steps(llm, workload):
    result = simulate(scheduler_config_of(llm), ONE_SECOND_STEPS, workload.input_tokens,
                      np.full(workload.input_tokens.size, workload.max_tokens), record_trace=True)
    repeat = result.trace["num_steps"].astype(int)
    return np.repeat(result.trace["prefill_tokens"], repeat), np.repeat(result.trace["decode_seqs"], repeat), result


def test_step_recorder_reads_prefill_and_decode_shapes(tiny_engine):
    features, run = _engine_steps(tiny_engine, Workload("4x10", np.full(4, 10), 5, True))
    assert run.output_tokens.tolist() == [5, 5, 5, 5]
    # Step 1 prefills 4 x 10 tokens; then 4 decode steps over contexts of 11, 12, 13, 14 tokens each.
    assert features[:, 0].tolist() == [40, 0, 0, 0, 0]
    assert features[:, 1].tolist() == [4, 0, 0, 0, 0]
    assert features[:, 2].tolist() == [0, 4, 4, 4, 4]
    assert features[:, 3].tolist() == [0, 44, 48, 52, 56]
    assert features[0, 4] == 4 * 10 * 11 / 2


def test_simulator_reproduces_the_engine_schedule_with_chunked_prefill(tiny_engine):
    limits = scheduler_config_of(tiny_engine)
    # More prompt tokens than one step's budget, more requests than fit in one step: chunking and queueing.
    prompts = np.random.default_rng(0).integers(100, 900, 3 * limits.max_num_batched_tokens // 400)
    workload = Workload("chunked", prompts, 12, True)
    features, _ = _engine_steps(tiny_engine, workload)
    prefill, decode, result = _simulated_steps(tiny_engine, workload)
    assert result.num_preemptions == 0
    assert features[:, 0].tolist() == prefill.tolist()
    assert features[:, 2].tolist() == decode.tolist()


def test_simulator_reproduces_the_engine_schedule_under_preemption():
    settings, _ = engine_settings_for("tiny-llama-s", kv_cache_memory_bytes=3 * 2**20, max_model_len=512)
    llm = start_llm(settings)
    try:
        limits = scheduler_config_of(llm)
        per_request = 64 + 192
        count = 2 * limits.kv_capacity_tokens // per_request  # twice what the KV cache holds at the end
        workload = Workload("overflow", np.full(count, 64), 192, True)
        features, run = _engine_steps(llm, workload)
        prefill, decode, result = _simulated_steps(llm, workload)
    finally:
        shutdown_llm(llm)
    assert result.num_preemptions > 0
    assert (run.output_tokens == 192).all()
    assert features[:, 0].tolist() == prefill.tolist()
    assert features[:, 2].tolist() == decode.tolist()


def test_cpu_engine_refuses_to_start_without_a_kv_cache_size():
    with pytest.raises(ConfigError, match="kv_cache_memory_bytes"):
        EngineSettings(model="anything").llm_kwargs()


def test_engine_start_failure_names_the_model(tmp_path):
    with pytest.raises(EngineError, match=str(tmp_path)):
        start_llm(EngineSettings(model=str(tmp_path), load_format="dummy", kv_cache_memory_bytes=2**24))
