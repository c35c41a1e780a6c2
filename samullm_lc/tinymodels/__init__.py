"""Tiny random-weight models that the real vLLM engine runs on CPU, for tests, demos and benchmarks.

``ensure_tiny_model(name)`` writes a model folder (config, byte-level BPE tokenizer, chat template,
generation config) into a cache and returns its path; load it in vLLM with ``load_format="dummy"``.
"""

from samullm_lc.tinymodels.build import default_cache_dir, ensure_tiny_model, get_spec, model_files
from samullm_lc.tinymodels.specs import TINY_MODELS, TinyModelSpec

__all__ = ["TINY_MODELS", "TinyModelSpec", "default_cache_dir", "ensure_tiny_model", "get_spec", "model_files"]
