"""How long vLLM takes to bring a model up on GPUs: read the weights, move them to the devices, start the engine.

Planning several models on one node needs the cost of (re)loading one, which no step-latency model gives.
The estimate is a fixed engine start-up (CUDA context, worker processes, NCCL, a profiling forward pass that
sizes the KV cache, CUDA-graph capture) plus reading every weight byte from host storage once, plus copying
each GPU's shard over its PCIe link.

Calibration: Fang et al. 2025, "Improving the End-to-End Efficiency of Offline Inference for Multi-LLM
Applications Based on Sampling and Simulation" (SamuLLM, arXiv:2503.16893), observe model loads of 11 s to
62 s for 7B to 70B models on A100 GPUs. Taking the ends as a 7B model (13.5 GB) at TP 1 and a 70B model
(138 GB) at TP 4 on A100-80GB, with the PCIe copy at 80% of 32 GB/s, and solving the two equations gives
the two constants below: a 2.48 GB/s storage read and 5.04 s of engine start-up.
"""

from __future__ import annotations

from samullm_lc.costmodel.architecture import ModelArchitecture, resolve_architecture
from samullm_lc.costmodel.hardware import Hardware, get_hardware
from samullm_lc.errors import ConfigError

ENGINE_START_SECONDS = 5.04
"""Fixed part: engine and worker start-up, KV-cache profiling and allocation, CUDA-graph capture."""
STORAGE_READ_BYTES_PER_SECOND = 2.48e9
"""Host storage read rate of safetensors weights (all GPUs' shards come off the same storage)."""
HOST_TO_DEVICE_EFFICIENCY = 0.8
"""Fraction of the PCIe datasheet bandwidth a pinned host-to-device copy reaches."""


def analytic_load_seconds(model: str | ModelArchitecture, hardware: str | Hardware, tp: int = 1) -> float:
    """Seconds from starting vLLM to its first step for ``model`` over ``tp`` GPUs of ``hardware``."""
    if tp < 1:
        raise ConfigError(f"tensor-parallel degree must be at least 1, got {tp}")
    arch = resolve_architecture(model)
    hw = get_hardware(hardware)
    read_seconds = arch.weight_bytes / STORAGE_READ_BYTES_PER_SECOND
    copy_seconds = arch.weight_bytes / tp / (hw.pcie_bandwidth * HOST_TO_DEVICE_EFFICIENCY)
    return ENGINE_START_SECONDS + read_seconds + copy_seconds
