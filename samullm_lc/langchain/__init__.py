"""The LangChain drop-in: unchanged pipelines served by the engine pool (``offline()``, ``wrap()``), and
LangChain models of our own for new code (``ChatSamullm``, ``SamullmLLM``)."""

from samullm_lc.langchain.models import ChatSamullm, SamullmLLM
from samullm_lc.langchain.session import OfflineSession, UnknownClientModelError, detect_devices, offline
from samullm_lc.langchain.wrap import PoolRunnable, wrap

__all__ = ["ChatSamullm", "OfflineSession", "PoolRunnable", "SamullmLLM", "UnknownClientModelError",
           "detect_devices", "offline", "wrap"]
