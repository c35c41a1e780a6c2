"""Engines on a Ray cluster: each one in an actor on its plan node, its devices held by a placement group.

The plan says which devices an engine gets; devices are numbered node by node (``Cluster.node_of``) and plan
node k is the k-th Ray node with devices (``ray_nodes``). For each engine the backend makes a placement group
of one bundle per device, each bundle the engine's share of that device (``EngineSpec.memory_fraction`` of a
GPU, or of a core on the CPU engine), all on that Ray node (``STRICT_PACK`` with a node-id label selector): Ray
holds the devices the plan gives and refuses to over-commit a node. The engine runs in an ``EngineHost`` actor
in that group, which pins the plan's devices inside the actor and runs the same worker loop as the process
backend (``vllm_worker``). vLLM's own Ray executor is not used: the engine runs with vLLM's local executor in
the actor, so tensor parallelism stays inside one node, as the planner plans it.

Like worker processes, a stopped engine's actor waits for the next engine on its node (same devices on GPUs,
as many cores on the CPU engine) instead of importing vLLM again; its placement group keeps its devices
meanwhile, so an engine that needs a new actor on that node first lets the node's waiting actors go.

Each host has one ``receive`` call in flight; its answer (the loop's messages, or Ray's error when the actor
died) lands in a queue that ``wait`` reads, so ``wake`` only has to put a marker there. An actor that dies
fails its engine (its unfinished requests go back to the pool); a node that leaves the cluster is seen at once
on its actors' calls, or within ``NODE_CHECK_SECONDS`` otherwise: the backend reports ``DevicesLost`` for its
devices, then each of its engines as stopped with ``node_lost``, and the pool re-plans on what is left.
"""

from __future__ import annotations

import queue
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samullm_lc.errors import ConfigError
from samullm_lc.planner.cluster import Cluster
from samullm_lc.runtime.backends.base import DevicesLost, EngineSpec, Event
from samullm_lc.runtime.backends.ray_host import EngineHost
from samullm_lc.runtime.backends.ray_nodes import NODE_ID_LABEL, check_fits, connect, device_resource, import_ray
from samullm_lc.runtime.backends.vllm_backend import MAX_IDLE_WORKERS, STOP_GRACE_SECONDS
from samullm_lc.runtime.backends.vllm_worker import cpu_pinning
from samullm_lc.runtime.backends.worker_events import EngineInWorker, is_end, work_items, worker_events
from samullm_lc.runtime.backends.worker_messages import (
    AddRequests,
    EngineStoppedMessage,
    FromWorker,
    Pinning,
    StartEngine,
    StopEngine,
    ToWorker,
)
from samullm_lc.runtime.requests import Request
from samullm_lc.runtime.vllm_engine import EngineSettings

NODE_DIED = "its node has died"
"""Words of Ray's ``ActorDiedError`` when the actor's node died (the node table may say so a few seconds later)."""
NODE_CHECK_SECONDS = 1.0
"""How often ``wait`` asks Ray which nodes are alive (a node without engines is otherwise not noticed)."""
HOST_CONCURRENCY = 4
"""Threads of one host actor: a waiting ``receive`` must not hold up ``post``."""

SettingsFor = Callable[[EngineSpec], EngineSettings]


@dataclass(slots=True, eq=False)
class _Host:
    """One ``EngineHost`` actor, its placement group, and the engine it runs now (None while idle)."""

    actor: Any
    group: Any
    node: int  # plan node
    spec: EngineSpec  # the engine it was made for (its devices and share are the group's)
    engine: EngineInWorker | None = None
    sent: int = 0  # messages numbered so far (the first engine's start went with the constructor)
    listening: Any = None  # the ``receive`` call in flight
    gone: bool = False  # dead, or let go: never used again


class RayBackend:
    """Engine actors on a Ray cluster (the CPU engine's cores, or GPUs), placed as the plan says."""

    name = "ray"

    def __init__(self, settings_for: SettingsFor, cluster: Cluster, *, address: str | None = None,
                 log_path: Path | None = None) -> None:
        """``log_path``: the file each engine actor writes its output to, on its own node (``engine_logs``);
        None: Ray's worker logs, which Ray forwards to this terminal."""
        self._ray = ray = import_ray()
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._in_group = PlacementGroupSchedulingStrategy
        self._owns_connection = connect(address)
        self._cluster = cluster
        self._settings_for = settings_for
        self._log_path = str(log_path) if log_path is not None else None
        try:
            self._node_ids = check_fits(cluster)
        except ConfigError:
            self._disconnect()
            raise
        self._host_class = ray.remote(EngineHost)
        self._hosts: dict[int, _Host] = {}  # engine id -> the host running it
        self._idle: list[_Host] = []
        self._answers: queue.SimpleQueue[tuple[_Host, Any] | None] = queue.SimpleQueue()
        self._events: list[Event] = []  # made outside ``wait`` (an engine asked for on a lost node)
        self._lost_nodes: set[int] = set()
        self._started = time.monotonic()
        self._nodes_checked = 0.0
        self.batch_sizes: defaultdict[str, Counter[int]] = defaultdict(Counter)
        """Per model: requests in each engine step's batch -> steps (engines report it when they stop)."""

    def now(self) -> float:
        return time.monotonic() - self._started

    # ---- engines ---------------------------------------------------------------------------------------
    def start_engine(self, spec: EngineSpec) -> None:
        node = self._cluster.node_of(spec.devices[0])
        if any(self._cluster.node_of(d) != node for d in spec.devices):
            raise ConfigError(f"engine {spec.engine_id} ({spec.model}) spans nodes: devices {list(spec.devices)}")
        engine = EngineInWorker(spec)
        if node in self._lost_nodes:
            self._events.append(engine.gone(f"node {node} has left the Ray cluster", node_lost=True))
            return
        settings = self._settings_for(spec).model_copy(
            update={"distributed_executor_backend": "mp" if spec.tp > 1 else "uni"})  # never vLLM's Ray executor
        start = StartEngine(model=spec.model, settings=settings.model_dump(), pinning=self._pinning(spec),
                            log_path=self._log_path)
        host = self._reusable(spec, node)
        if host is not None:
            self._post(host, start)
        else:
            host = self._new_host(spec, node, start)
        host.engine = engine
        self._hosts[spec.engine_id] = host

    def _pinning(self, spec: EngineSpec) -> Pinning:
        """The engine's devices as the host pins them: GPUs by their index on the node, cores by device number
        (``EngineHost`` maps them onto its process's cores)."""
        if self._cluster.spec.kind == "gpu":
            per_node = self._cluster.devices_per_node
            return Pinning(env={"CUDA_VISIBLE_DEVICES": ",".join(str(d % per_node) for d in spec.devices)})
        return cpu_pinning(list(spec.devices))

    def _new_host(self, spec: EngineSpec, node: int, start: StartEngine) -> _Host:
        """An actor for ``spec`` on its node, in a placement group holding its share of each of its devices."""
        from ray.util import placement_group, remove_placement_group

        for idle in [h for h in self._idle if h.node == node]:  # they hold devices of the node the new group needs
            self._let_go(idle)
        bundles = [{device_resource(self._cluster.spec.kind): spec.memory_fraction} for _ in spec.devices]
        group = placement_group(bundles, strategy="STRICT_PACK",
                                bundle_label_selector=[{NODE_ID_LABEL: self._node_ids[node]}] * len(bundles),
                                name=f"samullm-engine-{spec.engine_id}")
        try:
            actor = self._host_class.options(
                num_cpus=0, max_concurrency=HOST_CONCURRENCY, max_restarts=0,
                scheduling_strategy=self._in_group(group, placement_group_bundle_index=0),
            ).remote(start)
        except Exception:
            remove_placement_group(group)
            raise
        host = _Host(actor=actor, group=group, node=node, spec=spec)
        self._listen(host)
        return host

    def _reusable(self, spec: EngineSpec, node: int) -> _Host | None:
        """An idle host that can run ``spec``, taken: on its devices, or on the CPU engine as many on its node."""
        def fits(host: _Host) -> bool:
            same = host.spec.devices == spec.devices
            if self._cluster.spec.kind == "cpu":
                same = host.node == node and len(host.spec.devices) == len(spec.devices)
            return same and host.spec.memory_fraction == spec.memory_fraction

        host = next((h for h in self._idle if fits(h)), None)
        if host is not None:
            self._idle.remove(host)
        return host

    def _post(self, host: _Host, message: ToWorker) -> None:
        host.actor.post.remote(host.sent, message)
        host.sent += 1

    def _listen(self, host: _Host) -> None:
        """Ask the host for its next messages; the answer lands in ``_answers``."""
        ref = host.actor.receive.remote()
        host.listening = ref
        ref.future().add_done_callback(lambda _, host=host, ref=ref: self._answers.put((host, ref)))

    def actors(self) -> dict[int, Any]:
        """The actor of each engine (to watch them, or to kill one and see the pool recover)."""
        return {engine_id: host.actor for engine_id, host in self._hosts.items()}

    def submit(self, engine_id: int, requests: list[Request]) -> None:
        host = self._hosts.get(engine_id)
        if host is None:
            return  # its node left: the engine's stop, with these requests unfinished, is already reported
        host.engine.in_flight.update(r.id for r in requests)
        self._post(host, AddRequests(work_items(requests)))

    def stop_engine(self, engine_id: int) -> None:
        host = self._hosts.get(engine_id)
        if host is None or host.engine.stopping:
            return
        host.engine.stopping = True
        self._post(host, StopEngine())

    # ---- events ----------------------------------------------------------------------------------------
    def wake(self) -> None:
        self._answers.put(None)

    def wait(self, timeout: float) -> list[Event]:
        events, self._events = self._events, []
        events.extend(self._check_nodes())
        block = not events and timeout > 0
        while True:
            try:
                answer = self._answers.get(timeout=timeout) if block else self._answers.get_nowait()
            except queue.Empty:
                return events
            block = False
            if answer is not None:
                events.extend(self._answered(*answer))

    def _answered(self, host: _Host, ref: Any) -> list[Event]:
        """The events of one host's answer; listens again while the host lives."""
        if host.gone or ref is not host.listening:
            return []
        host.listening = None
        try:
            messages: list[FromWorker] | None = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            return self._died(host, exc)
        if messages is None:  # the loop ended after its engine failed (that message came before)
            self._let_go(host)
            return [self._end(host, "its engine host ended")] if host.engine is not None else []
        events: list[Event] = []
        for message in messages:
            engine = host.engine
            if engine is None:
                continue
            if isinstance(message, EngineStoppedMessage):
                self.batch_sizes[engine.spec.model].update(message.batch_sizes)
            events.extend(worker_events(engine, message))
            if is_end(message):
                self._hosts.pop(engine.spec.engine_id, None)
                host.engine = None
                if isinstance(message, EngineStoppedMessage):
                    self._keep_idle(host)
                else:
                    self._let_go(host)
        if not host.gone:
            self._listen(host)
        return events

    def _died(self, host: _Host, error: Exception) -> list[Event]:
        """A host's call failed: the actor or its node is gone. A lost node is reported for all its engines, also
        when Ray's error says the node died before its node table does."""
        events = self._check_nodes(force=True)
        if not host.gone and NODE_DIED in str(error):
            events.extend(self._lose_node(host.node, f"Ray node {self._node_ids[host.node][:12]} (plan node "
                                                     f"{host.node}) died under engine actors"))
        if host.gone:
            return events
        self._let_go(host)
        if host.engine is not None:
            cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            events.append(self._end(host, f"engine actor of {host.engine.spec.model} on node {host.node} died: "
                                          f"{type(error).__name__}: {cause}"))
        return events

    def _end(self, host: _Host, failure: str, *, node_lost: bool = False) -> Event:
        engine = host.engine
        self._hosts.pop(engine.spec.engine_id, None)
        host.engine = None
        return engine.gone(failure, node_lost=node_lost)

    def _check_nodes(self, *, force: bool = False) -> list[Event]:
        """``DevicesLost`` for each plan node that left Ray since the last check, then its engines' ends."""
        now = time.monotonic()
        if not force and now - self._nodes_checked < NODE_CHECK_SECONDS:
            return []
        self._nodes_checked = now
        try:
            alive = {n["NodeID"] for n in self._ray.nodes() if n.get("Alive")}
        except Exception:  # noqa: BLE001 - the node table is unreachable for now: look again next time
            return []
        events: list[Event] = []
        for node, node_id in enumerate(self._node_ids):
            if node not in self._lost_nodes and node_id not in alive:
                events.extend(self._lose_node(node, f"Ray node {node_id[:12]} (plan node {node}) left the cluster"))
        return events

    def _lose_node(self, node: int, reason: str) -> list[Event]:
        """``DevicesLost`` for a plan node, then the end of each engine there (``node_lost``)."""
        if node in self._lost_nodes:
            return []
        self._lost_nodes.add(node)
        devices = self._cluster.node_devices(node)
        reason = f"{reason}: devices {list(devices)} lost"
        events: list[Event] = [DevicesLost(devices, reason)]
        for host in [*self._hosts.values(), *self._idle]:
            if host.node == node and not host.gone:
                self._let_go(host)
                if host.engine is not None:
                    events.append(self._end(host, reason, node_lost=True))
        return events

    # ---- hosts -----------------------------------------------------------------------------------------
    def _keep_idle(self, host: _Host) -> None:
        """A host whose engine stopped waits for the next engine, up to ``MAX_IDLE_WORKERS`` per node."""
        if sum(1 for h in self._idle if h.node == host.node) < MAX_IDLE_WORKERS:
            self._idle.append(host)
        else:
            self._let_go(host)

    def _let_go(self, host: _Host) -> None:
        """End a host's actor and free its devices (a dead one's as well)."""
        from ray.util import remove_placement_group

        if host.gone:
            return
        host.gone = True
        if host in self._idle:
            self._idle.remove(host)
        for release in (lambda: self._ray.kill(host.actor), lambda: remove_placement_group(host.group)):
            try:
                release()
            except Exception:  # noqa: BLE001 - already gone with its node: nothing left to free
                pass

    def close(self) -> None:
        for host in list(self._hosts.values()):
            if not host.engine.ready and not host.engine.in_flight:  # still loading, nothing to lose
                self._end(host, "closed")
                self._let_go(host)
            else:
                self.stop_engine(host.engine.spec.engine_id)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        try:
            while self._hosts and time.monotonic() < deadline:
                self.wait(timeout=0.5)
        finally:
            for host in [*self._hosts.values(), *self._idle]:
                self._let_go(host)
            self._hosts.clear()
            self._disconnect()

    def _disconnect(self) -> None:
        if self._owns_connection:
            self._ray.shutdown()
            self._owns_connection = False
