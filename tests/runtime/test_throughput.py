"""Output tokens over time: bins that stay few however long the run, and add up to every token counted."""

import numpy as np
import pytest

from samullm_lc.runtime.app_runner import AppRun
from samullm_lc.runtime.pool import EnginePool
from samullm_lc.runtime.throughput import INITIAL_BIN_SECONDS, MAX_BINS, TokenTimeline
from tests.runtime.apps import ensemble_app


def test_tokens_land_in_the_bin_of_their_finish_time():
    timeline = TokenTimeline()
    timeline.add(0.05, 3)
    timeline.add(0.25, 4)
    timeline.add(0.29, 1)
    assert timeline.bin_seconds == INITIAL_BIN_SECONDS and timeline.output_tokens == [3, 0, 5]
    assert timeline.tokens_per_second() == [pytest.approx(point) for point in [(0.0, 30.0), (0.1, 0.0), (0.2, 50.0)]]


def test_a_long_run_of_many_requests_stays_bounded_and_keeps_every_token():
    rng = np.random.default_rng(0)
    finishes = np.sort(rng.uniform(0, 36_000, 100_000))  # ten hours, 100,000 requests
    tokens = rng.integers(1, 512, finishes.size)
    timeline = TokenTimeline()
    for at, count in zip(finishes.tolist(), tokens.tolist()):
        timeline.add(at, count)
    assert MAX_BINS // 2 <= len(timeline.output_tokens) <= MAX_BINS
    assert timeline.total_tokens == int(tokens.sum())
    assert timeline.bin_seconds * len(timeline.output_tokens) >= finishes[-1]
    assert len(timeline.model_dump_json()) < 5_000


def test_a_first_finish_far_out_widens_before_it_allocates():
    timeline = TokenTimeline()
    timeline.add(1e7, 5)
    assert len(timeline.output_tokens) <= MAX_BINS and timeline.total_tokens == 5


def test_coarsened_copies_line_up_on_one_width():
    short, long = TokenTimeline(), TokenTimeline()
    short.add(1.0, 2)
    for second in range(200):
        long.add(second, 1)
    common = max(short.bin_seconds, long.bin_seconds, 10.0)
    a, b = short.coarsened(common), long.coarsened(common)
    assert a.bin_seconds == b.bin_seconds >= 10.0
    assert (a.total_tokens, b.total_tokens) == (2, 200) and short.bin_seconds == INITIAL_BIN_SECONDS


def test_a_pool_run_fills_each_models_series_with_its_output_tokens():
    app = ensemble_app(200, ["Llama-2-7b-hf", "Mistral-7B-Instruct-v0.2"], "Llama-2-13b-hf")
    with EnginePool(app, "4xA100-80GB", backend="sim", progress=False) as pool:
        AppRun(pool, app, token_ids=np.arange(100, 200)).start().wait(120)
        assert pool.join(60)
    report = pool.report()
    for record in report.models:
        series = record.output_tokens_over_time
        assert series.total_tokens == record.output_tokens > 0
        assert len(series.output_tokens) <= MAX_BINS
        last_bin = len(series.output_tokens) - 1
        assert last_bin * series.bin_seconds <= record.last_finish_seconds < (last_bin + 1) * series.bin_seconds
