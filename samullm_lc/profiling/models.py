"""Turn a model name given to ``samullm profile`` into engine settings and an architecture."""

from __future__ import annotations

from pathlib import Path

from samullm_lc.costmodel.architecture import ModelArchitecture, resolve_architecture
from samullm_lc.runtime.vllm_engine import EngineSettings
from samullm_lc.tinymodels import TINY_MODELS, ensure_tiny_model


def engine_settings_for(model: str, **settings: object) -> tuple[EngineSettings, ModelArchitecture]:
    """Tiny model names become generated folders with random weights; anything else is used as given."""
    if model in TINY_MODELS:
        folder = ensure_tiny_model(model)
        architecture = ModelArchitecture.from_config_file(folder, name=model)
        return EngineSettings(model=str(folder), **TINY_MODELS[model].vllm_kwargs(), **settings), architecture
    architecture = resolve_architecture(model)
    if Path(model).exists():
        architecture = architecture.model_copy(update={"name": Path(model).name})
    return EngineSettings(model=model, **settings), architecture
