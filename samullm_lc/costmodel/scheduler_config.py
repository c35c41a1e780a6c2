"""The vLLM scheduler and KV-cache limits that shape continuous batching.

Field names follow vLLM's ``SchedulerConfig`` and ``CacheConfig``; ``num_kv_blocks`` is vLLM's
``cache_config.num_gpu_blocks`` (it counts CPU blocks on the CPU engine).
"""

from __future__ import annotations

import math

from pydantic import ConfigDict, Field, model_validator

from samullm_lc.errors import ConfigError
from samullm_lc.validated import ValidatedModel


class SchedulerConfig(ValidatedModel):
    """Limits of one engine: batch size, token budget per step, KV-cache blocks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_num_seqs: int = Field(256, gt=0, description="Most sequences running at once.")
    max_num_batched_tokens: int = Field(8192, gt=0, description="Token budget of one step.")
    block_size: int = Field(16, gt=0, description="Tokens per KV-cache block.")
    num_kv_blocks: int = Field(gt=1, description="KV-cache blocks of the engine (vLLM's num_gpu_blocks).")
    max_model_len: int = Field(gt=0, description="Longest sequence, prompt plus output, tokens.")
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = Field(0, ge=0, description="Cap on one prefill chunk; 0 = none.")
    watermark: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of blocks kept free when admitting.")

    @model_validator(mode="after")
    def _check(self) -> SchedulerConfig:
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ConfigError(
                f"max_num_batched_tokens={self.max_num_batched_tokens} < max_model_len={self.max_model_len} "
                "without chunked prefill: long prompts could never be scheduled. Enable chunked prefill or "
                "raise max_num_batched_tokens."
            )
        return self

    @property
    def usable_kv_blocks(self) -> int:
        """Blocks requests can hold: vLLM's block pool keeps one of them as its null block."""
        return self.num_kv_blocks - 1

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens the KV cache holds across all running requests."""
        return self.usable_kv_blocks * self.block_size

    def blocks_for(self, num_tokens: int) -> int:
        """KV blocks that ``num_tokens`` tokens of one sequence occupy."""
        return math.ceil(num_tokens / self.block_size)
