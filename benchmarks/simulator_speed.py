"""Speed of the continuous-batching simulator on ShareGPT-shaped request sets.

Simulates 1,000 / 10,000 / 100,000 requests (prompts and outputs sampled from the shipped ShareGPT tables,
prompts clipped to 2048 tokens, outputs to ``max_tokens=2048`` and the context window) on one engine shaped
like Llama-2-7B on an 80 GB A100: 256 sequences, 8192 tokens per step, 16-token blocks, the KV blocks left
after the weights in 90% of the memory. Each set is priced by a linear latency model and, when
``samullm_lc.costmodel.latency.analytic`` imports, by the analytic A100 model. All requests arrive at once
(an offline batch); a second table times the clocked path (Poisson arrivals) on 10,000 requests.

Reports the median of ``--repeats`` runs of wall and CPU (``time.process_time``) seconds, steps and
preemptions, prints a markdown report and writes ``docs/results/simulator-speed.md``. With
``--baseline REV`` it also times the simulator of git revision ``REV`` on the same sets and checks that
both give the same steps, preemptions and finish times.

Run: ``/work/main/.venv/bin/python benchmarks/simulator_speed.py [--baseline REV]``
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import common
import numpy as np

from samullm_lc.costmodel import simulator
from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.latency.linear import LinearLatencyModel
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.scheduler_config import SchedulerConfig

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "results" / "simulator-speed.md"
SIZES = (1_000, 10_000, 100_000)
MAX_PROMPT = 2048
MAX_TOKENS = 2048
MAX_MODEL_LEN = 4096
KV_BYTES_PER_TOKEN = 524_288  # Llama-2-7B, fp16: 2 (K, V) * 32 layers * 4096 * 2 bytes
WEIGHT_BYTES = 13.5e9
GPU_BYTES = 80e9
GPU_MEMORY_UTILIZATION = 0.9
ARRIVALS_PER_SECOND = 20.0  # of the clocked-path table, about the engine's throughput on these requests
GOALS = {10_000: 1.0, 100_000: 10.0}  # CPU seconds the issue asks for, linear latency model

# Roughly Llama-2-7B on an A100: 6 ms per step, 0.1 ms per prefill token, KV-cache reads at ~2 TB/s.
LINEAR = LinearLatencyModel(
    intercept_seconds=6e-3,
    coefficients={
        "prefill_tokens": 1e-4,
        "decode_seqs": 5e-5,
        "decode_context_tokens": 2.6e-7,
        "prefill_attention_pairs": 2.6e-9,
    },
)


def engine_config() -> SchedulerConfig:
    """vLLM defaults for Llama-2-7B on one 80 GB A100."""
    block_size = 16
    num_blocks = int((GPU_BYTES * GPU_MEMORY_UTILIZATION - WEIGHT_BYTES) // (block_size * KV_BYTES_PER_TOKEN))
    return SchedulerConfig(
        max_num_seqs=256, max_num_batched_tokens=8192, block_size=block_size, num_kv_blocks=num_blocks,
        max_model_len=MAX_MODEL_LEN,
    )


def sharegpt_workload(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths (tokens) of ``n`` ShareGPT-like requests."""
    rng = np.random.default_rng(seed)
    prompts = OutputLengthDistribution.sharegpt_input_lengths().sample(n, rng, max_tokens=MAX_PROMPT)
    outputs = OutputLengthDistribution.sharegpt().sample(
        n, rng, max_tokens=MAX_TOKENS, input_lengths=prompts, max_model_len=MAX_MODEL_LEN
    )
    return prompts, outputs


def latency_models() -> tuple[list[tuple[str, IterationLatencyModel]], str]:
    """The latency models to time, and a note on the analytic one if it could not be built."""
    models: list[tuple[str, IterationLatencyModel]] = [("linear", LINEAR)]
    try:
        from samullm_lc.costmodel.latency.analytic import AnalyticLatencyModel

        models.append(("analytic A100", AnalyticLatencyModel.create("Llama-2-7b-hf", "A100-80GB", tp=1)))
        note = ""
    except Exception as exc:  # the analytic model is optional here: report why it is missing
        note = f"The analytic model was not timed: {type(exc).__name__}: {exc}"
    return models, note


def load_baseline(revision: str) -> ModuleType:
    """The simulator as it is at git ``revision`` (one module until issue 13, a package since), imported from a
    copy of that revision's ``samullm_lc`` while this one's modules are set aside, then put back."""
    archive = subprocess.run(["git", "archive", revision, "samullm_lc"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    folder = tempfile.mkdtemp()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    ours = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "samullm_lc"}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, folder)
    try:
        return importlib.import_module("samullm_lc.costmodel.simulator")
    finally:
        sys.path.remove(folder)
        for name in [name for name in sys.modules if name.split(".")[0] == "samullm_lc"]:
            del sys.modules[name]
        sys.modules.update(ours)


def time_runs(run: Callable[[], simulator.SimulationResult], repeats: int) -> dict:
    """Median wall and CPU seconds of ``repeats`` runs, with the last run's result."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "result": result}


def simulation(module: ModuleType, config: SchedulerConfig, latency: IterationLatencyModel, prompts: np.ndarray,
               outputs: np.ndarray, arrivals: np.ndarray | None) -> Callable[[], simulator.SimulationResult]:
    """A closure running one whole simulation with ``module``'s simulator."""
    return lambda: module.simulate(config, latency, prompts, outputs, arrivals)


def check_same(new: simulator.SimulationResult, old: simulator.SimulationResult, what: str) -> None:
    """Fail loudly if the baseline schedules differently."""
    same = (new.num_steps == old.num_steps and new.num_preemptions == old.num_preemptions
            and np.allclose(new.finish_seconds, old.finish_seconds, rtol=1e-9, atol=0, equal_nan=True))
    if not same:
        raise SystemExit(f"{what}: the baseline gives a different schedule")


def measure(config: SchedulerConfig, models: list[tuple[str, IterationLatencyModel]], sizes: tuple[int, ...],
            repeats: int, baseline: ModuleType | None, clocked: bool) -> list[dict]:
    """Time every (model, size); with ``clocked`` the requests arrive as a Poisson process."""
    rows = []
    for name, latency in models:
        for n in sizes:
            prompts, outputs = sharegpt_workload(n)
            arrivals = None
            if clocked:
                arrivals = np.cumsum(np.random.default_rng(1).exponential(1 / ARRIVALS_PER_SECOND, n))
            row = {"model": name, "n": n, **time_runs(simulation(simulator, config, latency, prompts, outputs,
                                                                 arrivals), repeats)}
            if baseline is not None:
                old = time_runs(simulation(baseline, config, latency, prompts, outputs, arrivals), repeats)
                row["baseline_cpu"], row["baseline_wall"] = old["cpu"], old["wall"]
                if row["result"].finished and not old["result"].finished:  # the stall fixed with the speed-up
                    row["baseline_stopped"] = old["result"].num_steps
                else:
                    check_same(row["result"], old["result"], f"{name}, {n} requests")
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    """One markdown table row."""
    result = row["result"]
    cells = [row["model"], f"{row['n']:,}", f"{result.num_steps:,}", f"{result.num_preemptions:,}",
             f"{result.total_seconds:,.0f}", f"{row['wall']:.3f}", f"{row['cpu']:.3f}"]
    if "baseline_stopped" in row:
        cells += [f"({row['baseline_cpu']:.3f}: stopped after {row['baseline_stopped']:,} steps)", "n/a"]
    elif "baseline_cpu" in row:
        cells += [f"{row['baseline_cpu']:.3f}", f"{row['baseline_cpu'] / row['cpu']:.1f}x"]
    return "| " + " | ".join(cells) + " |"


def table(rows: list[dict]) -> list[str]:
    """A markdown table of timed runs."""
    header = ["latency model", "requests", "steps", "preemptions", "simulated s", "wall s", "CPU s"]
    if rows and "baseline_cpu" in rows[0]:
        header += ["baseline CPU s", "speed-up (CPU)"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return lines + [format_row(row) for row in rows]


def machine() -> str:
    """The machine line, with numpy's version (other jobs were running)."""
    return common.machine(f"numpy {np.__version__}") + " (other jobs were running)"


def report(offline: list[dict], clocked: list[dict], config: SchedulerConfig, note: str, args: argparse.Namespace,
           host: str) -> str:
    """The markdown report."""
    command = "/work/main/.venv/bin/python benchmarks/simulator_speed.py"
    if args.baseline:
        command += f" --baseline {args.baseline}"
    lines = [
        "# Continuous-batching simulator: speed",
        "",
        f"Generated by `{command}` (median of {args.repeats} runs; CPU time is `time.process_time()`).",
        "",
        f"- Machine: {host}.",
        f"- Engine: `max_num_seqs={config.max_num_seqs}`, `max_num_batched_tokens={config.max_num_batched_tokens}`, "
        f"`block_size={config.block_size}`, `num_kv_blocks={config.num_kv_blocks}` (Llama-2-7B on an 80 GB A100: "
        f"(80 GB * {GPU_MEMORY_UTILIZATION} - 13.5 GB of weights) / (16 tokens * 512 KiB)), "
        f"`max_model_len={config.max_model_len}`.",
        f"- Requests: prompt lengths from ShareGPT (clipped to {MAX_PROMPT} tokens), output lengths from ShareGPT "
        f"(`max_tokens={MAX_TOKENS}`, clipped to the context window), seed 0.",
        "- Latency models: `linear` is a `LinearLatencyModel` (6 ms per step, 0.1 ms per prefill token, "
        "0.05 ms per decode sequence, 0.26 us per decode-context token, 2.6 ns per prefill attention pair); "
        "`analytic A100` is `AnalyticLatencyModel.create(\"Llama-2-7b-hf\", \"A100-80GB\", tp=1)`.",
    ]
    if args.baseline:
        lines.append(f"- Baseline: the simulator at git revision `{args.baseline}`, timed on the same sets; it gives "
                     "the same steps, preemptions and finish times (checked), except where it stopped early: "
                     "a request arriving during another's admission cost (`per_request_seconds`) ended its run "
                     "before every request had finished.")
    if note:
        lines.append(f"- {note}")
    lines += [
        "",
        "Where the time goes: in steady state about one request finishes per step, so almost every step admits "
        "a request. While every running request decodes, the simulator keeps them as `computed - step` "
        "offsets (a heap of finishing steps, counts of offsets modulo the block size for KV blocks) and "
        "schedules each step on Python scalars instead of numpy reductions over the running batch; when "
        "nothing depends on the clock (no arrivals still to come, no `until`), steps are priced all at once "
        "at the end.",
    ]
    lines += ["", "## Offline batch: every request arrives at time 0", "",
              "Nothing in the schedule depends on the clock, so steps are priced in one vectorised call at the end.",
              "", *table(offline)]
    goal_lines = []
    for row in offline:
        if row["model"] == "linear" and row["n"] in GOALS:
            goal, cpu = GOALS[row["n"]], row["cpu"]
            goal_lines.append(f"- {row['n']:,} requests in < {goal:g} s: {'met' if cpu < goal else 'NOT met'} "
                              f"({cpu:.2f} s CPU).")
    if goal_lines:
        lines += ["", "Goals of the issue (linear model, CPU time):", "", *goal_lines]
    lines += ["", f"## Clocked path: Poisson arrivals at {ARRIVALS_PER_SECOND:g} requests/s", "",
              "Each step is priced as it is scheduled (as with `run(until=...)`), one latency-model call per step "
              "or decode stretch.", "", *table(clocked), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git revision whose simulator to time on the same sets")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    host = machine()
    config = engine_config()
    models, note = latency_models()
    if note:
        print(note)
    baseline = load_baseline(args.baseline) if args.baseline else None
    offline = measure(config, models, tuple(args.sizes), args.repeats, baseline, clocked=False)
    clocked = measure(config, models, (10_000,), args.repeats, baseline, clocked=True)
    text = report(offline, clocked, config, note, args, host)
    print(text)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    print(f"wrote {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
