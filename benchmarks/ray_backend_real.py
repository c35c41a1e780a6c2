"""What running the engine pool on Ray costs against the process backend, on the real vLLM CPU engine on this machine.

Two variants serve the same requests, interleaved round by round (local first in each round):

- **local**: ``EnginePool(None, "2xcpu", models=MODELS, backend="vllm")``: each engine in a worker process of this
  machine, pinned to its core.
- **ray**: ``EnginePool(None, "2x1xcpu", models=MODELS, backend="ray")`` on a ``ray.cluster_utils.Cluster`` of a
  head without devices (``num_cpus=0``) and two nodes of one core each (80 MiB object store each), started once
  for the whole benchmark (its start is timed apart); each engine in an ``EngineHost`` actor in a placement group
  on its node. This process is connected to that cluster for the whole benchmark, so its daemons idle beside the
  local variant too (their CPU time is reported per run).

The simulated nodes are processes of this machine: both variants use the same two cores, one engine per core,
and Ray's messages never cross a network.

Workload: N requests (default 256) alternating tiny-llama-s and tiny-llama-m, text prompts as
``tests/runtime/test_ray_pool.py``'s (``request i: tell me about item 7i``), greedy (temperature 0), 32 tokens each
(``ignore_eos``), all submitted at once right after the pool is created. The pool plans from the requests as they
arrive, with the one-core profiles of ``pool_profiles(MODELS, scale=0.2)`` (measured once, or read from the cache,
before the first run).

Per run: end-to-end seconds from the pool's creation (its constructor included) to the last result; each engine's
load seconds (``ready_seconds - started_seconds`` of ``pool.report().engines``: process or actor start, vLLM import
and model load); the first result's latency (from the pool's creation); each model's generate phase (its engine
ready to its last result, on the pool's clock); the pool's close (not in end to end); whether every text equals the
first local run's (greedy decoding: they should). From the medians: the per-request overhead estimate
``(ray end to end - local end to end) / N``.

The pool plans as soon as its driver takes the first requests in; when that is before the submitting thread has
handed over a request of each model, the first plan runs tiny-llama-s on both cores and tiny-llama-m after it, a
different (slower) schedule. Such a run is made again, so that both variants are compared on the same schedule
(both models at once, one per core), and listed on the page.

Other jobs share this machine. Before each run the benchmark waits (up to a minute) until ``/tmp/samullm_quiet``
is gone and processes outside its own process tree (which holds the Ray cluster and the engines of both variants)
leave the cores idle; it reports the CPU time those processes took during each run and makes a disturbed run
again. At most three attempts per variant and round, and none begun after ten minutes, so that the run holds the
engine lock for about that long at most. With ``--priority`` (root) it runs at nice -10 instead, its session's
autogroup too (``raise_priority``): other jobs' niced work then gets only the cycles the engines leave, and runs
neither wait for idle cores nor are made again for it.

Writes ``docs/results/ray-backend-real.md`` and ``docs/results/ray-backend-real.json``.
Run: ``flock /tmp/samullm-engine.lock /work/main/.venv/bin/python benchmarks/ray_backend_real.py [--requests 256]
[--rounds 3] [--priority]`` (about 3 min at the defaults on idle cores, plus waits and runs made again).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import common
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
REPORT = RESULTS / "ray-backend-real.md"
RAW = RESULTS / "ray-backend-real.json"
MODELS = ["tiny-llama-s", "tiny-llama-m"]
PROFILE_SCALE = 0.2
OBJECT_STORE_BYTES = 80 * 2**20
MAX_TOKENS = 32
GREEDY = {"max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
TIMEOUT_SECONDS = 900.0
VARIANTS = {  # name -> (devices, backend)
    "local": ("2xcpu", "vllm"),
    "ray": ("2x1xcpu", "ray"),
}
IDLE_WAIT_SECONDS = 60.0  # at most this long for the cores to become idle before a run (then measured anyway)
MAX_ATTEMPTS = 3  # runs of a variant in one round, at most (see ``measure``); the last one counts
RAY_WORKER_TITLES = ("ray::IDLE", "ray::EngineHost")  # process titles of Ray's workers (its agents are daemons)
PRIORITY_NICE = -10  # ``--priority``: the benchmark's nice value (weight ~9500 against a nice-10 job's ~110)
BUDGET_MINUTES = 10.0  # no run is made again, nor waited for, after this long (the engine lock's share)


def prompts(n: int) -> list[tuple[str, str]]:
    """(model, prompt) of request i: the models alternate; the prompt is the Ray pool test's."""
    return [(MODELS[i % 2], f"request {i}: tell me about item {i * 7}") for i in range(n)]


# ---- CPU time: this benchmark's process tree against the rest of the machine ----------------------------------
class TreeCpu:
    """CPU seconds of this process and of every process below it, sampled every ``SAMPLE_SECONDS`` in a thread.

    The Ray cluster's daemons (GCS, raylets) and workers are descendants of this process, as are the local
    variant's engine processes. A process that ends takes its CPU time with it (Ray's workers are not reaped into
    their parent's children times), so each process's last sample is kept: at most ``SAMPLE_SECONDS`` of an
    ended process's time is missed. Ray's daemons are the descendants whose command names Ray and is not a
    worker's (``RAY_WORKER_TITLES``, or ``default_worker.py`` before a worker sets its title).
    """

    SAMPLE_SECONDS = 0.5

    def __init__(self) -> None:
        self._last: dict[tuple[int, float], tuple[float, bool]] = {}  # (pid, start time) -> (CPU s, is a daemon)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-cpu", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        """Read every descendant's CPU time now."""
        seen = {}
        for process in psutil.Process().children(recursive=True):
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    command = " ".join(process.cmdline())
                    key = (process.pid, process.create_time())
            except psutil.Error:  # ended meanwhile: its last sample stands
                continue
            worker = command.startswith(RAY_WORKER_TITLES) or "default_worker.py" in command
            daemon = "ray" in command and not worker
            seen[key] = (times.user + times.system, daemon)
        with self._lock:
            self._last.update(seen)

    def seconds(self) -> tuple[float, float]:
        """(CPU seconds of the whole tree so far, of Ray's daemons alone), sampled now."""
        self.sample()
        own = resource.getrusage(resource.RUSAGE_SELF)
        with self._lock:
            tree = sum(cpu for cpu, _ in self._last.values())
            daemons = sum(cpu for cpu, daemon in self._last.values() if daemon)
        return own.ru_utime + own.ru_stime + tree, daemons

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def foreign_cores(tree: TreeCpu, seconds: float) -> float:
    """Cores that processes outside this benchmark's tree used over the next ``seconds``."""
    busy, (ours, _) = common.busy_cpu_seconds(), tree.seconds()
    time.sleep(seconds)
    return ((common.busy_cpu_seconds() - busy) - (tree.seconds()[0] - ours)) / seconds


def wait_until_idle(tree: TreeCpu, max_wait: float) -> float:
    """Wait while another job asks for quiet, then (up to ``max_wait`` seconds) until other processes leave the
    cores idle; the cores they used at the last check."""
    deadline = time.monotonic() + max_wait
    while True:
        if common.QUIET_FLAG.exists() and time.monotonic() < deadline:
            time.sleep(10.0)
            continue
        used = foreign_cores(tree, common.IDLE_SAMPLE_SECONDS)
        if used <= common.IDLE_CORES or time.monotonic() > deadline:
            if used > common.IDLE_CORES:
                print(f"   other processes still use {used:.1f} cores; measuring anyway", flush=True)
            return used
        print(f"   other processes use {used:.1f} cores; waiting", flush=True)
        time.sleep(5.0)


# ---- one run ---------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One variant's run."""

    variant: str
    round: int
    seconds: float  # pool creation to the last result
    first_result_seconds: float  # pool creation to the first result
    close_seconds: float  # leaving the pool's ``with`` block after the last result (not in ``seconds``)
    engines: list[dict] = field(default_factory=list)  # model, devices, load seconds, requests done
    generate_seconds: dict[str, float] = field(default_factory=dict)  # per model: engine ready to its last result
    replans: int = 0
    decisions: list[str] = field(default_factory=list)  # each planning decision: when, why, the stage it started
    first_stage: list[str] = field(default_factory=list)  # the engines the first plan started
    failed: int = 0
    output_tokens: int = 0
    texts: list[str] = field(default_factory=list)
    foreign_cpu_seconds: float = 0.0  # CPU time processes outside this benchmark took during the run
    ray_daemon_cpu_seconds: float = 0.0  # CPU time Ray's daemons took during the run
    attempt: int = 1  # the round's attempt at this variant
    flaws: list[str] = field(default_factory=list)  # why it was (or would have been) made again

    @property
    def load_seconds(self) -> list[float]:
        """Load seconds of the engines that became ready (one stopped while loading has none)."""
        return [e["load_seconds"] for e in self.engines if e["load_seconds"] is not None]


def run_variant(variant: str, requests: list[tuple[str, str]], profiles: dict) -> Run:
    """The requests through a fresh pool of ``variant``, timed from its creation to the last result."""
    from samullm_lc.runtime.pool import EnginePool

    devices, backend = VARIANTS[variant]
    done_at: list[float] = []
    lock = threading.Lock()

    def record(_future) -> None:
        now = time.perf_counter()
        with lock:
            done_at.append(now)

    started = time.perf_counter()
    with EnginePool(None, devices, models=MODELS, backend=backend, profiles=profiles, progress=False) as pool:
        futures = [pool.submit(model, prompt, sampling=GREEDY) for model, prompt in requests]
        for future in futures:
            future.add_done_callback(record)
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(TIMEOUT_SECONDS))
            except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
                outcomes.append(exc)
        last = time.perf_counter()
    closed = time.perf_counter()
    report = pool.report()
    with lock:
        first = min(done_at)
    ready_by_model = {}
    engines = []
    for engine in sorted(report.engines, key=lambda e: e.started_seconds):
        load = (engine.ready_seconds - engine.started_seconds) if engine.ready_seconds is not None else None
        engines.append({"model": engine.model, "devices": engine.devices, "load_seconds": load,
                        "started_seconds": engine.started_seconds, "stopped_seconds": engine.stopped_seconds,
                        "requests_done": engine.requests_done})
        if engine.ready_seconds is not None:
            ready_by_model.setdefault(engine.model, engine.ready_seconds)
    generate = {m.model: m.last_finish_seconds - ready_by_model[m.model] for m in report.models
                if m.last_finish_seconds is not None and m.model in ready_by_model}
    results = [o for o in outcomes if not isinstance(o, Exception)]
    return Run(variant=variant, round=0, seconds=last - started, first_result_seconds=first - started,
               close_seconds=closed - last, engines=engines, generate_seconds=generate, replans=len(report.replans),
               decisions=[f"{r.at_seconds:.2f} s: {r.reason} -> {'; '.join(r.stage) or 'nothing'}"
                          for r in report.replans],
               first_stage=list(report.replans[0].stage) if report.replans else [],
               failed=len(outcomes) - len(results), output_tokens=sum(r.output_tokens for r in results),
               texts=[o.text if not isinstance(o, Exception) else f"<failed: {o}>" for o in outcomes])


def first_plan_sees_both(run: Run) -> bool:
    """Whether the run's first plan started engines for both models (else it planned on the first requests
    alone: see ``measure``)."""
    return bool(run.decisions) and all(model in run.decisions[0] for model in MODELS)


def measure(variant: str, round_: int, requests: list[tuple[str, str]], profiles: dict, tree: TreeCpu,
            deadline: float, *, shared: bool) -> list[Run]:
    """Runs of ``variant``, each once the machine is idle, with the CPU time others and Ray's daemons took meanwhile;
    the last one counts.

    A run is made again (up to ``MAX_ATTEMPTS`` in all, none begun after ``deadline`` on the monotonic clock) when
    other processes disturbed it, or when its first plan did not start both models: the pool plans as soon as its
    driver takes the first requests in, and when that is before the submitting thread has handed over a request
    of each model, the first plan runs one model on both cores and the other after it, a different schedule from
    the one the other variant's runs are compared on. With ``shared`` off (``--priority``: other jobs get only the
    cycles the engines leave) it neither waits for idle cores nor counts other processes' CPU time as a flaw.
    """
    made: list[Run] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        if shared:
            wait_until_idle(tree, max(0.0, min(IDLE_WAIT_SECONDS, deadline - time.monotonic())))
        label = f"{variant}, round {round_}"
        print(f"-- {label} ...", flush=True)
        started, busy, (ours, daemons) = time.perf_counter(), common.busy_cpu_seconds(), tree.seconds()
        run = run_variant(variant, requests, profiles)
        elapsed = time.perf_counter() - started
        ours_after, daemons_after = tree.seconds()
        run.foreign_cpu_seconds = max(0.0, (common.busy_cpu_seconds() - busy) - (ours_after - ours))
        run.ray_daemon_cpu_seconds = daemons_after - daemons
        run.round, run.attempt = round_, attempt
        if shared and run.foreign_cpu_seconds > common.DISTURBED_SHARE * len(os.sched_getaffinity(0)) * elapsed:
            run.flaws.append("disturbed")
        if not all(any(entry.startswith(f"{model} ") for entry in run.first_stage) for model in MODELS):
            run.flaws.append("first plan on one model")
        made.append(run)
        print(f"-- {label}: {run.seconds:.1f} s to the last result (first {run.first_result_seconds:.1f} s, loads "
              f"{', '.join(f'{x:.1f}' for x in run.load_seconds)} s, close {run.close_seconds:.1f} s, "
              f"{run.failed} failed); other processes {run.foreign_cpu_seconds:.1f} CPU s, Ray daemons "
              f"{run.ray_daemon_cpu_seconds:.1f} CPU s; {run.replans} planning decisions", flush=True)
        for line in [*(f"engine {e}" for e in run.engines), *(f"plan {d}" for d in run.decisions)]:
            print(f"   {line}", flush=True)
        if not run.flaws or attempt == MAX_ATTEMPTS or time.monotonic() > deadline:
            return made
        print(f"   {' and '.join(run.flaws)}: running it again", flush=True)
    return made


# ---- the Ray cluster -------------------------------------------------------------------------------------------
def start_ray_cluster():
    """A Ray head without devices and two nodes of one core each on this machine, this process connected to it
    (as ``tests/runtime/test_ray_pool.py`` starts it); (the cluster, seconds it took)."""
    import ray
    from ray.cluster_utils import Cluster as RayCluster

    started = time.perf_counter()
    cluster = RayCluster(initialize_head=True,
                         head_node_args={"num_cpus": 0, "object_store_memory": OBJECT_STORE_BYTES})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    return cluster, time.perf_counter() - started


def stop_ray_cluster(cluster) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


# ---- the report ------------------------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values)


def cell(values: list[float], digits: int = 1) -> str:
    """The median in bold, each run in parentheses."""
    return f"**{median(values):.{digits}f}** ({', '.join(f'{v:.{digits}f}' for v in values)})"


@dataclass
class Summary:
    """The figures the page quotes, from the runs."""

    runs: dict[str, list[Run]]
    discarded: dict[str, list[Run]]  # runs made again, by variant (``measure``)
    requests: int
    priority: bool = False  # measured at ``PRIORITY_NICE`` (``--priority``)

    def values(self, variant: str, what: str) -> list[float]:
        runs = self.runs[variant]
        if what == "load":  # per run: the mean of its engines' loads
            return [statistics.fmean(r.load_seconds) for r in runs]
        if what == "generate":  # per run: the slowest model's generate phase
            return [max(r.generate_seconds.values()) for r in runs]
        return [getattr(r, what) for r in runs]

    def extra(self, what: str) -> float:
        return median(self.values("ray", what)) - median(self.values("local", what))

    @property
    def per_request_ms(self) -> float:
        return self.extra("seconds") / self.requests * 1000

    @property
    def per_request_generate_ms(self) -> float:
        """The same estimate from the generate phase alone (the slower model's; engines ready, loads left out)."""
        return self.extra("generate") / self.requests * 1000

    @property
    def paired_per_request_ms(self) -> list[float]:
        return [(ray.seconds - local.seconds) / self.requests * 1000
                for local, ray in zip(self.runs["local"], self.runs["ray"])]

    @property
    def identical(self) -> bool:
        reference = self.runs["local"][0].texts
        return all(r.texts == reference for runs in self.runs.values() for r in runs)

    def matching(self, run: Run) -> int:
        return sum(a == b for a, b in zip(run.texts, self.runs["local"][0].texts))


def results_table(summary: Summary) -> list[str]:
    lines = [("| variant | end-to-end s | engine load s (mean of the run's engines) | first result s | "
             "generate s (slower model) | close s | texts equal to local's first run | failed | other CPU s | "
             "Ray daemons CPU s |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, runs in summary.runs.items():
        equal = ", ".join(f"{summary.matching(r)}/{summary.requests}" for r in runs)
        lines.append(
            f"| {variant} | {cell(summary.values(variant, 'seconds'))} | {cell(summary.values(variant, 'load'))} | "
            f"{cell(summary.values(variant, 'first_result_seconds'))} | {cell(summary.values(variant, 'generate'))} | "
            f"{cell(summary.values(variant, 'close_seconds'))} | {equal} | {sum(r.failed for r in runs)} | "
            f"{', '.join(f'{r.foreign_cpu_seconds:.1f}' for r in runs)} | "
            f"{', '.join(f'{r.ray_daemon_cpu_seconds:.1f}' for r in runs)} |")
    lines.append(
        f"| ray - local (medians) | {summary.extra('seconds'):+.1f} | {summary.extra('load'):+.1f} | "
        f"{summary.extra('first_result_seconds'):+.1f} | {summary.extra('generate'):+.1f} | "
        f"{summary.extra('close_seconds'):+.1f} | | | | |")
    return lines


def engines_table(summary: Summary) -> list[str]:
    lines = ["| variant | round | engine (model, cores) | started s | load s | stopped s | requests |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for variant, runs in summary.runs.items():
        for run in runs:
            for e in run.engines:
                load = f"{e['load_seconds']:.1f}" if e["load_seconds"] is not None else "-"
                lines.append(f"| {variant} | {run.round} | {e['model']} {e['devices']} | {e['started_seconds']:.2f} | "
                             f"{load} | {e['stopped_seconds']:.1f} | {e['requests_done']} |")
    return lines


def spread(values: list[float]) -> float:
    """Largest minus smallest run: how far rounds of one variant scatter."""
    return max(values) - min(values)


def reading(summary: Summary, cluster_seconds: float) -> str:
    """One paragraph on what the figures say (its numbers from this run)."""
    e2e, load = summary.extra("seconds"), summary.extra("load")
    first, generate = summary.extra("first_result_seconds"), summary.extra("generate")
    local = median(summary.values("local", "seconds"))
    noise = max(spread(summary.values(v, "seconds")) for v in VARIANTS)
    verdict = ("within the scatter between rounds" if abs(e2e) <= noise
               else f"more than the scatter between rounds ({noise:.1f} s at most)")
    local_generate = median(summary.values("local", "generate"))
    return (
        f"On one machine the Ray variant took {e2e:+.1f} s end to end against the local one ({e2e / local:+.1%} of "
        f"{local:.1f} s), {verdict}; charged to the {summary.requests} requests that is {summary.per_request_ms:+.1f} "
        f"ms each (per round {', '.join(f'{x:+.1f}' for x in summary.paired_per_request_ms)} ms). Loading is "
        f"{median(summary.values('local', 'load')) / local:.0%} of a local run: an engine's load (an actor in a "
        f"placement group against a spawned worker process, each then "
        f"importing vLLM and loading its model) differs by {load:+.1f} s and the first result by {first:+.1f} s. The "
        f"phase where a per-request cost of the backend would show (requests posted to the actor, results read back "
        f"by `receive` calls through Ray) is the generate phase, from an engine ready to its model's last result: "
        f"{generate:+.1f} s on the slower model ({generate / local_generate:+.1%} of the local {local_generate:.1f} "
        f"s; {summary.per_request_generate_ms:+.2f} ms per request). The outputs are "
        f"{'identical in every run' if summary.identical else 'NOT identical in every run'} (greedy). Starting the "
        f"Ray cluster ({cluster_seconds:.1f} s) is paid once per cluster and is in no run. The nodes are simulated "
        f"on this machine, so no byte crossed a network: this is Ray's own cost (actors, placement groups, its "
        f"control calls), the part of a real multi-node cluster's cost that does not depend on the network."
    )


def made_again(summary: Summary) -> list[str]:
    """The runs that were made again, and any counted run with a flaw left (attempts or time ran out)."""
    lines = []
    for variant in VARIANTS:
        for run in summary.discarded[variant]:
            lines.append(f"- {variant}, round {run.round}, attempt {run.attempt}: {', '.join(run.flaws)}; "
                         f"{run.seconds:.1f} s end to end, other processes {run.foreign_cpu_seconds:.1f} CPU s, "
                         f"first plan: {'; '.join(run.first_stage) or 'none'}.")
        for run in summary.runs[variant]:
            if run.flaws:
                lines.append(f"- {variant}, round {run.round}, attempt {run.attempt} (counted, no attempt left): "
                             f"{', '.join(run.flaws)}; {run.seconds:.1f} s end to end.")
    return lines or ["None: every run counted at its first attempt."]


def sharing(summary: Summary) -> str:
    """How the runs shared the machine with other jobs, and which were made again."""
    again = (f"A run whose first plan did not start both models was made again (at most {MAX_ATTEMPTS} attempts per "
             "variant and round; see *Runs made again*).")
    if summary.priority:
        return ("Other jobs share this machine, their work niced; this benchmark ran at nice "
                f"{PRIORITY_NICE}, its session's autogroup too (`--priority`; the engines, Ray's daemons and its "
                "workers inherit it), so they got "
                "only the cycles the engines left: runs did not wait for idle cores, and `other CPU s` is what "
                "processes outside the benchmark's own process tree took during each run. " + again)
    return ("Other jobs share this machine: each run waited (up to "
            f"{IDLE_WAIT_SECONDS:.0f} s) until none asked for quiet or kept a core busy, a run during which processes "
            f"outside the benchmark's own process tree took more than {common.DISTURBED_SHARE:.0%} of the CPU time "
            "was made again, and `other CPU s` is what they took during the runs that count. " + again)


def render(summary: Summary, cluster_seconds: float, profile_seconds: float, host: str, wall: float,
           command: str) -> str:
    rounds = len(summary.runs["local"])
    local_seconds = median(summary.values("local", "seconds"))
    lines = [
        "# Engine pool on Ray against the process backend, real engines on one machine",
        "",
        (f"Generated by `benchmarks/ray_backend_real.py` on {host}, {datetime.date.today().isoformat()}; "
        f"{wall / 60:.1f} min in all. {rounds} round{'s' if rounds > 1 else ''}, each running the local variant "
        "then the Ray variant (median in bold, each round in parentheses). " + sharing(summary)),
        "",
        "## Summary",
        "",
        (f"- End to end (pool creation to the last result), {summary.requests} requests: local "
         f"**{local_seconds:.1f} s**, Ray **{median(summary.values('ray', 'seconds')):.1f} s** "
         f"({summary.extra('seconds'):+.1f} s, {summary.extra('seconds') / local_seconds:+.1%})."),
        (f"- Per-request overhead estimate, (Ray end to end - local end to end) / N on the medians: "
         f"**{summary.per_request_ms:+.1f} ms** (per round: "
         f"{', '.join(f'{x:+.1f}' for x in summary.paired_per_request_ms)} ms); from the generate phase alone "
         f"(engines ready to the slower model's last result): {summary.per_request_generate_ms:+.2f} ms."),
        (f"- Engine load (ready - started, mean of the run's engines): local "
         f"{median(summary.values('local', 'load')):.1f} s, Ray {median(summary.values('ray', 'load')):.1f} s; "
         f"first result: local {median(summary.values('local', 'first_result_seconds')):.1f} s, Ray "
         f"{median(summary.values('ray', 'first_result_seconds')):.1f} s."),
        f"- Texts identical between the variants (greedy): **{'yes' if summary.identical else 'NO'}**.",
        f"- Ray cluster start (head and two nodes, connected), once, not in any run: **{cluster_seconds:.1f} s**.",
        "",
        "## Set-up",
        "",
        ("- **local**: `EnginePool(None, \"2xcpu\", models=[\"tiny-llama-s\", \"tiny-llama-m\"], "
         "backend=\"vllm\")`: each engine in a worker process of this machine pinned to its core."),
        ("- **ray**: `EnginePool(None, \"2x1xcpu\", same models, backend=\"ray\")` on a `ray.cluster_utils.Cluster`: a "
         "head with `num_cpus=0` and two nodes with `num_cpus=1`, 80 MiB object store each, started once before the "
         "first round and connected to this process for the whole benchmark (so its daemons idle beside the local "
         "runs too: `Ray daemons CPU s`). Each engine runs in an `EngineHost` actor in a placement group on its "
         "node, pinned to core `device % 2` of the actor's process."),
        (f"- Workload: {summary.requests} requests alternating the two models, prompts `request i: tell me about item "
         f"7i` (as `tests/runtime/test_ray_pool.py`), greedy (temperature 0), `max_tokens` {MAX_TOKENS} with "
         "`ignore_eos`, all submitted at once right after the pool is created; no app graph: the pool plans from the "
         f"requests as they arrive, with the one-core profiles of `pool_profiles(models, scale={PROFILE_SCALE})` "
         f"({profile_seconds:.1f} s to measure or read from the cache, once, before the first round). Engine settings: "
         "the pool's `default_engine_settings` in both variants."),
        ("- The first plan: the pool plans as soon as its driver takes the first requests in. When that happens "
         "before the submitting thread has handed over a request of each model, it plans on tiny-llama-s alone (on "
         "both cores) and tiny-llama-m after it, a slower schedule; the runs compared are those whose first plan "
         "started both models at once, one per core, and the others are listed below."),
        ("- Machine: 2 cores. Both variants use both cores, one engine per core. The two Ray nodes are processes of "
         "this machine sharing its cores and memory: there is no real network between them, so the Ray figures are "
         "Ray's own cost, without network transfers."),
        "",
        "## Results",
        "",
        ("`end-to-end s`: from the pool's creation (constructor included) to the last result. `engine load s`: "
         "`ready_seconds - started_seconds` of `pool.report().engines` (process or actor start, `import vllm`, model "
         "load), the mean over the run's engines that became ready. `first result s`: from the pool's creation. "
         "`generate s`: the slower model's, from its engine ready to its last result (the pool's clock). `close s`: "
         "leaving the pool's `with` block after the last result (not in end to end): the local backend waits for its "
         "worker processes to exit, the Ray backend kills its actors (`ray.kill`) once their engines have stopped "
         "and does not wait for their processes to exit, so the two do not measure the same thing. `other CPU s`: "
         "CPU time processes outside the benchmark took during the run; `Ray daemons CPU s`: what the Ray cluster's "
         "daemons took (GCS, raylets, agents; their own time, not their workers')."),
        "",
        *results_table(summary),
        "",
        "Engines of every run (the pool's clock; devices are cores, numbered node by node on Ray):",
        "",
        *engines_table(summary),
        "",
        "## Runs made again",
        "",
        *made_again(summary),
        "",
        "## Reading",
        "",
        reading(summary, cluster_seconds),
        "",
        *common.reproduce(command),
    ]
    return "\n".join(lines)


def run_record(summary: Summary, run: Run) -> dict:
    """One run for the JSON: its texts as a digest."""
    return {**{k: v for k, v in asdict(run).items() if k != "texts"},
            "texts_sha256": hashlib.sha256("\n".join(run.texts).encode()).hexdigest()[:16],
            "texts_equal_to_local_first": summary.matching(run)}


def raw_results(summary: Summary, cluster_seconds: float, profile_seconds: float, host: str,
                command: str) -> dict:
    """Every run's figures (texts as a digest), for the JSON next to the page."""
    return {
        "machine": host, "date": datetime.date.today().isoformat(), "command": command,
        "requests": summary.requests, "rounds": len(summary.runs["local"]), "models": MODELS, "sampling": GREEDY,
        "ray_cluster_start_seconds": cluster_seconds, "profile_seconds": profile_seconds,
        "identical": summary.identical,
        "median": {v: {what: median(summary.values(v, what))
                       for what in ("seconds", "load", "first_result_seconds", "generate", "close_seconds")}
                   for v in VARIANTS},
        "per_request_overhead_ms": summary.per_request_ms,
        "per_request_overhead_ms_by_round": summary.paired_per_request_ms,
        "per_request_overhead_generate_phase_ms": summary.per_request_generate_ms,
        "runs": [run_record(summary, r) for runs in summary.runs.values() for r in runs],
        "runs_made_again": [run_record(summary, r) for runs in summary.discarded.values() for r in runs],
    }


def raise_priority() -> Callable[[], None]:
    """Run this process, and every process it starts, at ``PRIORITY_NICE``; what puts the session back.

    With the kernel's autogroups a nice value only weighs against processes of the same session: the session's
    autogroup (``/proc/self/autogroup``, shared by the Ray cluster and the engines, which stay in this session)
    gets the same nice value, else other sessions' niced jobs would still get an equal share of the cores.
    """
    os.setpriority(os.PRIO_PROCESS, 0, PRIORITY_NICE)  # before any engine, Ray daemon or worker starts
    autogroup = Path("/proc/self/autogroup")
    if not autogroup.exists():
        return lambda: None
    before = autogroup.read_text().split("nice")[-1].strip()
    autogroup.write_text(str(PRIORITY_NICE))
    return lambda: autogroup.write_text(before)


# ---- main ------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256, help="requests, alternating the two models")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of local then Ray (the median is reported)")
    parser.add_argument("--priority", action="store_true",
                        help=f"run at nice {PRIORITY_NICE} (root): other jobs' niced work then gets only the cycles "
                        "the engines leave, so runs neither wait for idle cores nor are made again for it")
    parser.add_argument("--no-write", action="store_true", help="print the page only")
    args = parser.parse_args()
    restore_priority = raise_priority() if args.priority else (lambda: None)

    import ray
    import vllm

    from samullm_lc.profiling.pool_profiles import pool_profiles

    host = common.machine(f"vLLM {vllm.__version__} (CPU)", f"Ray {ray.__version__}")
    started = time.perf_counter()
    deadline = time.monotonic() + BUDGET_MINUTES * 60
    tree = TreeCpu()
    profile_started = time.perf_counter()
    profiles = pool_profiles(MODELS, scale=PROFILE_SCALE)
    profile_seconds = time.perf_counter() - profile_started
    requests = prompts(args.requests)
    cluster, cluster_seconds = start_ray_cluster()
    print(f"-- Ray cluster started in {cluster_seconds:.1f} s", flush=True)
    runs: dict[str, list[Run]] = {name: [] for name in VARIANTS}
    discarded: dict[str, list[Run]] = {name: [] for name in VARIANTS}
    try:
        for round_ in range(1, args.rounds + 1):
            for variant in VARIANTS:
                *again, counted = measure(variant, round_, requests, profiles, tree, deadline,
                                          shared=not args.priority)
                runs[variant].append(counted)
                discarded[variant].extend(again)
    finally:
        stop_ray_cluster(cluster)
        tree.close()
        restore_priority()
    summary = Summary(runs=runs, discarded=discarded, requests=args.requests, priority=args.priority)

    command = "flock /tmp/samullm-engine.lock /work/main/.venv/bin/python benchmarks/ray_backend_real.py"
    for name, default in {"requests": 256, "rounds": 3}.items():
        if getattr(args, name) != default:
            command += f" --{name} {getattr(args, name)}"
    if args.priority:
        command += " --priority"
    text = render(summary, cluster_seconds, profile_seconds, host, time.perf_counter() - started, command)
    common.publish(text, REPORT, write=not args.no_write)
    if not args.no_write:
        RAW.write_text(json.dumps(raw_results(summary, cluster_seconds, profile_seconds, host, command), indent=1)
                       + "\n")
        print(f"wrote {RAW.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
