"""Analytic iteration latency of vLLM on GPUs we do not have: rooflines calibrated on real A100 operator timings.

A step's time is the sum, per GPU of the tensor-parallel group, of
- the linear layers, each a roofline GEMM (FLOPs against bytes of weights and activations), MoE reading only
  the experts the batch's tokens touch;
- the elementwise kernels (norms, rotary embedding, activation, residual add, embedding lookup);
- attention, analytic (the operator profiles do not contain it): prefill as FLOPs, decode as KV-cache bytes;
- the LM head and the sampler;
- two all-reduces per layer when TP > 1, priced per interconnect topology;
- vLLM v1's CPU work per step (scheduler, input preparation, sampler bookkeeping).

Efficiencies, launch overheads and interconnect constants come from a ``GpuCalibration`` (JSON, fitted by
``samullm_lc.costmodel.latency.calibration``); the GPU's own speed comes from its datasheet figures, which is
what lets an A100 calibration predict H100, H200 and L40S.

Its size is earned by one concern, the GPU step model (a little over 400 lines): the calibration's schema,
the per-operator times it parameterises, and the model that adds them up for a step are read and changed
together (a new calibration constant touches all three).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import ConfigDict, Field

from samullm_lc.costmodel.architecture import ModelArchitecture, resolve_architecture
from samullm_lc.costmodel.hardware import Hardware, get_hardware
from samullm_lc.errors import ConfigError
from samullm_lc.validated import ValidatedModel

TOPOLOGIES: tuple[str, ...] = ("nvswitch", "nvlink-pairs", "pcie")
LinkKind = Literal["nvswitch", "nvlink-pair", "pcie"]
CALIBRATION_FILE = "gpu_calibration.json"
LOGIT_BYTES = 4  # the sampler works on float32 logits


class GemmCalibration(ValidatedModel):
    """Roofline of one dense GEMM: time = launch + smooth_max(compute time, memory time)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    compute_efficiency: float = Field(gt=0, le=1, description="Fraction of peak FLOP/s reached by large GEMMs.")
    tokens_half_efficiency: float = Field(ge=0, description="Tokens at which compute efficiency is half its maximum.")
    memory_efficiency: float = Field(gt=0, le=1, description="Fraction of HBM bandwidth reached streaming weights.")
    roofline_sharpness: float = Field(ge=1, description="p of the p-norm joining compute and memory time.")
    launch_seconds: float = Field(ge=0, description="Fixed time per GEMM kernel.")


class ElementwiseCalibration(ValidatedModel):
    """Memory-bound kernels: time = launch + bytes / min(bandwidth * efficiency, rows * row bandwidth)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    norm_efficiency: float = Field(gt=0, le=1)
    rope_efficiency: float = Field(gt=0, le=1)
    activation_efficiency: float = Field(gt=0, le=1)
    add_efficiency: float = Field(gt=0, le=1)
    embedding_efficiency: float = Field(gt=0, le=1)
    row_bytes_per_second: float = Field(
        gt=0, description="Bandwidth of one thread block; vLLM's norm, rope and activation kernels give a token one."
    )
    launch_seconds: float = Field(ge=0, description="Fixed time per elementwise kernel.")


class LinkCalibration(ValidatedModel):
    """All-reduce over one kind of link: latency + ring traffic / (link bandwidth * efficiency)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_seconds: float = Field(ge=0, description="Fixed time of a collective among two GPUs.")
    latency_per_extra_gpu_seconds: float = Field(ge=0, description="Added fixed time per GPU beyond two.")
    bandwidth_efficiency: float = Field(gt=0, le=1, description="Achieved bus bandwidth / per-direction link bandwidth")


class AttentionCalibration(ValidatedModel):
    """Attention kernels, priced analytically: the operator profiles do not contain them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill_compute_efficiency: float = Field(gt=0, le=1)
    decode_bandwidth_efficiency: float = Field(gt=0, le=1)


class CpuCalibration(ValidatedModel):
    """vLLM v1 engine work on the CPU that the GPU waits for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_seconds: float = Field(ge=0, description="Per step: scheduling, input preparation, output update.")
    per_seq_seconds: float = Field(ge=0, description="Per scheduled sequence and step.")
    per_request_seconds: float = Field(ge=0, description="Admitting one request (tokenising, adding it).")
    sampler_logit_passes: float = Field(ge=0, description="Passes of the GPU sampler over the float32 logits.")


class GpuCalibration(ValidatedModel):
    """All constants of the analytic GPU latency model, with where they come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gemm: GemmCalibration
    elementwise: ElementwiseCalibration
    links: dict[LinkKind, LinkCalibration]
    attention: AttentionCalibration
    cpu: CpuCalibration
    fitted_models: list[str] = Field(default_factory=list)
    held_out_models: list[str] = Field(default_factory=list)
    held_out_tokens: list[int] = Field(default_factory=list)
    notes: dict[str, str] = Field(default_factory=dict)


@cache
def default_calibration() -> GpuCalibration:
    """The calibration shipped with the package (``costmodel/data/gpu_calibration.json``)."""
    text = resources.files("samullm_lc.costmodel.data").joinpath(CALIBRATION_FILE).read_text()
    return GpuCalibration.model_validate_json(text)


# ---- kernel pricing (vectorised over token counts) ----------------------------------------------------


def roofline_seconds(
    flops: np.ndarray, bytes_moved: np.ndarray, tokens: np.ndarray, hw: Hardware, cal: GemmCalibration
) -> np.ndarray:
    """One GEMM kernel: launch + p-norm of compute and memory time; compute efficiency grows with ``tokens``."""
    t = np.asarray(tokens, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        efficiency = cal.compute_efficiency * t / (t + cal.tokens_half_efficiency)
        compute = np.where(t > 0, flops / (hw.peak_flops * efficiency), 0.0)
    memory = bytes_moved / (hw.memory_bandwidth * cal.memory_efficiency)
    p = cal.roofline_sharpness
    return np.where(t > 0, cal.launch_seconds + (compute**p + memory**p) ** (1.0 / p), 0.0)


def gemm_seconds(
    tokens: np.ndarray, k: int, n: int, hw: Hardware, cal: GemmCalibration, dtype_bytes: int = 2
) -> np.ndarray:
    """Time of a dense [tokens x k] @ [k x n] GEMM, weights read once."""
    t = np.asarray(tokens, dtype=np.float64)
    return roofline_seconds(2.0 * t * k * n, (k * n + t * (k + n)) * dtype_bytes, t, hw, cal)


def grouped_gemm_seconds(
    tokens: np.ndarray, experts_read: np.ndarray, k: int, n: int, hw: Hardware, cal: GemmCalibration,
    dtype_bytes: int = 2,
) -> np.ndarray:
    """Time of an MoE GEMM over ``tokens`` routed tokens that reads the weights of ``experts_read`` experts."""
    t = np.asarray(tokens, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_expert = np.where(experts_read > 0, t / experts_read, 0.0)
    return roofline_seconds(2.0 * t * k * n, (experts_read * k * n + t * (k + n)) * dtype_bytes, per_expert, hw, cal)


def elementwise_seconds(
    rows: np.ndarray, bytes_per_row: float, efficiency: float, hw: Hardware, cal: ElementwiseCalibration,
    row_limited: bool = True,
) -> np.ndarray:
    """Time of a memory-bound kernel over ``rows`` rows of ``bytes_per_row`` bytes (read + written)."""
    r = np.asarray(rows, dtype=np.float64)
    bandwidth = hw.memory_bandwidth * efficiency
    if row_limited:
        bandwidth = np.minimum(bandwidth, np.maximum(r, 1.0) * cal.row_bytes_per_second)
    return np.where(r > 0, cal.launch_seconds + r * bytes_per_row / bandwidth, 0.0)


def link_bandwidth(hw: Hardware, kind: LinkKind) -> float:
    """Per-direction bandwidth of one GPU's link of this kind, bytes/s."""
    return hw.pcie_bandwidth if kind == "pcie" else hw.nvlink_bandwidth


def link_kind(topology: str, gpus: int) -> LinkKind:
    """The slowest link a ring over ``gpus`` GPUs of this topology crosses."""
    if topology == "nvswitch":
        return "nvswitch"
    if topology == "nvlink-pairs" and gpus <= 2:
        return "nvlink-pair"
    return "pcie"


def collective_seconds(
    size_bytes: ArrayLike, gpus: int, topology: str, hw: Hardware, links: dict[LinkKind, LinkCalibration],
    traffic_factor: float = 2.0,
) -> np.ndarray:
    """Ring collective time: all-reduce with ``traffic_factor`` 2, all-gather with 1."""
    size = np.asarray(size_bytes, dtype=np.float64)
    if gpus <= 1:
        return np.zeros_like(size)
    kind = link_kind(topology, gpus)
    cal = links[kind]
    latency = cal.latency_seconds + cal.latency_per_extra_gpu_seconds * (gpus - 2)
    traffic = traffic_factor * (gpus - 1) / gpus * size
    return np.where(size > 0, latency + traffic / (link_bandwidth(hw, kind) * cal.bandwidth_efficiency), 0.0)


# ---- one transformer layer -------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerShape:
    """Per-GPU widths of one layer under tensor parallelism."""

    hidden: int
    q_width: int
    kv_width: int
    mlp_width: int
    gated: bool
    experts: int
    experts_per_token: int
    dtype_bytes: int

    @classmethod
    def of(cls, arch: ModelArchitecture, tp: int) -> LayerShape:
        """Split ``arch`` over ``tp`` GPUs the way vLLM does (KV heads replicated when fewer than GPUs)."""
        kv_heads = math.ceil(arch.num_kv_heads / tp)
        return cls(
            hidden=arch.hidden_size,
            q_width=arch.num_attention_heads // tp * arch.head_dim,
            kv_width=kv_heads * arch.head_dim,
            mlp_width=arch.intermediate_size // tp,
            gated=arch.gated_mlp,
            experts=arch.num_experts,
            experts_per_token=arch.experts_per_token,
            dtype_bytes=arch.dtype_bytes,
        )


def expected_distinct_experts(tokens: np.ndarray, experts: int, top_k: int) -> np.ndarray:
    """Expected number of experts routed to by ``tokens`` tokens, each picking ``top_k`` of ``experts`` uniformly."""
    t = np.asarray(tokens, dtype=np.float64)
    if experts <= 1:
        return np.where(t > 0, 1.0, 0.0)
    return experts * (1.0 - (1.0 - top_k / experts) ** t)


def layer_operator_seconds(
    shape: LayerShape, tokens: ArrayLike, hw: Hardware, cal: GpuCalibration
) -> dict[str, np.ndarray]:
    """Seconds of each operator of one layer (named as in the A100 profiles) for ``tokens`` tokens, one GPU."""
    t = np.asarray(tokens, dtype=np.float64)
    g, e, s = cal.gemm, cal.elementwise, shape
    b = s.dtype_bytes
    qkv = s.q_width + 2 * s.kv_width
    up = (2 if s.gated else 1) * s.mlp_width
    ops = {
        "emb": elementwise_seconds(t, 2 * s.hidden * b, e.embedding_efficiency, hw, e),
        "input_layernorm": elementwise_seconds(t, 2 * s.hidden * b, e.norm_efficiency, hw, e),
        "attn_pre_proj": gemm_seconds(t, s.hidden, qkv, hw, g, b),
        "attn_rope": elementwise_seconds(t, 2 * (s.q_width + s.kv_width) * b, e.rope_efficiency, hw, e),
        "attn_post_proj": gemm_seconds(t, s.q_width, s.hidden, hw, g, b),
        "post_attention_layernorm": elementwise_seconds(t, 2 * s.hidden * b, e.norm_efficiency, hw, e),
        "add": elementwise_seconds(t, 3 * s.hidden * b, e.add_efficiency, hw, e, row_limited=False),
    }
    routed = t * s.experts_per_token
    act_bytes = (3 if s.gated else 2) * s.mlp_width * b
    ops["mlp_act"] = elementwise_seconds(routed, act_bytes, e.activation_efficiency, hw, e)
    if s.experts > 1:
        distinct = expected_distinct_experts(t, s.experts, s.experts_per_token)
        ops["moe_router"] = gemm_seconds(t, s.hidden, s.experts, hw, g, b)
        ops["mlp_up_proj"] = grouped_gemm_seconds(routed, distinct, s.hidden, up, hw, g, b)
        ops["mlp_down_proj"] = grouped_gemm_seconds(routed, distinct, s.mlp_width, s.hidden, hw, g, b)
    else:
        ops["mlp_up_proj"] = gemm_seconds(t, s.hidden, up, hw, g, b)
        ops["mlp_down_proj"] = gemm_seconds(t, s.mlp_width, s.hidden, hw, g, b)
    return ops


# ---- the step model ---------------------------------------------------------------------------------


def _validate(arch: ModelArchitecture, hw: Hardware, tp: int, topology: str) -> None:
    """Raise ConfigError for a plan vLLM could not run or this model cannot price."""
    if hw.kind != "gpu":
        raise ConfigError(f"hardware {hw.name!r} is not a GPU; the analytic latency model prices GPUs only, "
                          f"use a measured profile for it")
    if topology not in TOPOLOGIES:
        raise ConfigError(f"unknown topology {topology!r}: choose one of {', '.join(TOPOLOGIES)}")
    if tp < 1:
        raise ConfigError(f"tensor-parallel degree must be at least 1, got {tp}")
    if tp > hw.devices_per_node:
        raise ConfigError(f"tensor-parallel degree {tp} exceeds the {hw.devices_per_node} {hw.name} GPUs of one node; "
                          f"tensor parallelism does not span nodes here")
    if arch.num_attention_heads % tp:
        raise ConfigError(f"tensor-parallel degree {tp} does not divide the {arch.num_attention_heads} attention heads "
                          f"of {arch.name}; pick a divisor")
    if arch.num_kv_heads % tp and tp % arch.num_kv_heads:
        raise ConfigError(f"tensor-parallel degree {tp} and the {arch.num_kv_heads} KV heads of {arch.name} do not "
                          f"divide one another, which vLLM requires")
    if arch.intermediate_size % tp:
        raise ConfigError(f"tensor-parallel degree {tp} does not divide the MLP width {arch.intermediate_size} "
                          f"of {arch.name}")
    if tp > 1 and topology != "pcie" and not hw.has_nvlink:
        raise ConfigError(f"{hw.name} has no NVLink, so topology {topology!r} is impossible; use topology='pcie'")


class CountTable:
    """A function of a non-negative count, tabulated at the integers and linearly interpolated between them.

    Step terms that depend only on the token or sequence count are computed once per count, so pricing
    100,000 steps costs a few array lookups instead of dozens of roofline evaluations per step.
    """

    LIMIT = 1 << 20  # beyond this count the function is evaluated directly instead of tabulated

    def __init__(self, function: Callable[[np.ndarray], np.ndarray]) -> None:
        self._function = function
        self._table = function(np.arange(4097, dtype=np.float64))

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """The function at non-negative ``counts`` (exact at integers)."""
        if counts.size == 0:
            return np.zeros(counts.shape)
        high = float(counts.max())
        if high + 2 > len(self._table):
            if high + 2 > self.LIMIT:
                return self._function(counts.astype(np.float64))
            size = max(math.ceil(high) + 2, 2 * len(self._table))  # only the new counts are evaluated
            grown = self._function(np.arange(len(self._table), size, dtype=np.float64))
            self._table = np.concatenate([self._table, grown])
        if counts.dtype.kind in "iub":
            return self._table.take(counts)
        index = counts.astype(np.int64)
        if np.array_equal(index, counts):
            return self._table.take(index)
        low_values = self._table.take(index)
        return low_values + (counts - index) * (self._table.take(index + 1) - low_values)


class AnalyticLatencyModel:
    """Iteration latency of vLLM v1 for one (model, GPU, TP degree, topology), from calibrated rooflines."""

    def __init__(
        self, arch: ModelArchitecture, hardware: Hardware, tp: int = 1, topology: str = "nvswitch",
        calibration: GpuCalibration | None = None,
    ) -> None:
        _validate(arch, hardware, tp, topology)
        self.arch = arch
        self.hardware = hardware
        self.tp = tp
        self.topology = topology
        self.calibration = calibration or default_calibration()
        self.per_request_seconds: float = self.calibration.cpu.per_request_seconds
        self._shape = LayerShape.of(arch, tp)
        self._kv_bytes_per_token = 2 * arch.num_layers * self._shape.kv_width * arch.dtype_bytes
        attention = self.calibration.attention
        self._pair_seconds = (arch.attention_flops_per_pair / tp
                              / (hardware.peak_flops * attention.prefill_compute_efficiency))
        self._context_seconds = (self._kv_bytes_per_token
                                 / (hardware.memory_bandwidth * attention.decode_bandwidth_efficiency))
        self._token_table = CountTable(self.per_token_seconds)
        self._seq_table = CountTable(self.per_seq_seconds)

    @classmethod
    def create(
        cls, model: str | ModelArchitecture, hardware: str | Hardware, tp: int = 1, topology: str = "nvswitch",
        calibration: GpuCalibration | None = None,
    ) -> AnalyticLatencyModel:
        """Build from a model name/architecture and a hardware name/spec; ConfigError if the plan is invalid."""
        return cls(resolve_architecture(model), get_hardware(hardware), tp, topology, calibration)

    def __repr__(self) -> str:
        return (f"AnalyticLatencyModel({self.arch.name!r}, {self.hardware.name!r}, tp={self.tp}, "
                f"topology={self.topology!r})")

    # ---- terms, each vectorised over steps ------------------------------------------------------------
    def layers_seconds(self, tokens: np.ndarray) -> np.ndarray:
        """Linear and elementwise kernels of all layers, the embedding lookup and the final norm."""
        ops = layer_operator_seconds(self._shape, tokens, self.hardware, self.calibration)
        per_layer = sum(v for k, v in ops.items() if k != "emb")
        return self.arch.num_layers * per_layer + ops["emb"] + ops["input_layernorm"]

    def attention_seconds(self, tokens: np.ndarray, decode_context_tokens: np.ndarray,
                          prefill_attention_pairs: np.ndarray) -> np.ndarray:
        """Attention kernels (analytic: prefill by FLOPs, decode by KV-cache bytes) and the KV-cache writes."""
        hw, cal, s = self.hardware, self.calibration, self._shape
        prefill = self._pair_seconds * prefill_attention_pairs
        decode = self._context_seconds * decode_context_tokens
        cache_write = elementwise_seconds(tokens, 2 * s.kv_width * s.dtype_bytes, cal.elementwise.add_efficiency,
                                          hw, cal.elementwise)
        kernels = np.where(tokens > 0, cal.gemm.launch_seconds + cache_write, 0.0)
        return prefill + decode + self.arch.num_layers * kernels

    def head_seconds(self, seqs: np.ndarray) -> np.ndarray:
        """LM head on each sequence's last token, logits gathered over TP, and the GPU sampler."""
        hw, cal, arch = self.hardware, self.calibration, self.arch
        vocab_per_gpu = math.ceil(arch.vocab_size / self.tp)
        head = gemm_seconds(seqs, arch.hidden_size, vocab_per_gpu, hw, cal.gemm, arch.dtype_bytes)
        gather = collective_seconds(seqs * arch.vocab_size * arch.dtype_bytes, self.tp, self.topology, hw,
                                    cal.links, traffic_factor=1.0)
        sampler = elementwise_seconds(seqs, cal.cpu.sampler_logit_passes * arch.vocab_size * LOGIT_BYTES,
                                      cal.elementwise.add_efficiency, hw, cal.elementwise, row_limited=False)
        return head + gather + sampler

    def all_reduce_seconds(self, tokens: np.ndarray) -> np.ndarray:
        """Two all-reduces per layer (after attention and after the MLP) plus the embedding's, for TP > 1."""
        size = tokens * self.arch.hidden_size * self.arch.dtype_bytes
        one = collective_seconds(size, self.tp, self.topology, self.hardware, self.calibration.links)
        return (2 * self.arch.num_layers + 1) * one

    def cpu_seconds(self, seqs: np.ndarray) -> np.ndarray:
        """vLLM v1 engine CPU time per step that the GPU waits for."""
        cpu = self.calibration.cpu
        return cpu.step_seconds + cpu.per_seq_seconds * seqs

    def per_token_seconds(self, tokens: np.ndarray) -> np.ndarray:
        """Everything that depends on the step's token count alone: layers, all-reduces, KV-cache writes."""
        none = np.zeros_like(tokens)
        attention = self.attention_seconds(tokens, none, none)
        return self.layers_seconds(tokens) + attention + self.all_reduce_seconds(tokens)

    def per_seq_seconds(self, seqs: np.ndarray) -> np.ndarray:
        """Everything that depends on the step's sequence count alone: LM head, sampler, CPU work."""
        return self.head_seconds(seqs) + self.cpu_seconds(seqs)

    def step_seconds(self, prefill_tokens: ArrayLike, prefill_seqs: ArrayLike, decode_seqs: ArrayLike,
                     decode_context_tokens: ArrayLike, prefill_attention_pairs: ArrayLike) -> np.ndarray:
        """Seconds each step takes; every argument broadcasts to the same shape."""
        p_tokens, p_seqs, d_seqs, d_context, pairs = (np.asarray(a) for a in (
            prefill_tokens, prefill_seqs, decode_seqs, decode_context_tokens, prefill_attention_pairs))
        features = (p_tokens, p_seqs, d_seqs, d_context, pairs)
        shape = np.broadcast_shapes(*(f.shape for f in features))
        if any(f.size and f.min() < 0 for f in features):
            raise ConfigError("step features must be non-negative (token and sequence counts of one engine step)")
        tokens = p_tokens + d_seqs
        total = self._token_table(tokens)
        total = total + self._seq_table(p_seqs + d_seqs)
        total += self._pair_seconds * pairs
        total += self._context_seconds * d_context
        total = np.where(tokens > 0, total, 0.0)
        return total if total.shape == shape else np.broadcast_to(total, shape).copy()
