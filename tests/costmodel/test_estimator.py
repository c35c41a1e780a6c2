"""CostModel.estimate: every size has a limit, checked before any memory is taken, with the reason."""

import numpy as np
import pytest

from samullm_lc.costmodel.estimator import CostModel
from samullm_lc.costmodel.latency.linear import LinearLatencyModel
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.costmodel.simulator import simulate
from samullm_lc.errors import ConfigError
from samullm_lc.limits import REQUESTS_PER_ESTIMATE, SIMULATED_STEPS, Limit


@pytest.fixture(scope="module")
def cost_model() -> CostModel:
    return CostModel("Llama-2-7b-hf", "A100-80GB")


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"num_requests": 10**9}, "requests in one estimate: 1,000,000,000 is over the limit of 1,000,000"),
    ({"num_requests": 10**30}, "over the limit of 1,000,000"),
    ({"num_requests": 3, "num_samples": 101}, "output-length samples of one estimate: 101 is over the limit of 100"),
    ({"num_requests": 3, "num_samples": 0}, "must be at least 1"),
    ({"num_requests": 3, "max_tokens": 10**20}, "max_tokens must be whole token counts"),
    ({"num_requests": 3, "max_tokens": 10**8}, "over the limit of 10,000,000"),
    ({"num_requests": 3, "input_tokens": 10**20}, "input_tokens must be whole token counts"),
])
def test_a_size_over_its_limit_is_a_config_error_naming_it_and_why(cost_model, kwargs, expected):
    arguments = {"input_tokens": 10, "max_tokens": 10, **kwargs}
    with pytest.raises(ConfigError, match=expected):
        cost_model.estimate(arguments.pop("input_tokens"), arguments.pop("max_tokens"), **arguments)


def test_a_request_array_over_the_limit_is_refused_too(cost_model):
    with pytest.raises(ConfigError, match="requests in one estimate"):
        cost_model.estimate(np.full(REQUESTS_PER_ESTIMATE.maximum + 1, 10), 10)


def test_the_limit_names_its_memory_reason():
    assert "bytes per request" in REQUESTS_PER_ESTIMATE.reason and "GB" in SIMULATED_STEPS.reason


def test_a_simulation_past_its_step_limit_stops_with_the_reason():
    # One request at a time (the KV cache holds one sequence), 40 output tokens each: 40 steps per request.
    config = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, block_size=16, num_kv_blocks=5,
                             max_model_len=64)
    latency = LinearLatencyModel(intercept_seconds=0.01, coefficients={})
    few_steps = Limit("engine steps of this test", 100, "the test's reason")
    assert simulate(config, latency, np.full(2, 10), np.full(2, 40), step_limit=few_steps).num_steps <= 100
    with pytest.raises(ConfigError, match="engine steps of this test: .* is over the limit of 100; the test's reason"):
        simulate(config, latency, np.full(10, 10), np.full(10, 40), step_limit=few_steps)
    assert simulate(config, latency, np.full(10, 10), np.full(10, 40)).finished  # no limit: unchanged


def test_an_estimate_near_the_request_limit_still_runs(cost_model):
    # A hundred thousand short requests: the limit leaves ordinary large sets alone (about 0.3 s).
    estimate = cost_model.estimate(1, 1, num_requests=100_000, num_samples=1)
    assert estimate.num_requests == 100_000 and estimate.seconds > 0
