"""samullm_lc: offline multi-LLM pipelines on a planner-driven pool of vLLM engines.

What users call is at the root: the LangChain drop-in (``samullm.offline()``, ``samullm.wrap(chain)``), the
engine pool (``EnginePool``), the app graph and the planner (``AppGraph``, ``Cluster``, ``plan_app``), and the
cost model (sampling then simulation, after SamuLLM, Fang et al. 2025:
``samullm.CostModel("Llama-2-7b-hf", "A100-80GB").estimate(...)``). The cost model and the errors import with
the package; the rest on first use, so ``import samullm_lc`` stays light (LangChain and the planner load only
when asked for).
"""

from importlib import import_module

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
    RequestError,
    SamullmError,
    UnknownHardwareError,
    UnknownModelError,
)

__version__ = "0.1.0"

_ON_FIRST_USE = {
    **dict.fromkeys(("offline", "wrap", "ChatSamullm", "SamullmLLM", "trace", "plan"), "samullm_lc.langchain"),
    **dict.fromkeys(("EnginePool", "RunReport", "GenerationResult", "SamplingSpec"), "samullm_lc.runtime"),
    **dict.fromkeys(("AppGraph", "LLMNode"), "samullm_lc.graph.app_graph"),
    **dict.fromkeys(("Cluster", "ExecutionPlan", "Plan", "plan_app", "evaluate_plan", "replan"), "samullm_lc.planner"),
}
"""Root names imported on first use, and the subpackage that defines each."""


def __getattr__(name: str) -> object:
    """A root name of ``_ON_FIRST_USE``, imported from its subpackage the first time it is asked for."""
    if name in _ON_FIRST_USE:
        value = getattr(import_module(_ON_FIRST_USE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'samullm_lc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ON_FIRST_USE))


__all__ = [
    "HARDWARE",
    "AnalyticLatencyModel",
    "AppGraph",
    "ChatSamullm",
    "Cluster",
    "ConfigError",
    "ContinuousBatchingSimulator",
    "CostModel",
    "DoesNotFitError",
    "EngineError",
    "EnginePool",
    "EngineProfile",
    "Estimate",
    "ExecutionPlan",
    "GenerationResult",
    "Hardware",
    "IterationLatencyModel",
    "LLMNode",
    "LinearLatencyModel",
    "ModelArchitecture",
    "OutputLengthDistribution",
    "Plan",
    "ProfileError",
    "RequestError",
    "RunReport",
    "SamplingSpec",
    "SamullmError",
    "SamullmLLM",
    "SchedulerConfig",
    "SimulationResult",
    "UnknownHardwareError",
    "UnknownModelError",
    "catalogue_names",
    "evaluate_plan",
    "fit_linear_latency",
    "get_hardware",
    "gpu_scheduler_config",
    "offline",
    "plan",
    "plan_app",
    "replan",
    "resolve_architecture",
    "simulate",
    "trace",
    "wrap",
]
