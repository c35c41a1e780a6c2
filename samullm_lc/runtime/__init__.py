"""The runtime: a planner-driven pool of engines (real vLLM or simulated) behind a thread-safe client API."""

from samullm_lc.errors import RequestError
from samullm_lc.runtime.pool import EnginePool
from samullm_lc.runtime.report import RunReport
from samullm_lc.runtime.requests import GenerationResult, SamplingSpec

__all__ = ["EnginePool", "GenerationResult", "RequestError", "RunReport", "SamplingSpec"]
