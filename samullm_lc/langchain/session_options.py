"""What ``offline()``'s arguments mean: the model names clients use, the devices the pool runs on, the tool parser,
LangChain's concurrency setting."""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterable, Mapping
from typing import Any

from samullm_lc.errors import ConfigError
from samullm_lc.planner.cluster import Cluster
from samullm_lc.runtime.backends.ray_nodes import RAY_SCHEME


def model_names(models: Mapping[str, str] | Iterable[str] | None) -> dict[str, str] | None:
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


def cluster_of(devices: str | Cluster | None) -> Cluster:
    if isinstance(devices, Cluster):
        return devices
    if devices is None:
        return Cluster.parse(detect_devices())
    if not isinstance(devices, str):
        raise ConfigError(f"devices must be a cluster such as '8xA100-80GB', a Ray address such as 'ray://auto', "
                          f"or a Cluster; got {type(devices).__name__}")
    if devices.startswith(RAY_SCHEME):
        from samullm_lc.runtime.backends.ray_nodes import describe

        return describe(devices)
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


def asks_for_tool_calls(body: dict[str, Any]) -> bool:
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


def concurrency_token(max_concurrency: int) -> contextvars.Token | None:
    """Set LangChain's own configuration channel (the config every runnable started in this context inherits)
    so ``batch``/``abatch`` keep up to ``max_concurrency`` calls in flight; a value the caller set stays."""
    from langchain_core.runnables.config import var_child_runnable_config

    config = dict(var_child_runnable_config.get() or {})
    if config.get("max_concurrency") is not None:
        return None
    config["max_concurrency"] = max_concurrency
    return var_child_runnable_config.set(config)  # type: ignore[arg-type]
