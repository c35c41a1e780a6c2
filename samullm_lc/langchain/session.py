"""``offline()``: a block inside which every LLM call of an unchanged LangChain pipeline runs on the engine pool.

    with samullm.offline(models={"judge": "Qwen/Qwen2.5-7B-Instruct"}) as run:
        results = chain.batch(inputs)
    print(run.report().summary())

The block owns a pool of engines (``EnginePool``): entering it makes the session the active one for every
thread and coroutine of the process (a ContextVar for this context and the ones it starts, plus the
process-wide innermost block for threads started some other way), and sets LangChain's own configuration
channel so a ``batch`` hands the pool every call it can make at once (``max_concurrency``). Leaving it stops
every engine; Ctrl-C fails what is outstanding first. The interception itself (``intercept.py``) is
installed once per process and does nothing outside a block.
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Self

from samullm_lc.errors import ConfigError, SamullmError
from samullm_lc.langchain import sites
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.planners import DEFAULT_PLANNER
from samullm_lc.runtime.pool import EnginePool, check_backend
from samullm_lc.runtime.report import RunReport
from samullm_lc.runtime.requests import GenerationResult

DEFAULT_MAX_CONCURRENCY = 1024
"""Calls a ``batch`` may have in flight at once inside a block (LangChain's ``max_concurrency``): enough to fill
every engine's batch, small enough that threads and queued prompts stay bounded."""

_current: contextvars.ContextVar[OfflineSession | None] = contextvars.ContextVar("samullm_offline", default=None)
_open_sessions: list[OfflineSession] = []  # innermost last: what threads outside the block's context see
_open_lock = threading.Lock()


BLOCK_ENDED = ("the offline() block this call was made in has ended (or is ending): make LLM calls inside the "
               "block, and let every task and thread that makes them finish before leaving it")
ActiveTokens = tuple[contextvars.Token, "contextvars.Token | None", contextvars.Token]
"""What ``activate`` set (the session, LangChain's concurrency setting, the call-site recorder), to undo it."""


class UnknownClientModelError(ConfigError):
    """A LangChain client names a model the block does not serve."""


def active_session() -> OfflineSession | None:
    """The session serving this thread or coroutine: its own block's, else the innermost open one."""
    session = _current.get()
    if session is not None:
        return session  # closed or not: a call made in a block's context never goes past it to the network
    with _open_lock:
        return _open_sessions[-1] if _open_sessions else None


class OfflineSession:
    """One ``offline()`` block: LangChain's LLM clients inside it are served by an in-process pool of vLLM engines.

    ``models`` maps the model names the clients use to weights (a Hugging Face id in the local cache, a model
    folder, or a tiny model's name); a list means each name is its own weights; None serves every client by
    its own model name. ``devices`` is a cluster such as ``"8xA100-80GB"`` (default: the GPUs CUDA shows,
    else one CPU engine slot per core). ``journal`` makes a rerun of an interrupted batch recompute only what
    had not finished. ``max_concurrency`` caps the calls in flight (LangChain's own setting). ``tool_parser``
    serves tool calls as ``vllm serve --enable-auto-tool-choice --tool-call-parser NAME`` would. ``profiles``
    gives measured engine profiles by model (otherwise each CPU model is profiled once and cached).

    The session holds the pool, the model names clients may use, and what the block counted.
    """

    def __init__(
        self,
        models: Mapping[str, str] | Iterable[str] | None = None,
        *,
        devices: str | Cluster | None = None,
        journal: str | Path | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        backend: str = "vllm",
        planner: str = DEFAULT_PLANNER,
        progress: bool | None = None,
        profiles: dict[str, Any] | None = None,
        tool_parser: str | None = None,
        seed: int = 0,
    ) -> None:
        self.names = _model_names(models)
        self.tool_parser = check_tool_parser(tool_parser)
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self.cluster = _cluster(devices)
        self.backend = check_backend(backend)
        self._pool_options = {"journal": journal, "backend": backend, "planner": planner, "progress": progress,
                              "seed": seed}
        self._profiles = dict(profiles or {})
        self.pool: EnginePool | None = None
        self._pool_lock = threading.Lock()
        self.call_sites: Counter[str] = Counter()
        self._sites_lock = threading.Lock()
        self._tokens: list[ActiveTokens] = []
        self.is_open = False
        self._final_report: RunReport | None = None
        self._closed = False  # closed (or closing): no pool may start any more
        self._interrupt_handler: tuple[Any, Any] | None = None  # (ours, the one it replaced)

    # ---- the block -----------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.open(process_wide=True)
        self._tokens.append(self.activate())
        return self

    def open(self, *, process_wide: bool) -> None:
        """Install the hooks (once per process) and, when every model is known, start the pool now: unknown
        weights or a missing profile fail here, before anything runs. ``process_wide``: threads started outside
        the block's context are served too (an ``offline()`` block; a ``wrap()``-ed chain serves its own calls)."""
        from samullm_lc.langchain import intercept

        if self.is_open:
            raise ConfigError("this offline() block is already open; nest a new samullm.offline(...) instead of "
                              "entering the same one twice")
        intercept.install()
        sites.register()
        self._closed = False
        if self.names is not None:
            self._serve_models(sorted(set(self.names.values())))
        self.is_open = True
        if process_wide:
            with _open_lock:
                _open_sessions.append(self)
            self._interrupt_handler = _on_interrupt(self)

    def activate(self) -> ActiveTokens:
        """Make this the session of the current context (and the contexts it starts); ``deactivate`` undoes it."""
        return _current.set(self), _concurrency_token(self.max_concurrency), sites.activate()

    @staticmethod
    def deactivate(tokens: ActiveTokens) -> None:
        from langchain_core.runnables.config import var_child_runnable_config

        token, config_token, sites_token = tokens
        sites.deactivate(sites_token)
        _reset(_current, token)
        if config_token is not None:
            _reset(var_child_runnable_config, config_token)

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(cancel=exc_type is not None)  # leaving by an error: fail what is in flight, stop at once

    def close(self, *, cancel: bool = False) -> None:
        """Finish (or, with ``cancel``, fail) what is outstanding and stop every engine."""
        with self._pool_lock:  # a thread starting the pool finishes first, so its engines are stopped too
            if not self.is_open:
                return
            self.is_open = False
            self._closed = True  # and no thread starts another
        with _open_lock:
            if self in _open_sessions:
                _open_sessions.remove(self)
        if self._interrupt_handler is not None:
            _restore_interrupt(*self._interrupt_handler)
            self._interrupt_handler = None
        if self._tokens:
            self.deactivate(self._tokens.pop())
        if self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                pool.close(cancel=cancel)
            finally:
                self._final_report = pool.report()

    # ---- serving -------------------------------------------------------------------------------------
    def pool_model(self, name: str) -> str:
        """The pool's model for the name a client uses; ``UnknownClientModelError`` naming the fix if none."""
        if self.names is not None:
            if name not in self.names:
                raise UnknownClientModelError(
                    f"a LangChain client asks for model {name!r}, which this offline() block does not serve "
                    f"(it serves {sorted(self.names)}): add it, e.g. offline(models={{..., {name!r}: "
                    f"'<Hugging Face id or model folder>'}})")
            return self.names[name]
        if self.pool is None or name not in self.pool.models:
            self._add_model(name)
        return name

    def submit_openai(self, route: str, body: dict[str, Any]) -> Future[GenerationResult]:
        """Hand the pool one OpenAI call (the body a client sent a vLLM server); the future holds its result."""
        if not self.is_open:
            raise SamullmError(BLOCK_ENDED)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ConfigError("the request names no model: set `model=` on the LangChain client")
        if self.tool_parser is None and _asks_for_tool_calls(body):
            raise ConfigError(
                "the request offers tools for the model to call; vLLM's server parses tool calls with a parser for "
                "the model's format, and this offline() block has none: pass offline(tool_parser=NAME) with vLLM's "
                "parser for your model (e.g. 'hermes' for Qwen2.5, 'llama3_json' for Llama 3.1), or remove the "
                "tools (with_structured_output(method='json_schema') needs none)")
        model = self.pool_model(name)
        self._count(sites.current_site(name))
        pool = self.pool
        if pool is None:
            raise SamullmError(BLOCK_ENDED)
        call = {"route": route, "body": body, "tool_parser": self.tool_parser}
        return pool.submit(model, openai=call)

    def _count(self, site: str) -> None:
        with self._sites_lock:
            self.call_sites[site] += 1

    def report(self) -> RunReport:
        """Plan vs actual for the block's pool (final once the block is left), with calls per call site."""
        report = self.pool.report() if self.pool is not None else self._final_report or RunReport(
            backend=self.backend, cluster=str(self.cluster), planner=self._pool_options["planner"])
        with self._sites_lock:
            report.call_sites = dict(self.call_sites)
        return report

    # ---- the pool ------------------------------------------------------------------------------------
    def _serve_models(self, models: list[str]) -> EnginePool:
        """The block's pool, started for ``models`` or, if running, serving them from now on (any thread)."""
        with self._pool_lock:
            if self._closed:
                raise SamullmError(BLOCK_ENDED)
            missing = [m for m in models if self.pool is None or m not in self.pool.models]
            profiles = self._measured_profiles(missing)
            if self.pool is None:
                pool = EnginePool(None, self.cluster, models=models, profiles={**self._profiles, **profiles},
                                  **self._pool_options)
                self.pool = pool.start()
            else:
                for model in missing:
                    self.pool.add_model(model, profiles.get(model))
            return self.pool

    def _add_model(self, name: str) -> None:
        """Serve a client's model by its own name (no ``models=`` given): a tiny model, a folder, a cached id."""
        try:
            self._serve_models([name])
        except SamullmError as exc:
            raise UnknownClientModelError(
                f"a LangChain client asks for model {name!r}, which cannot be served here ({exc}); map the name "
                f"to the weights: offline(models={{{name!r}: '<Hugging Face id or model folder>'}})") from None

    def _measured_profiles(self, models: list[str]) -> dict[str, Any]:
        """On the CPU engine the planner needs each model's measured speed: measured once, then cached."""
        if self.cluster.spec.kind != "cpu" or self.backend != "vllm":
            return {}
        from samullm_lc.profiling.pool_profiles import pool_profiles

        return pool_profiles([m for m in models if m not in self._profiles]) if models else {}


offline = OfflineSession
"""``samullm.offline(...)``: open a block (``with samullm.offline(models=...):``); see ``OfflineSession``."""


def _asks_for_tool_calls(body: dict[str, Any]) -> bool:
    """A chat body that lets the model call tools (tools offered, and a tool choice other than "none")."""
    return bool(body.get("tools")) and body.get("tool_choice", "auto") != "none"


def check_tool_parser(name: str | None) -> str | None:
    """``name`` if vLLM has a tool parser of that name (``vllm serve --tool-call-parser``), else ``ConfigError``."""
    if name is None:
        return None
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    known = ToolParserManager.list_registered()
    if name not in known:
        raise ConfigError(f"unknown tool parser {name!r}; vLLM's parsers: {', '.join(sorted(known))}")
    return name


def _model_names(models: Mapping[str, str] | Iterable[str] | None) -> dict[str, str] | None:
    if models is None:
        return None
    if isinstance(models, str):
        raise ConfigError(f"models must be a mapping {{client name: weights}} or a list of names, got the string "
                          f"{models!r}: write models=[{models!r}]")
    pairs = models.items() if isinstance(models, Mapping) else ((m, m) for m in models)
    names = {}
    for name, weights in pairs:
        if not isinstance(name, str) or not name or not isinstance(weights, str) or not weights:
            raise ConfigError(f"models maps client model names to weights, both non-empty strings; got "
                              f"{name!r}: {weights!r}")
        names[name] = weights
    if not names:
        raise ConfigError("models is empty: name at least one model, or leave models out to serve every client "
                          "by its own model name")
    return names


def _cluster(devices: str | Cluster | None) -> Cluster:
    if isinstance(devices, Cluster):
        return devices
    if devices is None:
        return Cluster.parse(detect_devices())
    if not isinstance(devices, str):
        raise ConfigError(f"devices must be a cluster such as '8xA100-80GB' or a Cluster, got {type(devices).__name__}")
    return Cluster.parse(devices)


def detect_devices() -> str:
    """The devices this machine gives the pool: the GPUs CUDA shows, else one CPU engine slot per core."""
    from samullm_lc.runtime.vllm_engine import is_cpu_engine

    if is_cpu_engine():
        return f"{len(os.sched_getaffinity(0))}xcpu"
    import torch

    from samullm_lc.costmodel.hardware import HARDWARE

    count = torch.cuda.device_count()
    if count == 0:
        raise ConfigError("no GPU is visible to CUDA and vLLM is not the CPU build: pass devices='NxHARDWARE'")
    name = torch.cuda.get_device_name(0)
    memory_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    for hardware in HARDWARE.values():
        if hardware.name.split("-")[0] in name and abs(hardware.memory_bytes / 1e9 - memory_gb) < 0.15 * memory_gb:
            return f"{count}x{hardware.name}"
    raise ConfigError(f"GPU {name!r} ({memory_gb:.0f} GB) is not in the hardware catalogue: pass "
                      f"devices='{count}x<one of {sorted(HARDWARE)}>' for the closest match")


def _concurrency_token(max_concurrency: int) -> contextvars.Token | None:
    """Set LangChain's own configuration channel (the config every runnable started in this context inherits)
    so ``batch``/``abatch`` keep up to ``max_concurrency`` calls in flight; a value the caller set stays."""
    from langchain_core.runnables.config import var_child_runnable_config

    config = dict(var_child_runnable_config.get() or {})
    if config.get("max_concurrency") is not None:
        return None
    config["max_concurrency"] = max_concurrency
    return var_child_runnable_config.set(config)  # type: ignore[arg-type]


def _on_interrupt(session: OfflineSession) -> tuple[Any, Any] | None:
    """Make Ctrl-C fail the block's outstanding calls at once, then interrupt as before. Without it, LangChain's
    ``batch`` would wait for every call in flight (up to ``max_concurrency``) before the interrupt reaches the
    block. Only the main thread can set a signal handler; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)

    def interrupted(signum: int, frame: Any) -> Any:
        if previous == signal.SIG_IGN:  # Ctrl-C was ignored before the block: it still is
            return None
        if session.pool is not None:
            session.pool.cancel()
        if callable(previous):
            return previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    return interrupted, previous


def _restore_interrupt(ours: Any, previous: Any) -> None:
    """Put back the handler ``_on_interrupt`` replaced, unless someone replaced ours since."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is ours:
        signal.signal(signal.SIGINT, previous)


def _reset(var: contextvars.ContextVar, token: contextvars.Token) -> None:
    """Reset a ContextVar set on entry; a block left from another context (a generator, a thread) leaves it."""
    try:
        var.reset(token)
    except ValueError:
        pass
