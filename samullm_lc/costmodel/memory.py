"""Does a model fit a device group, and how many KV-cache blocks does the engine get there?

This follows vLLM's accounting on GPUs: each of the TP GPUs gives ``gpu_memory_utilization`` of its memory;
from that go its share of the weights and the activation peak of the largest step; the rest becomes KV
cache, each GPU holding its share of the KV heads. The activation reserve is an estimate (vLLM measures
it by running a dummy step): a fixed 1 GiB for CUDA graphs and the allocator, plus the step's hidden
states, MLP intermediate and logits.
"""

from __future__ import annotations

from samullm_lc.costmodel.architecture import ModelArchitecture
from samullm_lc.costmodel.hardware import GiB, Hardware
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.errors import ConfigError, DoesNotFitError

GPU_BLOCK_SIZE = 16
MIN_KV_BLOCKS = 64  # below this an engine thrashes: treat the plan as not fitting


def default_batch_limits(hardware: Hardware) -> tuple[int, int]:
    """vLLM's offline (LLM class) defaults: (max_num_batched_tokens, max_num_seqs) for this device."""
    if hardware.kind == "cpu":
        return 4096, 256
    if hardware.memory_bytes >= 70 * GiB and not hardware.name.startswith("A100"):
        return 16384, 1024
    return 8192, 256


def activation_reserve_bytes(arch: ModelArchitecture, tp: int, max_num_batched_tokens: int, max_num_seqs: int) -> float:
    """Per-GPU memory vLLM keeps for the activations of its largest step, bytes (an estimate)."""
    hidden_states = max_num_batched_tokens * arch.hidden_size * arch.dtype_bytes * 4
    mlp = max_num_batched_tokens * arch.intermediate_size / tp * arch.dtype_bytes * 2
    logits = max_num_seqs * arch.vocab_size * 4
    return 1.0 * GiB + hidden_states + mlp + logits


def kv_bytes_per_token_per_gpu(arch: ModelArchitecture, tp: int) -> float:
    """KV-cache bytes one token takes on each GPU: KV heads are split over TP, replicated when fewer than TP."""
    heads_per_gpu = max(1, arch.num_kv_heads // tp)
    return 2 * arch.num_layers * heads_per_gpu * arch.head_dim * arch.dtype_bytes


def gpu_scheduler_config(
    arch: ModelArchitecture,
    hardware: Hardware,
    tp: int = 1,
    *,
    gpu_memory_utilization: float = 0.9,
    memory_fraction: float = 1.0,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    max_model_len: int | None = None,
) -> SchedulerConfig:
    """The engine limits vLLM would end up with for this model on ``tp`` GPUs of ``hardware``.

    ``memory_fraction`` is the share of each GPU this engine may use (below 1 when engines share GPUs).
    Raises DoesNotFitError naming the model and the memory it needs when it does not fit.
    """
    if tp < 1:
        raise ConfigError(f"tensor-parallel degree must be >= 1, got {tp}")
    default_tokens, default_seqs = default_batch_limits(hardware)
    max_num_batched_tokens = max_num_batched_tokens or default_tokens
    max_num_seqs = max_num_seqs or default_seqs
    max_model_len = max_model_len or arch.max_model_len
    usable = hardware.memory_bytes * gpu_memory_utilization * memory_fraction
    weights = arch.weight_bytes / tp
    reserve = activation_reserve_bytes(arch, tp, max_num_batched_tokens, max_num_seqs)
    per_block = kv_bytes_per_token_per_gpu(arch, tp) * GPU_BLOCK_SIZE
    num_blocks = int((usable - weights - reserve) // per_block)
    needed_blocks = max(MIN_KV_BLOCKS, -(-max_model_len // GPU_BLOCK_SIZE))
    if num_blocks < needed_blocks:
        need = (weights + reserve + needed_blocks * per_block) / (gpu_memory_utilization * memory_fraction)
        raise DoesNotFitError(
            f"model {arch.name} does not fit {tp} x {hardware.name}"
            f"{'' if memory_fraction == 1 else f' at {memory_fraction:.0%} of each GPU'}: it needs about "
            f"{need / GiB:.1f} GiB per GPU ({weights / GiB:.1f} GiB weights, {reserve / GiB:.1f} GiB activations, "
            f"{needed_blocks * per_block / GiB:.2f} GiB minimum KV cache) but each GPU has "
            f"{hardware.memory_bytes / GiB:.1f} GiB. Use more GPUs (a higher tensor-parallel degree) or larger GPUs."
        )
    return SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        block_size=GPU_BLOCK_SIZE,
        num_kv_blocks=num_blocks,
        max_model_len=max_model_len,
    )
