"""The GPUs a plan may use: how many, of which type, and how they are connected.

Topologies: ``nvswitch`` (every GPU of a node reaches every other over NVLink), ``nvlink-pairs`` (NVLink
between GPUs 2k and 2k+1 only, PCIe otherwise) and ``pcie``. A tensor-parallel group never spans nodes,
and is always an aligned block of consecutive GPUs (0-1, 2-3 for TP 2; 0-3, 4-7 for TP 4), so its
all-reduces stay on the links the analytic latency model was calibrated for.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from samullm_lc.costmodel.hardware import Hardware, get_hardware
from samullm_lc.errors import ConfigError
from samullm_lc.limits import CLUSTER_DEVICES
from samullm_lc.validated import ValidatedModel

Topology = Literal["nvswitch", "nvlink-pairs", "pcie"]
_SPEC = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\S+)\s*$")


class Cluster(ValidatedModel):
    """N devices of one type, with a topology; invalid values raise ``ConfigError`` (``validated.py``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hardware: str
    num_gpus: int = Field(description=f"Devices, 1 to {CLUSTER_DEVICES.maximum:,} (``limits.CLUSTER_DEVICES``).")
    topology: Topology = "nvswitch"

    @field_validator("num_gpus")
    @classmethod
    def _check_num_gpus(cls, num_gpus: int) -> int:
        return CLUSTER_DEVICES.check(num_gpus)

    @model_validator(mode="after")
    def _check(self) -> Cluster:
        get_hardware(self.hardware)
        return self

    @classmethod
    def parse(cls, spec: str, topology: Topology | None = None) -> Cluster:
        """Read ``8xA100-80GB`` (count x hardware name); ``ConfigError`` naming the spec if it is not one."""
        match = _SPEC.match(spec)
        if not match:
            raise ConfigError(f"cluster {spec!r} is not COUNTxHARDWARE, e.g. 8xA100-80GB or 4xcpu")
        hw = get_hardware(match.group(2))
        default: Topology = "nvswitch" if hw.has_nvlink else "pcie"
        try:
            return cls(hardware=hw.name, num_gpus=int(match.group(1)), topology=topology or default)
        except ConfigError as exc:
            raise ConfigError(f"cluster {spec!r}: {exc}") from None

    @property
    def spec(self) -> Hardware:
        """The device type's specification."""
        return get_hardware(self.hardware)

    @property
    def devices_per_node(self) -> int:
        """GPUs per machine (a TP group stays inside one)."""
        return min(self.num_gpus, self.spec.devices_per_node)

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
        """The aligned GPU blocks a TP group of size ``tp`` may occupy."""
        if tp not in self.tp_degrees():
            raise ConfigError(
                f"tensor-parallel degree {tp} is not possible on {self.num_gpus} x {self.hardware} "
                f"({self.topology}); choose one of {self.tp_degrees()}"
            )
        per_node = self.devices_per_node
        groups = []
        for node_start in range(0, self.num_gpus, per_node):
            node_end = min(node_start + per_node, self.num_gpus)
            groups.extend(tuple(range(start, start + tp)) for start in range(node_start, node_end - tp + 1, tp))
        return groups

    def __str__(self) -> str:
        return f"{self.num_gpus}x{self.hardware} ({self.topology})"
