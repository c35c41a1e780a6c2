"""Tests of samullm_lc.costmodel.lengths: censoring-aware estimators, sampling, clipping, the ShareGPT table."""

import time

import numpy as np
import pytest

from samullm_lc.costmodel.lengths import OutputLengthDistribution as Dist
from samullm_lc.errors import ConfigError


def test_kaplan_meier_hand_computed_censored_case():
    # natural stops at 2, 4, 4; cut (censored) at 3 and 5, i.e. true lengths >= 3 and >= 5.
    # l=2: at risk 5 (all), 1 stop -> h=1/5, P(2)=0.2, S=0.8
    # l=3: at risk 3 (4, 4, cut@5; cut@3 says nothing from 3 on), 0 stops
    # l=4: at risk 3, 2 stops -> h=2/3, P(4)=0.8*2/3, survival left 0.8/3 from length 5 on
    # tail hazard = stops / at-risk over lengths 2..4 = 3 / (5 + 3 + 3)
    d = Dist.from_samples([2, 4, 4, 3, 5], censored=[False, False, False, True, True])
    assert d.values == [2, 4, 5]
    assert d.probabilities == pytest.approx([0.2, 0.8 * 2 / 3, 0.8 / 3])
    assert d.tail_hazard == pytest.approx(3 / 11)
    expected_mean = 2 * 0.2 + 4 * 0.8 * 2 / 3 + 0.8 / 3 * (5 + (1 - 3 / 11) / (3 / 11))
    assert d.mean() == pytest.approx(expected_mean)
    assert d.mean(max_tokens=4) == pytest.approx(2 * 0.2 + 4 * 0.8)


def test_uncensored_samples_give_the_empirical_histogram():
    d = Dist.from_samples([3, 1, 3, 7])
    assert d.values == [1, 3, 7]
    assert d.probabilities == pytest.approx([0.25, 0.5, 0.25])
    assert d.tail_hazard == 0.0
    assert d.mean() == pytest.approx(3.5)


def test_censored_samples_do_not_pull_the_mean_down():
    rng = np.random.default_rng(1)
    truth = Dist.sharegpt()
    true_lengths = truth.sample(20_000, rng)
    limits = rng.integers(20, 1200, size=true_lengths.size)  # each request has its own max_tokens
    observed = np.minimum(true_lengths, limits)
    censored = true_lengths >= limits
    assert censored.mean() > 0.2
    naive = observed.mean()
    estimate = Dist.from_samples(observed, censored).mean()
    true_mean = true_lengths.mean()
    assert naive < 0.9 * true_mean
    assert abs(estimate - true_mean) / true_mean < 0.05


def test_censoring_beyond_the_last_stop_gets_a_geometric_tail():
    rng = np.random.default_rng(2)
    true_lengths = rng.geometric(0.01, size=50_000)  # P(L = l) = 0.01 * 0.99**(l-1), mean 100
    observed = np.minimum(true_lengths, 150)
    d = Dist.from_samples(observed, observed >= 150)
    assert d.tail_hazard == pytest.approx(0.01, rel=0.15)
    assert d.mean() == pytest.approx(100, rel=0.05)
    assert Dist.from_samples(observed).mean() < 80


def test_all_censored_needs_a_prior():
    with pytest.raises(ConfigError, match="censored"):
        Dist.from_samples([10, 20], censored=[True, True])
    prior = Dist.fixed(5)
    refined = prior.refined([10, 20], censored=[True, True])
    assert refined.quantile(0.0) >= 5
    assert refined.mean() > prior.mean()


def test_refined_converges_toward_the_observed_distribution():
    rng = np.random.default_rng(3)
    prior = Dist.sharegpt()
    observed = rng.integers(50, 151, size=20_000)
    target = observed.mean()
    few = prior.refined(observed[:5])
    many = prior.refined(observed, prior_weight=50.0)
    assert abs(few.mean() - prior.mean()) < abs(few.mean() - target)
    assert many.mean() == pytest.approx(target, rel=0.02)
    assert many.quantile(0.5) == pytest.approx(np.median(observed), abs=2)
    assert prior.refined([]) is prior
    assert prior.refined(observed, prior_weight=0.0).mean() == pytest.approx(target)


def test_sample_of_fixed():
    d = Dist.fixed(42)
    out = d.sample(1000, np.random.default_rng(0))
    assert out.dtype == np.int64
    assert out.shape == (1000,)
    assert np.all(out == 42)
    assert d.mean() == 42.0 and d.mean(max_tokens=10) == 10.0
    assert d.quantile(0.5) == 42


def test_clipping_by_max_tokens():
    d = Dist.sharegpt()
    rng = np.random.default_rng(4)
    out = d.sample(10_000, rng, max_tokens=100)
    assert out.max() == 100 and out.min() >= 1
    caps = rng.integers(1, 300, size=10_000)
    out = d.sample(10_000, rng, max_tokens=caps)
    assert np.all(out <= caps)
    assert np.mean(d.sample(200_000, rng, max_tokens=256)) == pytest.approx(d.mean(max_tokens=256), rel=0.01)


def test_clipping_by_max_model_len_minus_input():
    d = Dist.fixed(1000)
    inputs = np.array([10, 500, 4000, 4095])
    out = d.sample(4, np.random.default_rng(5), input_lengths=inputs, max_model_len=4096, max_tokens=800)
    assert out.tolist() == [800, 800, 96, 1]
    with pytest.raises(ConfigError, match=r"input_lengths\[1\].*max_model_len"):
        d.sample(2, np.random.default_rng(5), input_lengths=[10, 4096], max_model_len=4096)


def test_tail_sampling_matches_mean_and_quantile():
    d = Dist(values=[10, 20], probabilities=[0.5, 0.5], tail_hazard=0.05)
    out = d.sample(400_000, np.random.default_rng(6))
    assert out.mean() == pytest.approx(d.mean(), rel=0.01)
    assert d.mean() == pytest.approx(0.5 * 10 + 0.5 * (20 + 0.95 / 0.05))
    assert d.mean(max_tokens=30) == pytest.approx(np.minimum(out, 30).mean(), rel=0.01)
    assert d.quantile(0.99) == 96  # 0.5 + 0.5 * (1 - 0.95 ** (j + 1)) >= 0.99 first at j = 76
    for q in (0.25, 0.6, 0.9, 0.99):
        assert d.quantile(q) == pytest.approx(np.quantile(out, q, method="inverted_cdf"), abs=1)


def test_sampling_is_fast():
    d = Dist.sharegpt()
    rng = np.random.default_rng(7)
    d.sample(1000, rng, max_tokens=512)
    best = min(_timed(lambda: d.sample(100_000, rng, max_tokens=512)) for _ in range(3))
    assert best < 0.05


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_json_round_trip():
    d = Dist.from_samples([2, 4, 4, 3, 5], censored=[0, 0, 0, 1, 1], source="unit test")
    again = Dist.model_validate_json(d.model_dump_json())
    assert again == d
    share = Dist.sharegpt()
    assert Dist.model_validate_json(share.model_dump_json()) == share


def test_sharegpt_table_is_plausible():
    out = Dist.sharegpt()
    assert out is Dist.sharegpt()
    assert 100 < out.mean() < 600
    assert out.quantile(0.5) < out.quantile(0.9) < out.quantile(0.999)
    assert "tokens" in out.source
    prompts = Dist.sharegpt_input_lengths()
    assert 100 < prompts.mean() < 600
    assert prompts.values != out.values


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: Dist.from_samples([5, -3, 7]), r"negative length \(-3 at index 1\)"),
        (lambda: Dist.from_samples([5, 6], censored=[True]), "'censored' has 1 flags but 'lengths' has 2"),
        (lambda: Dist.from_samples([]), "'lengths' is empty"),
        (lambda: Dist(values=[1, 2], probabilities=[0.5, 0.4]), "sum to 0.9, not 1"),
        (lambda: Dist(values=[1, 2], probabilities=[1.0]), "'values' has 2 entries but 'probabilities' has 1"),
        (lambda: Dist(values=[0, 2], probabilities=[0.5, 0.5]), "'values' must be >= 1 token"),
        (lambda: Dist.model_validate_json('{"values":[3,2],"probabilities":[0.5,0.5]}'), "strictly ascending"),
        (lambda: Dist.fixed(0), r"fixed\(length=0\)"),
        (lambda: Dist.fixed(3).sample(2, np.random.default_rng(), max_tokens=[1, 2, 3]), "'max_tokens' has shape"),
    ],
)
def test_bad_input_errors_name_the_problem(call, words):
    with pytest.raises(ConfigError, match=words):
        call()


def test_tiny_float_error_is_normalised():
    d = Dist(values=[1, 2, 3], probabilities=[0.1, 0.2, 0.7000001])
    assert sum(d.probabilities) == pytest.approx(1.0, abs=1e-12)
