"""samullm_lc: offline multi-LLM pipelines on a planner-driven pool of vLLM engines.

The cost model (sampling then simulation, after SamuLLM, Fang et al. 2025) is public at the root:
``import samullm_lc as samullm; samullm.CostModel("Llama-2-7b-hf", "A100-80GB").estimate(...)``.
"""

from samullm_lc.costmodel.architecture import ModelArchitecture, catalogue_names, resolve_architecture
from samullm_lc.costmodel.estimator import CostModel, Estimate
from samullm_lc.costmodel.hardware import HARDWARE, Hardware, get_hardware
from samullm_lc.costmodel.latency.analytic import AnalyticLatencyModel
from samullm_lc.costmodel.latency.base import IterationLatencyModel
from samullm_lc.costmodel.latency.linear import LinearLatencyModel, fit_linear_latency
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.memory import gpu_scheduler_config
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.costmodel.simulator import ContinuousBatchingSimulator, SimulationResult, simulate
from samullm_lc.errors import (
    ConfigError,
    DoesNotFitError,
    EngineError,
    ProfileError,
    SamullmError,
    UnknownHardwareError,
    UnknownModelError,
)

__version__ = "0.1.0"

_DROP_IN = {"offline", "wrap", "ChatSamullm", "SamullmLLM"}


def __getattr__(name: str) -> object:
    """The LangChain drop-in, imported on first use (``samullm.offline``, ``samullm.wrap``, ...)."""
    if name in _DROP_IN:
        import samullm_lc.langchain as drop_in

        return getattr(drop_in, name)
    raise AttributeError(f"module 'samullm_lc' has no attribute {name!r}")


__all__ = [
    "HARDWARE",
    "ChatSamullm",
    "SamullmLLM",
    "offline",
    "wrap",
    "AnalyticLatencyModel",
    "ConfigError",
    "ContinuousBatchingSimulator",
    "CostModel",
    "DoesNotFitError",
    "EngineError",
    "EngineProfile",
    "Estimate",
    "Hardware",
    "IterationLatencyModel",
    "LinearLatencyModel",
    "ModelArchitecture",
    "OutputLengthDistribution",
    "ProfileError",
    "SamullmError",
    "SchedulerConfig",
    "SimulationResult",
    "UnknownHardwareError",
    "UnknownModelError",
    "catalogue_names",
    "fit_linear_latency",
    "get_hardware",
    "gpu_scheduler_config",
    "resolve_architecture",
    "simulate",
]
