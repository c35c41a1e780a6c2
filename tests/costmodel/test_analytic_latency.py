"""Tests of the analytic GPU latency model: accuracy on held-out A100 timings, physical sanity, API contract."""

from __future__ import annotations

import time

import numpy as np
import pytest

from samullm_lc.costmodel.latency.analytic import (
    AnalyticLatencyModel,
    default_calibration,
    expected_distinct_experts,
)
from samullm_lc.costmodel.latency.base import IterationLatencyModel, prefill_pairs
from samullm_lc.costmodel.latency.calibration import (
    HELD_OUT_MODELS,
    all_reduce_errors,
    layer_errors,
    load_all_reduce_profiles,
    load_operator_profiles,
    profiles_root,
    split,
)
from samullm_lc.costmodel.load import analytic_load_seconds
from samullm_lc.errors import ConfigError

needs_profiles = pytest.mark.skipif(
    not (profiles_root() / "compute" / "a100").is_dir(),
    reason=f"A100 operator profiles not found at {profiles_root()} (set SAMULLM_GPU_PROFILES)",
)


def _random_steps(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    prefill_tokens = rng.integers(0, 2048, n) * (rng.random(n) < 0.5)
    prefill_seqs = np.where(prefill_tokens > 0, rng.integers(1, 4, n), 0)
    decode_seqs = rng.integers(0, 256, n)
    decode_context = decode_seqs * rng.integers(1, 4000, n)
    pairs = prefill_pairs(prefill_tokens, rng.integers(0, 1000, n))
    return prefill_tokens, prefill_seqs, decode_seqs, decode_context, pairs


# ---- accuracy on real timings -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def parts():
    return split(load_operator_profiles())


@needs_profiles
@pytest.mark.parametrize("name", ["held_out_models", "held_out_tokens"])
def test_held_out_median_layer_error_within_10_percent(parts, name):
    errors = np.abs(layer_errors(parts[name], default_calibration()))
    assert len(errors) > 500
    assert np.median(errors) <= 0.10


@needs_profiles
def test_held_out_models_are_not_fitted(parts):
    cal = default_calibration()
    assert set(cal.held_out_models) == set(HELD_OUT_MODELS)
    assert not set(cal.fitted_models) & set(HELD_OUT_MODELS)
    assert set(np.unique(parts["held_out_models"].model)) == set(HELD_OUT_MODELS)


@needs_profiles
def test_all_reduce_median_error_on_large_messages():
    data = load_all_reduce_profiles()
    errors = np.abs(all_reduce_errors(data, default_calibration()))
    for topology in np.unique(data.topology):
        rows = (data.topology == topology) & (data.size_bytes >= 2**20)
        assert np.median(errors[rows]) <= 0.10, topology


# ---- physical sanity --------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "hardware", "tp"), [
    ("Llama-2-7b-hf", "A100-80GB", 1),
    ("Llama-2-70b-hf", "H100-80GB", 4),
    ("Mixtral-8x7B-Instruct-v0.1", "H200", 2),
    ("phi-2", "L40S", 1),
])
def test_more_tokens_never_faster(model, hardware, tp):
    m = AnalyticLatencyModel.create(model, hardware, tp=tp, topology="nvswitch" if hardware != "L40S" else "pcie")
    tokens = np.arange(1, 20000)
    prefill = m.step_seconds(tokens, 1, 0, 0, prefill_pairs(tokens, 0))
    assert np.all(np.diff(prefill) >= 0)
    decode = m.step_seconds(0, 0, tokens, tokens * 500, 0)
    assert np.all(np.diff(decode) >= 0)
    steps = _random_steps(2000)
    base = m.step_seconds(*steps)
    for i in range(5):
        more = list(steps)
        more[i] = more[i] + 7
        assert np.all(m.step_seconds(*more) >= base - 1e-15)


def test_tp2_faster_than_tp1_for_70b_at_1024_tokens():
    steps = (1024, 1, 0, 0, prefill_pairs(1024, 0))
    tp1 = AnalyticLatencyModel.create("Llama-2-70b-hf", "A100-80GB", tp=1).step_seconds(*steps)
    tp2 = AnalyticLatencyModel.create("Llama-2-70b-hf", "A100-80GB", tp=2).step_seconds(*steps)
    assert tp2 < tp1


@pytest.mark.parametrize("model", ["Llama-2-7b-hf", "Llama-2-70b-hf"])
def test_h100_faster_than_a100(model):
    tp = 1 if "7b" in model else 4
    steps = _random_steps(5000, seed=1)
    a100 = AnalyticLatencyModel.create(model, "A100-80GB", tp=tp).step_seconds(*steps)
    h100 = AnalyticLatencyModel.create(model, "H100-80GB", tp=tp).step_seconds(*steps)
    busy = steps[0] + steps[2] > 0
    assert np.all(h100[busy] < a100[busy])


def test_moe_reads_only_the_experts_touched():
    assert expected_distinct_experts(np.array([1.0]), 8, 2)[0] == pytest.approx(2.0)
    assert expected_distinct_experts(np.array([1000.0]), 8, 2)[0] == pytest.approx(8.0)
    m = AnalyticLatencyModel.create("Mixtral-8x7B-Instruct-v0.1", "H100-80GB", tp=2)
    one, many = m.step_seconds(0, 0, [1, 64], [100, 6400], 0)
    assert many > one * 1.5


# ---- API contract ------------------------------------------------------------------------------------


def test_implements_protocol_with_small_per_request_cost():
    m = AnalyticLatencyModel.create("Llama-2-7b-hf", "A100-80GB")
    assert isinstance(m, IterationLatencyModel)
    assert 0 < m.per_request_seconds < 0.01


@pytest.mark.parametrize("as_float", [False, True])
def test_vectorised_matches_scalar_calls(as_float):
    m = AnalyticLatencyModel.create("Llama-2-13b-hf", "H200", tp=2)
    steps = _random_steps(200, seed=2)
    if as_float:
        steps = tuple(np.asarray(s, dtype=np.float64) + 0.25 for s in steps)
    vector = m.step_seconds(*steps)
    scalar = [float(m.step_seconds(*(s[i] for s in steps))) for i in range(200)]
    np.testing.assert_allclose(vector, scalar, rtol=1e-12)


def test_arguments_broadcast():
    m = AnalyticLatencyModel.create("Llama-2-7b-hf", "A100-80GB")
    out = m.step_seconds(0, 0, np.array([1, 8, 32]), 1000, 0)
    assert out.shape == (3,)
    assert m.step_seconds(0, 0, 8, 8000, np.zeros((2, 3))).shape == (2, 3)
    assert m.step_seconds(0, 0, 0, 0, 0) == 0.0


def test_prices_100k_steps_quickly():
    m = AnalyticLatencyModel.create("Llama-2-70b-hf", "H100-80GB", tp=4)
    steps = _random_steps(100_000, seed=3)
    m.step_seconds(*steps)
    start = time.perf_counter()
    m.step_seconds(*steps)
    assert time.perf_counter() - start < 0.1


def test_negative_features_rejected():
    m = AnalyticLatencyModel.create("Llama-2-7b-hf", "A100-80GB")
    with pytest.raises(ValueError):
        m.step_seconds(-1, 0, 1, 10, 0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": "Llama-2-7b-hf", "hardware": "A100-80GB", "tp": 3}, "does not divide"),
    ({"model": "Llama-2-70b-hf", "hardware": "A100-80GB", "tp": 16}, "exceeds"),
    ({"model": "Llama-2-7b-hf", "hardware": "A100-80GB", "tp": 0}, "at least 1"),
    ({"model": "Llama-2-7b-hf", "hardware": "A100-80GB", "tp": 2, "topology": "infiniband"}, "unknown topology"),
    ({"model": "Llama-2-7b-hf", "hardware": "L40S", "tp": 2, "topology": "nvswitch"}, "no NVLink"),
    ({"model": "Llama-2-7b-hf", "hardware": "cpu"}, "not a GPU"),
])
def test_bad_plan_raises_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AnalyticLatencyModel.create(**kwargs)


# ---- load time ---------------------------------------------------------------------------------------


def test_load_time_matches_samullm_range():
    assert analytic_load_seconds("Llama-2-7b-hf", "A100-80GB", 1) == pytest.approx(11.0, rel=0.05)
    assert analytic_load_seconds("Llama-2-70b-hf", "A100-80GB", 4) == pytest.approx(62.0, rel=0.05)
    bigger = analytic_load_seconds("Llama-2-13b-hf", "A100-80GB", 1)
    assert bigger > analytic_load_seconds("Llama-2-7b-hf", "A100-80GB", 1)
