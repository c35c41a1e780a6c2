"""`samullm profile` on the real CPU engine: a small grid, a usable fit, a profile that round-trips."""

import numpy as np
import pytest

from samullm_lc.costmodel.estimator import CostModel
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.profiling.profiler import profile_engine, profiling_grid
from samullm_lc.runtime.vllm_engine import engine_settings_for

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def small_profile():
    settings, architecture = engine_settings_for("tiny-llama-s", kv_cache_memory_bytes=64 * 2**20, max_model_len=1024)
    return profile_engine(settings, architecture=architecture, scale=0.15)


def test_profile_fits_the_measured_steps(small_profile):
    fit = small_profile.fit
    assert fit.num_steps > 50
    assert fit.r2 > 0  # better than the mean step; the level depends on how quiet the machine is
    assert abs(fit.total_relative_error) < 0.05
    latency = small_profile.latency
    assert latency.intercept_seconds > 0
    budget = small_profile.scheduler.max_num_batched_tokens
    full_prefill = float(latency.step_seconds(budget, 4, 0, 0, 4 * (budget / 4) ** 2 / 2))
    one_decode = float(latency.step_seconds(0, 0, 1, 100, 0))
    assert full_prefill > 3 * one_decode  # prompt tokens cost time (whichever prefill term carries it)


def test_profile_records_the_engine_and_the_output_lengths(small_profile):
    assert small_profile.scheduler.max_model_len == 1024
    assert small_profile.scheduler.block_size == 128  # the CPU backend's block size
    assert small_profile.load_seconds > 0
    lengths = small_profile.output_lengths
    assert lengths is not None and 10 < lengths.mean() < 2000


def test_profile_round_trips_through_json_and_predicts(small_profile, tmp_path):
    path = small_profile.save(tmp_path / "p.json")
    loaded = EngineProfile.load(path)
    assert loaded == small_profile
    estimate = CostModel("tiny-llama-s", "cpu", profile=loaded).estimate(np.full(64, 100), 64, fixed_output_tokens=64)
    assert estimate.latency_source == "profile"
    assert estimate.seconds > 0


def test_grid_stays_within_the_engine_limits():
    limits = SchedulerConfig(num_kv_blocks=100, block_size=128, max_model_len=1024, max_num_seqs=64,
                             max_num_batched_tokens=2048)
    grid = profiling_grid(limits, scale=1.0)
    for workload in grid:
        assert workload.input_tokens.max() + workload.max_tokens <= 1024
    decode = [w for w in grid if w.name.startswith("decode-")]
    assert all(w.input_tokens.size <= limits.max_num_seqs for w in decode)
    # every decode batch size is measured at two contexts, so their costs can be told apart
    sizes = [w.input_tokens.size for w in decode]
    assert all(sizes.count(size) == 2 for size in sizes if size > 1)
