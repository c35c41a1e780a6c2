"""The devices a plan may use: how many, of which type, on how many nodes, and how they are connected.

A cluster is ``num_nodes`` machines of ``devices_per_node`` devices each, numbered node by node (device ``d``
is on node ``d // devices_per_node``). Topologies inside a node: ``nvswitch`` (every GPU of a node reaches
every other over NVLink), ``nvlink-pairs`` (NVLink between GPUs 2k and 2k+1 only, PCIe otherwise) and
``pcie``. A tensor-parallel group never spans nodes, and is always an aligned block of consecutive GPUs (0-1,
2-3 for TP 2; 0-3, 4-7 for TP 4), so its all-reduces stay on the links the analytic latency model was
calibrated for: cross-node tensor parallelism is not modelled, hence not planned. Data-parallel replicas and
different models spread over nodes freely; what crosses nodes is priced where it costs: loading weights from
shared storage over the network (``weight_read_extra_seconds``). Devices of a node that left the cluster mid-run
stay in the numbering as ``lost_devices``: no engine is placed on them and they count out of ``usable_gpus``.

What a person reads calls the devices by what they are: ``device_word`` says "cores" on a ``cpu`` cluster (each
device is one core, an engine slot of the CPU engine) and "GPUs" otherwise, for every summary, plan and chart.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import ConfigDict, Field, field_validator, model_validator

from samullm_lc.costmodel.hardware import GB, Hardware, get_hardware
from samullm_lc.costmodel.load import STORAGE_READ_BYTES_PER_SECOND
from samullm_lc.errors import ConfigError
from samullm_lc.limits import CLUSTER_DEVICES
from samullm_lc.validated import ValidatedModel

Topology = Literal["nvswitch", "nvlink-pairs", "pcie"]
_SPEC = re.compile(r"^\s*(?:(\d+)\s*[xX×]\s*)?(\d+)\s*[xX×]\s*(\S+)\s*$")
_TEXT = re.compile(r"^\s*(?P<spec>[^\s(]+)\s*(?:\((?P<topology>[^)]*)\))?\s*(?:less lost devices \[(?P<lost>[\d,\s]*)\])?\s*$")
"""``str(cluster)``: the spec, the topology in brackets (GPUs; older texts have it for CPU cores too), lost devices."""
DEFAULT_NETWORK_GB_PER_S = 25.0
"""Per-node network between nodes when none is given: one 200 Gb/s InfiniBand or Ethernet link."""


class Cluster(ValidatedModel):
    """N devices of one type over one or more nodes; invalid values raise ``ConfigError`` (``validated.py``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hardware: str
    num_gpus: int = Field(description=f"Devices over all nodes, 1 to {CLUSTER_DEVICES.maximum:,} "
                                      "(``limits.CLUSTER_DEVICES``).")
    topology: Topology = Field("nvswitch", description="How the devices of one node are connected.")
    gpus_per_node: int | None = Field(None, gt=0, description="Devices per node; None: the hardware's node size "
                                                                "(8 GPUs), or every device on one node if fewer.")
    network_gb_per_s: float = Field(DEFAULT_NETWORK_GB_PER_S, gt=0,
                                    description="Per-node network bandwidth between nodes, GB/s.")
    storage_gb_per_s: float | None = Field(
        None, gt=0, description="Read rate of the shared storage the weights load from on every node, GB/s (capped "
                                "by the network); None: each node reads a local copy.")
    lost_devices: tuple[int, ...] = Field((), description="Devices of nodes gone mid-run: never placed on.")

    @field_validator("num_gpus")
    @classmethod
    def _check_num_gpus(cls, num_gpus: int) -> int:
        return CLUSTER_DEVICES.check(num_gpus)

    @model_validator(mode="after")
    def _check(self) -> Cluster:
        hw = get_hardware(self.hardware)
        per_node = self.gpus_per_node
        if per_node is not None:
            if self.num_gpus % per_node:
                raise ConfigError(f"{self.num_gpus} devices do not fill nodes of {per_node}: give a multiple of "
                                  f"{per_node} devices, e.g. {max(1, self.num_gpus // per_node)}x{per_node}x{hw.name}")
            if hw.kind == "gpu" and per_node > hw.devices_per_node:
                raise ConfigError(f"a node of {per_node} {hw.name} GPUs is larger than the {hw.devices_per_node} "
                                  f"the latency model knows for one node; split it into nodes of at most "
                                  f"{hw.devices_per_node}")
        bad = [d for d in self.lost_devices if not 0 <= d < self.num_gpus]
        if bad:
            raise ConfigError(f"lost devices {bad} are not devices of {self.num_gpus}x{hw.name}")
        return self

    @classmethod
    def parse(cls, spec: str, topology: Topology | None = None) -> Cluster:
        """Read ``8xA100-80GB`` (devices x hardware, one node of the hardware's size or less per node) or
        ``2x8xA100-80GB`` (nodes x devices per node x hardware); ``ConfigError`` naming the spec otherwise."""
        match = _SPEC.match(spec)
        if not match:
            raise ConfigError(f"cluster {spec!r} is not COUNTxHARDWARE or NODESxPER_NODExHARDWARE, e.g. "
                              "8xA100-80GB, 2x8xA100-80GB or 4xcpu")
        nodes, count, name = match.groups()
        hw = get_hardware(name)
        default: Topology = "nvswitch" if hw.has_nvlink else "pcie"
        try:
            if nodes is None:
                return cls(hardware=hw.name, num_gpus=int(count), topology=topology or default)
            return cls(hardware=hw.name, num_gpus=int(nodes) * int(count), gpus_per_node=int(count),
                       topology=topology or default)
        except ConfigError as exc:
            raise ConfigError(f"cluster {spec!r}: {exc}") from None

    @classmethod
    def from_text(cls, text: str) -> Cluster:
        """The cluster ``str(cluster)`` wrote, as plans and reports keep it (``8xA100-80GB (nvswitch)``, ``2xcpu``,
        ``... less lost devices [4, 5]``); the network and storage speeds are not in the text and take their
        defaults. ``ConfigError`` if the text is not such."""
        match = _TEXT.match(text)
        if not match:
            raise ConfigError(f"{text!r} is not a cluster as samullm_lc writes it, e.g. '8xA100-80GB (nvswitch)'")
        topology = match["topology"]
        if topology is not None and topology not in get_args(Topology):
            raise ConfigError(f"{text!r} names topology {topology!r}; one of {', '.join(get_args(Topology))}")
        cluster = cls.parse(match["spec"], topology)  # type: ignore[arg-type]
        lost = [int(device) for device in (match["lost"] or "").replace(",", " ").split()]
        return cluster.without(lost) if lost else cluster

    @property
    def spec(self) -> Hardware:
        """The device type's specification."""
        return get_hardware(self.hardware)

    @property
    def devices_per_node(self) -> int:
        """Devices per machine (a TP group stays inside one)."""
        if self.gpus_per_node is not None:
            return self.gpus_per_node
        return min(self.num_gpus, self.spec.devices_per_node)

    @property
    def num_nodes(self) -> int:
        return -(-self.num_gpus // self.devices_per_node)

    @property
    def usable_gpus(self) -> int:
        """Devices a plan may use: all but the lost ones."""
        return self.num_gpus - len(self.lost_devices)

    def node_of(self, device: int) -> int:
        """The node a device is on."""
        return device // self.devices_per_node

    def node_devices(self, node: int) -> tuple[int, ...]:
        """The devices of one node."""
        first = node * self.devices_per_node
        return tuple(range(first, min(first + self.devices_per_node, self.num_gpus)))

    def without(self, devices: tuple[int, ...] | list[int]) -> Cluster:
        """This cluster with ``devices`` lost (a node left): plans made on it never place an engine there."""
        lost = tuple(sorted(set(self.lost_devices) | set(devices)))
        if len(lost) >= self.num_gpus:
            raise ConfigError(f"every device of {self} is lost: no node is left to run on")
        return self.model_copy(update={"lost_devices": lost})

    def weight_read_extra_seconds(self, weight_bytes: float) -> float:
        """Seconds an engine load takes beyond the local-storage read the load model prices: reading the weights
        from shared storage over the network (at most the network's rate) instead of a local copy."""
        if self.storage_gb_per_s is None:
            return 0.0
        rate = min(self.storage_gb_per_s, self.network_gb_per_s) * GB
        return max(0.0, weight_bytes / rate - weight_bytes / STORAGE_READ_BYTES_PER_SECOND)

    def tp_degrees(self) -> list[int]:
        """Tensor-parallel degrees a model may use here: powers of two within one node (1 on the CPU engine)."""
        if self.spec.kind == "cpu":
            return [1]
        degrees, tp = [], 1
        while tp <= self.devices_per_node:
            degrees.append(tp)
            tp *= 2
        return degrees

    def tp_groups(self, tp: int) -> list[tuple[int, ...]]:
        """The aligned blocks a TP group of size ``tp`` may occupy (none touching a lost device)."""
        if tp not in self.tp_degrees():
            raise ConfigError(
                f"tensor-parallel degree {tp} is not possible on {self}; choose one of {self.tp_degrees()}"
            )
        lost = set(self.lost_devices)
        groups = []
        for node in range(self.num_nodes):
            devices = self.node_devices(node)
            node_start, node_end = devices[0], devices[-1] + 1
            groups.extend(block for start in range(node_start, node_end - tp + 1, tp)
                          if not lost.intersection(block := tuple(range(start, start + tp))))
        return groups

    def __str__(self) -> str:
        """The cluster's spec, with the GPUs' topology (none for CPU cores, which have no interconnect to speak of)."""
        link = f" ({self.topology})" if self.spec.kind != "cpu" else ""
        if self.gpus_per_node is None:
            text = f"{self.num_gpus}x{self.hardware}{link}"
        else:
            text = f"{self.num_nodes}x{self.devices_per_node}x{self.hardware}{link}"
        if self.lost_devices:
            text += f" less lost devices {list(self.lost_devices)}"
        return text


def device_word(cluster: Cluster | str, *, plural: bool = True) -> str:
    """What a person calls the cluster's devices: "cores" ("core") on the CPU engine, where each device is one
    core, "GPUs" ("GPU") otherwise. ``cluster`` is a ``Cluster`` or its text as plans and reports keep it
    (``str(cluster)``, e.g. ``2xcpu (pcie)``, or a spec such as ``2xcpu``); text that names no known hardware
    reads as GPUs."""
    try:
        kind = (cluster if isinstance(cluster, Cluster) else Cluster.from_text(cluster)).spec.kind
    except ConfigError:
        kind = "gpu"
    if kind == "cpu":
        return "cores" if plural else "core"
    return "GPUs" if plural else "GPU"
