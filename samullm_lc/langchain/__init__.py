"""The LangChain drop-in: unchanged pipelines served by the engine pool (``offline()``, ``wrap()``), and
LangChain models of our own for new code (``ChatSamullm``, ``SamullmLLM``); the app graph traced from a
pipeline (``trace``) and its plan (``plan``)."""

from samullm_lc.langchain.models import ChatSamullm, SamullmLLM
from samullm_lc.langchain.planning import plan
from samullm_lc.langchain.session import OfflineSession, UnknownClientModelError, offline
from samullm_lc.langchain.session_options import detect_devices
from samullm_lc.langchain.tracing import trace
from samullm_lc.langchain.wrap import PoolRunnable, wrap

__all__ = ["ChatSamullm", "OfflineSession", "PoolRunnable", "SamullmLLM", "UnknownClientModelError",
           "detect_devices", "offline", "plan", "trace", "wrap"]
