"""vLLM v1 scheduling behaviours of the simulator, on small cases computed by hand."""

import copy

import numpy as np
import pytest

from samullm_lc.costmodel.latency.linear import LinearLatencyModel
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.costmodel.simulator import ContinuousBatchingSimulator, simulate
from samullm_lc.errors import ConfigError, SamullmError

# One second per step plus 0.1 s per prefill token: step times are easy to add up by hand.
STEP = LinearLatencyModel(intercept_seconds=1.0, coefficients={"prefill_tokens": 0.1})


def config(**overrides):
    values = {"num_kv_blocks": 1000, "block_size": 16, "max_model_len": 512, "max_num_seqs": 256,
              "max_num_batched_tokens": 512}
    values.update(overrides)
    return SchedulerConfig(**values)


def test_token_budget_chunks_a_prefill_and_admits_the_next_request():
    # Budget 8: step 1 = r0 (5) + first 3 tokens of r1; step 2 = r1's last 2 + r2 (5).
    result = simulate(config(max_num_batched_tokens=8, max_model_len=8), STEP, [5, 5, 5], [1, 1, 1], record_trace=True)
    assert result.trace["prefill_tokens"].tolist() == [8, 7]
    assert result.finish_seconds == pytest.approx([1.8, 3.5, 3.5])
    assert result.total_seconds == pytest.approx(3.5)


def test_without_chunked_prefill_a_prompt_that_does_not_fit_the_budget_waits():
    cfg = config(max_num_batched_tokens=8, max_model_len=8, enable_chunked_prefill=False)
    result = simulate(cfg, STEP, [5, 5], [1, 1], record_trace=True)
    assert result.trace["prefill_tokens"].tolist() == [5, 5]
    assert result.num_steps == 2


def test_decode_steps_follow_prefill_and_first_token_comes_with_prefill():
    result = simulate(config(), STEP, [10], [3], record_trace=True)
    assert result.num_steps == 3
    assert result.first_token_seconds[0] == pytest.approx(2.0)
    assert result.total_seconds == pytest.approx(4.0)
    assert result.output_tokens.tolist() == [3]


def test_preemption_by_recompute_when_blocks_run_out():
    # 4 usable blocks of 2 tokens (vLLM keeps a 5th as its null block); two requests of prompt 2 and
    # output 4 each need 3 blocks at the end.
    # Steps 1-3 run both; at step 4 r0 needs a third block, r1 (the tail) is preempted, r0 finishes;
    # step 5 recomputes r1's 5 tokens (prompt + 3 generated) and samples its last token.
    cfg = config(num_kv_blocks=5, block_size=2, max_model_len=8, max_num_batched_tokens=8)
    result = simulate(cfg, STEP, [2, 2], [4, 4], record_trace=True)
    assert result.num_preemptions == 1
    per_step = np.repeat(result.trace["prefill_tokens"], result.trace["num_steps"].astype(int))
    assert per_step.tolist() == [4, 0, 0, 0, 5]
    assert result.finish_seconds == pytest.approx([4.4, 5.9])
    assert result.output_tokens.tolist() == [4, 4]


def test_max_num_seqs_bounds_the_running_batch():
    result = simulate(config(max_num_seqs=1), STEP, [4, 4], [2, 2])
    # r0: prefill (1.4) + decode (1); then r1 the same.
    assert result.finish_seconds == pytest.approx([2.4, 4.8])


def test_requests_arriving_later_start_when_they_arrive():
    result = simulate(config(), STEP, [4, 4], [2, 2], arrival_seconds=[0.0, 10.0])
    assert result.finish_seconds == pytest.approx([2.4, 12.4])


def test_a_request_arriving_mid_run_joins_the_running_batch():
    result = simulate(config(), STEP, [4, 4], [5, 2], arrival_seconds=[0.0, 2.0], record_trace=True)
    # r0: prefill ends 1.4, decode ends 2.4 (r1 not yet visible at 1.4); r1 is admitted at 2.4.
    assert result.trace["start_seconds"][2] == pytest.approx(2.4)
    assert result.trace["prefill_tokens"][2] == 4
    assert result.finish_seconds[1] == pytest.approx(2.4 + 1.4 + 1.0)


def test_per_request_admission_cost_is_charged_on_arrival():
    latency = LinearLatencyModel(intercept_seconds=1.0, coefficients={}, per_request_seconds=0.5)
    result = simulate(config(), latency, [4, 4], [1, 1])
    assert result.total_seconds == pytest.approx(2.0)


def test_a_request_after_another_arrives_when_it_finishes():
    # r0: prefill (1.4) + decode (1) ends 2.4; r1 reads r0's output, so it starts then and ends 4.8.
    chained = simulate(config(), STEP, [4, 4], [2, 2], after=[[], [0]])
    assert chained.finish_seconds == pytest.approx([2.4, 4.8])
    # Waiting for a request that has already finished: it arrives at that finish, or its own arrival if later.
    sim = ContinuousBatchingSimulator(config(), STEP)
    sim.add_requests([4], [2])
    sim.run()
    sim.add_requests([4, 4], [2, 2], [0.0, 6.0], after=[[0], [0]])
    assert sim.run().finish_seconds == pytest.approx([2.4, 4.8, 8.4])


def test_requests_waiting_for_others_run_as_if_they_arrived_when_the_last_finished():
    # 40 roots, then three levels in which request k waits for request k - 40; the last level also waits for
    # a request of the first (a join). Own arrivals spread over 5 s are floors that the waiting ones keep.
    latency = LinearLatencyModel(
        intercept_seconds=0.01,
        coefficients={"prefill_tokens": 1e-4, "decode_seqs": 1e-3, "decode_context_tokens": 1e-6},
        per_request_seconds=0.002,
    )
    cfg = config(num_kv_blocks=300, max_model_len=1024, max_num_seqs=16, max_num_batched_tokens=256)
    n = 40
    inputs, outputs, arrivals = _random_workload(11, 4 * n)
    arrivals = arrivals / 6
    after = [[] for _ in range(n)] + [[k - n] for k in range(n, 3 * n)]
    after += [[k - n, k - 2 * n + 1] for k in range(3 * n, 4 * n)]
    chained = simulate(cfg, latency, inputs, outputs, arrivals, after=after)
    assert chained.finished
    due = [max([arrivals[k], *chained.finish_seconds[after[k]]]) for k in range(4 * n)]
    assert any(due[k] == arrivals[k] for k in range(n, 4 * n)) and any(due[k] > arrivals[k] for k in range(n, 4 * n))
    fixed = simulate(cfg, latency, inputs, outputs, due)
    assert fixed.num_steps == chained.num_steps
    np.testing.assert_allclose(chained.finish_seconds, fixed.finish_seconds, rtol=1e-12)
    np.testing.assert_allclose(chained.first_token_seconds, fixed.first_token_seconds, rtol=1e-12)


def test_sequences_stop_at_max_model_len():
    result = simulate(config(max_model_len=16), STEP, [10], [100])
    assert result.output_tokens.tolist() == [6]


# Plain stepping in the general form: the reference the decode mode and its stretches must agree with.
NO_FAST_FORWARD = {"fast_forward": False}


def _random_workload(seed, n=300):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 400, n), rng.geometric(1 / 60, n).clip(1, 300), np.sort(rng.uniform(0, 30, n))


@pytest.mark.parametrize("num_kv_blocks", [60, 400, 5000])
def test_fast_forward_gives_the_same_schedule_as_stepping(num_kv_blocks):
    latency = LinearLatencyModel(
        intercept_seconds=0.01,
        coefficients={"prefill_tokens": 1e-4, "decode_seqs": 1e-3, "decode_context_tokens": 1e-6,
                      "prefill_attention_pairs": 1e-8},
    )
    cfg = config(num_kv_blocks=num_kv_blocks, block_size=16, max_model_len=1024, max_num_seqs=32,
                 max_num_batched_tokens=256)
    inputs, outputs, arrivals = _random_workload(num_kv_blocks)
    results = []
    for options in ({}, NO_FAST_FORWARD):
        sim = ContinuousBatchingSimulator(cfg, latency, **options)
        sim.add_requests(inputs, outputs, arrivals)
        results.append(sim.run())
    fast, slow = results
    assert fast.num_steps == slow.num_steps
    assert fast.num_preemptions == slow.num_preemptions
    np.testing.assert_allclose(fast.finish_seconds, slow.finish_seconds, rtol=1e-9)
    assert (fast.output_tokens == np.minimum(outputs, 1024 - inputs)).all()


def test_run_until_then_resume_matches_one_run():
    latency = LinearLatencyModel(intercept_seconds=0.01, coefficients={"decode_seqs": 1e-3, "prefill_tokens": 1e-4})
    cfg = config(num_kv_blocks=200, max_model_len=1024, max_num_seqs=16, max_num_batched_tokens=256)
    inputs, outputs, arrivals = _random_workload(7)
    whole = simulate(cfg, latency, inputs, outputs, arrivals)
    sim = ContinuousBatchingSimulator(cfg, latency)
    sim.add_requests(inputs, outputs, arrivals)
    cut = whole.total_seconds / 3
    partial = sim.run(until=cut)
    assert not partial.finished
    assert cut - 0.5 < partial.now_seconds <= cut
    finished_by_cut = whole.finish_seconds <= cut
    assert (~np.isnan(partial.finish_seconds) == finished_by_cut).all()
    resumed = sim.run()
    np.testing.assert_allclose(resumed.finish_seconds, whole.finish_seconds, rtol=1e-9)


def test_bad_requests_get_clear_errors():
    with pytest.raises(ConfigError, match="max_model_len"):
        simulate(config(max_model_len=16), STEP, [16], [1])
    with pytest.raises(ConfigError, match="KV blocks"):
        simulate(config(num_kv_blocks=2, block_size=4, max_model_len=64), STEP, [10], [10])
    with pytest.raises(ConfigError, match="at least 1"):
        simulate(config(), STEP, [0], [3])
    with pytest.raises(ConfigError, match="earlier requests"):
        simulate(config(), STEP, [4, 4], [1, 1], after=[[1], []])


def _check_kv_blocks(sim):
    """The KV-block accounting after every step or stretch, in either representation: the free blocks the
    scheduler counts plus the blocks recounted from the running requests are all the usable blocks."""
    assert 0 <= sim.free_kv_blocks == sim.config.usable_kv_blocks - sim.held_kv_blocks


CHECKED = {"on_advance": _check_kv_blocks}
CHECKED_NO_FAST_FORWARD = {**CHECKED, **NO_FAST_FORWARD}


@pytest.mark.parametrize("seed", range(8))
def test_random_workloads_agree_with_plain_stepping_and_keep_invariants(seed):
    rng = np.random.default_rng(100 + seed)
    n, block_size, max_model_len = 120, int(rng.choice([1, 4, 16])), 512
    inputs = rng.integers(1, 300, n)
    inputs[rng.random(n) < 0.1] = 1
    outputs = rng.geometric(1 / rng.choice([5, 40]), n).clip(1, 400)
    longest = int(np.minimum(inputs + outputs, max_model_len).max())
    chunked = bool(seed % 4)
    cfg = config(
        num_kv_blocks=-(-longest // block_size) * int(rng.choice([1, 3, 50])) + 1, block_size=block_size,
        max_model_len=max_model_len, max_num_seqs=int(rng.choice([2, 16, 64])),
        max_num_batched_tokens=int(rng.choice([64, 512])) if chunked else 512, enable_chunked_prefill=chunked,
        long_prefill_token_threshold=int(rng.choice([0, 0, 50])), watermark=float(rng.choice([0.0, 0.05])),
    )
    latency = LinearLatencyModel(
        intercept_seconds=0.01, coefficients={"prefill_tokens": 1e-4, "decode_seqs": 1e-3, "decode_context_tokens": 1e-6}
    )
    arrivals = np.sort(rng.uniform(0, 20, n)) if seed % 2 else None
    results = []
    for options in (CHECKED, CHECKED_NO_FAST_FORWARD):
        sim = ContinuousBatchingSimulator(cfg, latency, **options)
        sim.add_requests(inputs, outputs, arrivals)
        partial = sim.run(until=5.0)
        assert partial.now_seconds <= 5.0
        results.append(sim.run())
    fast, slow = results
    assert fast.finished and fast.num_steps == slow.num_steps and fast.num_preemptions == slow.num_preemptions
    np.testing.assert_allclose(fast.finish_seconds, slow.finish_seconds, rtol=1e-9)
    np.testing.assert_allclose(fast.first_token_seconds, slow.first_token_seconds, rtol=1e-9)
    assert (fast.output_tokens == np.minimum(outputs, max_model_len - inputs)).all()
    start = np.zeros(n) if arrivals is None else arrivals
    assert (start <= fast.first_token_seconds).all() and (fast.first_token_seconds <= fast.finish_seconds).all()


@pytest.mark.parametrize("seed", range(4))
def test_requests_waiting_for_others_agree_with_plain_stepping_however_the_run_is_cut(seed):
    # Random waits (one or two earlier requests each) on a small engine with chunked prefill: decode mode and
    # plain stepping agree, in one run, resumed after an exact stop, or after a stop priced in batches.
    rng = np.random.default_rng(200 + seed)
    n = 90
    inputs, outputs = rng.integers(1, 300, n), rng.geometric(1 / 40, n).clip(1, 300)
    arrivals = np.sort(rng.uniform(0, 3, n))
    after = [sorted({int(rng.integers(0, k)) for _ in range(int(rng.integers(1, 3)))}) if k >= 30 else []
             for k in range(n)]
    cfg = config(num_kv_blocks=120, max_model_len=512, max_num_seqs=16, max_num_batched_tokens=128)
    latency = LinearLatencyModel(
        intercept_seconds=0.01, coefficients={"prefill_tokens": 1e-4, "decode_seqs": 1e-3, "decode_context_tokens": 1e-6},
        per_request_seconds=0.002,
    )
    results = []
    for options, cut in ((CHECKED, {}), (CHECKED_NO_FAST_FORWARD, {"until": 4.0}),
                         (CHECKED, {"until": 4.0, "overshoot_ok": True})):
        sim = ContinuousBatchingSimulator(cfg, latency, **options)
        sim.add_requests(inputs, outputs, arrivals, after=after)
        if cut:
            sim.run(**cut)
        results.append(sim.run())
    for other in results[1:]:
        assert other.finished and other.num_steps == results[0].num_steps
        np.testing.assert_allclose(other.finish_seconds, results[0].finish_seconds, rtol=1e-9)
        np.testing.assert_allclose(other.first_token_seconds, results[0].first_token_seconds, rtol=1e-9)
    done = results[0].finish_seconds
    assert all(results[0].first_token_seconds[k] > done[p] for k in range(n) for p in after[k])


def test_a_request_due_during_an_admission_does_not_stop_the_run():
    # r1 arrives at 1.0 but cannot get blocks while r0 runs; r2 arrives at 1.02, during r1's 0.05 s admission,
    # so it is already due when the next decode stretch is planned: the run goes on and ends as plain stepping.
    latency = LinearLatencyModel(intercept_seconds=0.01, coefficients={}, per_request_seconds=0.05)
    cfg = config(num_kv_blocks=25)
    args = ([100, 250, 10], [200, 10, 5], [0.0, 1.0, 1.02])
    fast = simulate(cfg, latency, *args)
    slow = ContinuousBatchingSimulator(cfg, latency, **NO_FAST_FORWARD)
    slow.add_requests(*args)
    slow = slow.run()
    assert fast.finished and fast.num_steps == slow.num_steps
    np.testing.assert_allclose(fast.finish_seconds, slow.finish_seconds, rtol=1e-9)


@pytest.mark.parametrize("overshoot_ok", [False, True])
def test_a_deep_copy_taken_mid_run_continues_on_its_own(overshoot_ok):
    # The planner forks replays with copy.deepcopy: the copy shares no mutable state with the original, and
    # both finish exactly like an uncopied run, even when one of them is given more requests first.
    rng = np.random.default_rng(11)
    n = 120
    inputs, outputs = rng.integers(1, 300, n), rng.geometric(1 / 40, n).clip(1, 300)
    arrivals = np.sort(rng.uniform(0, 3, n))
    after = [[int(rng.integers(0, k))] if k >= 40 else [] for k in range(n)]
    cfg = config(num_kv_blocks=120, max_model_len=512, max_num_seqs=16, max_num_batched_tokens=128)
    latency = LinearLatencyModel(intercept_seconds=0.01, coefficients={"prefill_tokens": 1e-4, "decode_seqs": 1e-3})
    reference = ContinuousBatchingSimulator(cfg, latency)
    reference.add_requests(inputs, outputs, arrivals, after=after)
    expected = reference.run()

    sim = ContinuousBatchingSimulator(cfg, latency)
    sim.add_requests(inputs, outputs, arrivals, after=after)
    sim.run(until=2.4, overshoot_ok=overshoot_ok)
    assert sim.in_decode_mode  # copied in decode mode, the state with the most containers
    clone = copy.deepcopy(sim)
    shared = [name for name, value in vars(sim).items()
              if name not in ("config", "latency", "on_advance") and not isinstance(value, (int, float, bool, tuple))
              and value is getattr(clone, name)]
    assert shared == []
    sim.add_requests([50], [20], [expected.total_seconds])  # only the original gets this one
    extended, copied = sim.run(), clone.run()
    np.testing.assert_allclose(copied.finish_seconds, expected.finish_seconds, rtol=1e-9)
    np.testing.assert_allclose(extended.finish_seconds[:n], expected.finish_seconds, rtol=1e-9)
    assert extended.finish_seconds.size == n + 1 and copied.finish_seconds.size == n


@pytest.mark.parametrize("seed", range(3))
def test_forgetting_finished_requests_mid_run_changes_nothing_that_follows(seed):
    # A stream served finish by finish (as the pool's simulated engines do): forgetting the finished prefix
    # whenever there is one must leave every later finish exactly where an untouched run puts it, with waits,
    # preemption (a small KV cache) and requests arriving while others decode.
    rng = np.random.default_rng(300 + seed)
    n = 150
    inputs, outputs = rng.integers(1, 200, n), rng.geometric(1 / 30, n).clip(1, 250)
    arrivals = np.sort(rng.uniform(0, 4, n))
    after = [[int(rng.integers(k - 10, k))] if k >= 60 and k % 3 == 0 else [] for k in range(n)]
    cfg = config(num_kv_blocks=60, max_model_len=512, max_num_seqs=16, max_num_batched_tokens=128)
    latency = LinearLatencyModel(intercept_seconds=0.01, coefficients={"prefill_tokens": 1e-4, "decode_seqs": 1e-3})
    reference = ContinuousBatchingSimulator(cfg, latency)
    reference.add_requests(inputs, outputs, arrivals, after=after)
    expected = reference.run()
    assert expected.num_preemptions > 0

    sim = ContinuousBatchingSimulator(cfg, latency)
    sim.add_requests(inputs, outputs, arrivals, after=after)
    forgotten, finish = 0, np.full(n, np.nan)
    while True:
        result = sim.run(stop_at_first_finish=True)
        done = ~np.isnan(result.finish_seconds)
        finish[forgotten:][done] = result.finish_seconds[done]
        prefix = int(done.size if done.all() else done.argmin())
        sim.forget(prefix)
        forgotten += prefix
        if result.finished:
            break
    assert forgotten == n
    np.testing.assert_allclose(finish, expected.finish_seconds, rtol=1e-9)
    with pytest.raises(SamullmError, match="only finished"):
        fresh = ContinuousBatchingSimulator(cfg, latency)
        fresh.add_requests([10], [5])
        fresh.forget(1)
