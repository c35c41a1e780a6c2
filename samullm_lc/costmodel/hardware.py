"""Accelerator specifications: the numbers the analytic latency model and the memory check need.

Figures are the vendors' published datasheet values (dense BF16 tensor-core FLOP/s, HBM bandwidth, memory,
per-direction NVLink and PCIe bandwidth). ``cpu`` is one engine slot of this machine's vLLM CPU engine:
its speed comes only from a measured profile, never from these numbers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from samullm_lc.errors import UnknownHardwareError
from samullm_lc.validated import ValidatedModel

GiB = 1024**3
GB = 10**9


class Hardware(ValidatedModel):
    """One device type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["gpu", "cpu"] = "gpu"
    memory_bytes: int = Field(gt=0, description="Device memory usable by one engine, bytes.")
    peak_flops: float = Field(gt=0, description="Dense BF16 FLOP/s of one device.")
    memory_bandwidth: float = Field(gt=0, description="Device-memory bandwidth, bytes/s.")
    nvlink_bandwidth: float = Field(0.0, ge=0, description="Per-direction NVLink bandwidth per device, bytes/s; 0 if none.")
    pcie_bandwidth: float = Field(gt=0, description="Per-direction PCIe bandwidth per device, bytes/s.")
    devices_per_node: int = Field(8, gt=0)

    @property
    def has_nvlink(self) -> bool:
        return self.nvlink_bandwidth > 0


HARDWARE: dict[str, Hardware] = {
    hw.name: hw
    for hw in (
        Hardware(name="A100-40GB", memory_bytes=40 * GB, peak_flops=312e12, memory_bandwidth=1555 * GB,
                 nvlink_bandwidth=300 * GB, pcie_bandwidth=32 * GB),
        Hardware(name="A100-80GB", memory_bytes=80 * GB, peak_flops=312e12, memory_bandwidth=2039 * GB,
                 nvlink_bandwidth=300 * GB, pcie_bandwidth=32 * GB),
        Hardware(name="H100-80GB", memory_bytes=80 * GB, peak_flops=989e12, memory_bandwidth=3350 * GB,
                 nvlink_bandwidth=450 * GB, pcie_bandwidth=64 * GB),
        Hardware(name="H200", memory_bytes=141 * GB, peak_flops=989e12, memory_bandwidth=4800 * GB,
                 nvlink_bandwidth=450 * GB, pcie_bandwidth=64 * GB),
        Hardware(name="L40S", memory_bytes=48 * GB, peak_flops=362e12, memory_bandwidth=864 * GB,
                 nvlink_bandwidth=0.0, pcie_bandwidth=32 * GB),
        # One vLLM CPU engine slot on this 2-core machine; speed comes from `samullm profile`.
        Hardware(name="cpu", kind="cpu", memory_bytes=4 * GiB, peak_flops=1e11, memory_bandwidth=20 * GB,
                 pcie_bandwidth=10 * GB, devices_per_node=1),
    )
}


def get_hardware(name: str | Hardware) -> Hardware:
    """Look a device type up by name (case-insensitive)."""
    if isinstance(name, Hardware):
        return name
    for key, hw in HARDWARE.items():
        if key.lower() == name.lower():
            return hw
    raise UnknownHardwareError(f"unknown hardware {name!r}: choose one of {', '.join(HARDWARE)}")
