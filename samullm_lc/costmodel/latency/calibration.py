"""Fit the analytic GPU latency model's efficiencies to real A100 operator and all-reduce timings.

The timings (``SAMULLM_GPU_PROFILES``, default ``<repo>/../shared/data/gpu-profiles``) hold per-layer operator
times of eight models for 1..4096 tokens at TP 1, 2, 4, 8 and NCCL all-reduce times on two A100 servers.
Whole models and a quarter of the token counts are kept out of the fit so that the reported errors are
out-of-sample. ``python -m samullm_lc.costmodel.latency.calibration --write`` refits and rewrites the JSON
shipped with the package; the library itself never needs the profiles.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from samullm_lc.costmodel.architecture import resolve_architecture
from samullm_lc.costmodel.hardware import Hardware, get_hardware
from samullm_lc.costmodel.latency.analytic import (
    CALIBRATION_FILE,
    AttentionCalibration,
    CpuCalibration,
    ElementwiseCalibration,
    GemmCalibration,
    GpuCalibration,
    LayerShape,
    LinkCalibration,
    collective_seconds,
    layer_operator_seconds,
)
from samullm_lc.errors import ProfileError

PROFILE_HARDWARE = "A100-80GB"  # the profiles' GPU: decode GEMMs reach 1.6 TB/s, beyond an A100-40GB's 1.56 TB/s
OPERATORS = (
    "emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add",
)
HELD_OUT_MODELS = ("Meta-Llama-3-8B", "CodeLlama-34b-Instruct-hf", "Qwen-72B")
MAX_TOKENS = 4096  # every model is profiled up to here; Llama-3's extra rows up to 32k are left out
HELD_OUT_TOKEN_STRIDE = 4  # every 4th profiled token count (from the 3rd) is held out of the fit
TOPOLOGY_FOLDERS = {"nvswitch": "a100_dgx", "nvlink-pairs": "a100_pairwise_nvlink"}

# Not fitted: the profiles hold no attention kernel and no engine CPU time. See docs/gpu-latency-model.md.
ATTENTION = AttentionCalibration(
    # FlashAttention-2 forward reaches 50-73% of A100 peak (Dao 2023, arXiv:2307.08691); vLLM's varlen,
    # paged variant with mixed chunk lengths sits at the low end.
    prefill_compute_efficiency=0.5,
    # Paged decode attention streams the KV cache in blocks of 16 tokens with per-sequence tails, short of
    # a weight-streaming GEMM's efficiency.
    decode_bandwidth_efficiency=0.6,
)
CPU = CpuCalibration(
    # vLLM V1 (blog.vllm.ai 2025-01-27) moved the API server and detokenisation off the engine loop and
    # keeps a persistent batch; what stays serial per step is schedule + input preparation + sampler
    # bookkeeping, a few hundred microseconds of Python. Before that, the v0.6.0 post (blog.vllm.ai
    # 2024-09-05) found the GPU computing only ~38% of the time for Llama-3-8B on an H100.
    step_seconds=0.5e-3,
    per_seq_seconds=2e-6,
    per_request_seconds=1e-4,
    # float32 logits: cast, temperature, softmax, exponential-race sampling, log-prob gather.
    sampler_logit_passes=6.0,
)


def profiles_root() -> Path:
    """Folder of the GPU profiles: ``$SAMULLM_GPU_PROFILES`` or ``<repo root>/../shared/data/gpu-profiles``."""
    env = os.environ.get("SAMULLM_GPU_PROFILES")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[3]
    return repo_root.parent / "shared" / "data" / "gpu-profiles"


@dataclass(frozen=True)
class OperatorProfiles:
    """Median operator times, seconds, one entry per (model, num_tokens, TP); NaN where not profiled."""

    model: np.ndarray
    tokens: np.ndarray
    tp: np.ndarray
    seconds: dict[str, np.ndarray]

    def select(self, mask: np.ndarray) -> OperatorProfiles:
        """The rows where ``mask`` is true."""
        return OperatorProfiles(self.model[mask], self.tokens[mask], self.tp[mask],
                                {op: v[mask] for op, v in self.seconds.items()})

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class AllReduceProfiles:
    """Median all-reduce times, seconds, per (topology, GPUs, bytes) on one node."""

    topology: np.ndarray
    gpus: np.ndarray
    size_bytes: np.ndarray
    seconds: np.ndarray


def _require(path: Path) -> Path:
    if not path.exists():
        raise ProfileError(f"GPU profiles not found at {path}; set SAMULLM_GPU_PROFILES to the gpu-profiles folder")
    return path


def load_operator_profiles(root: Path | None = None, max_tokens: int = MAX_TOKENS) -> OperatorProfiles:
    """Read every compute/a100/ORG/MODEL/mlp.csv, averaging duplicated (tokens, TP) rows."""
    base = _require((root or profiles_root()) / "compute" / "a100")
    groups: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    for path in sorted(base.glob("*/*/mlp.csv")):
        model = path.parent.name
        with path.open() as handle:
            for row in csv.DictReader(handle):
                tokens, tp = int(row["num_tokens"]), int(row["num_tensor_parallel_workers"])
                if tokens > max_tokens:
                    continue
                medians = {op: float(row[f"time_stats.{op}.median"]) / 1e3 for op in OPERATORS
                           if row.get(f"time_stats.{op}.median")}
                groups.setdefault((model, tokens, tp), []).append(medians)
    keys = sorted(groups)
    seconds = {op: np.array([np.mean([m.get(op, np.nan) for m in groups[k]]) for k in keys]) for op in OPERATORS}
    return OperatorProfiles(
        model=np.array([k[0] for k in keys]),
        tokens=np.array([k[1] for k in keys]),
        tp=np.array([k[2] for k in keys]),
        seconds=seconds,
    )


def load_all_reduce_profiles(root: Path | None = None) -> AllReduceProfiles:
    """Read the single-node all-reduce rows of both A100 servers."""
    base = root or profiles_root()
    topology, gpus, size, seconds = [], [], [], []
    for name, folder in TOPOLOGY_FOLDERS.items():
        with _require(base / "network" / folder / "all_reduce.csv").open() as handle:
            for row in csv.DictReader(handle):
                if row["num_workers"] != row["devices_per_node"]:
                    continue
                topology.append(name)
                gpus.append(int(row["num_workers"]))
                size.append(int(row["size"]))
                seconds.append(float(row["time_stats.all_reduce.median"]) / 1e3)
    return AllReduceProfiles(np.array(topology), np.array(gpus), np.array(size, dtype=np.float64), np.array(seconds))


def held_out_tokens(profiles: OperatorProfiles) -> np.ndarray:
    """Token counts kept out of the fit: every ``HELD_OUT_TOKEN_STRIDE``-th profiled one, from the third."""
    counts = np.unique(profiles.tokens)
    return counts[2::HELD_OUT_TOKEN_STRIDE]


def split(profiles: OperatorProfiles) -> dict[str, OperatorProfiles]:
    """Fit rows, held-out token counts (of fitted models) and held-out models (all token counts)."""
    model_out = np.isin(profiles.model, HELD_OUT_MODELS)
    token_out = np.isin(profiles.tokens, held_out_tokens(profiles))
    return {
        "fit": profiles.select(~model_out & ~token_out),
        "held_out_tokens": profiles.select(~model_out & token_out),
        "held_out_models": profiles.select(model_out),
    }


def predict_operators(
    profiles: OperatorProfiles, cal: GpuCalibration, hw: Hardware | None = None
) -> dict[str, np.ndarray]:
    """Predicted seconds of each profiled operator, row for row."""
    hw = hw or get_hardware(PROFILE_HARDWARE)
    out = {op: np.full(len(profiles), np.nan) for op in OPERATORS}
    for model in np.unique(profiles.model):
        arch = resolve_architecture(str(model))
        for tp in np.unique(profiles.tp[profiles.model == model]):
            rows = (profiles.model == model) & (profiles.tp == tp)
            ops = layer_operator_seconds(LayerShape.of(arch, int(tp)), profiles.tokens[rows], hw, cal)
            for op in OPERATORS:
                out[op][rows] = ops[op]
    return out


def layer_errors(profiles: OperatorProfiles, cal: GpuCalibration) -> np.ndarray:
    """Relative error (predicted / measured - 1) of each row's per-layer time, the sum of its profiled operators."""
    predicted = predict_operators(profiles, cal)
    measured_sum = np.zeros(len(profiles))
    predicted_sum = np.zeros(len(profiles))
    for op in OPERATORS:
        present = ~np.isnan(profiles.seconds[op])
        measured_sum += np.where(present, profiles.seconds[op], 0.0)
        predicted_sum += np.where(present, predicted[op], 0.0)
    return predicted_sum / measured_sum - 1.0


def all_reduce_errors(data: AllReduceProfiles, cal: GpuCalibration) -> np.ndarray:
    """Relative error of each profiled all-reduce."""
    hw = get_hardware(PROFILE_HARDWARE)
    predicted = np.empty(len(data.seconds))
    for topology in np.unique(data.topology):
        for gpus in np.unique(data.gpus[data.topology == topology]):
            rows = (data.topology == topology) & (data.gpus == gpus)
            predicted[rows] = collective_seconds(data.size_bytes[rows], int(gpus), str(topology), hw, cal.links)
    return predicted / data.seconds - 1.0


# ---- fitting ------------------------------------------------------------------------------------------

# name, initial value, lower bound, upper bound (seconds, fractions, tokens, bytes/s)
_COMPUTE_PARAMS = (
    ("gemm.compute_efficiency", 0.75, 0.2, 1.0),
    ("gemm.tokens_half_efficiency", 16.0, 0.0, 2048.0),
    ("gemm.memory_efficiency", 0.8, 0.2, 1.0),
    ("gemm.roofline_sharpness", 3.0, 1.0, 20.0),
    ("gemm.launch_seconds", 5e-6, 0.0, 50e-6),
    ("elementwise.norm_efficiency", 0.5, 0.05, 1.0),
    ("elementwise.rope_efficiency", 0.5, 0.05, 1.0),
    ("elementwise.activation_efficiency", 0.5, 0.05, 1.0),
    ("elementwise.add_efficiency", 0.8, 0.05, 1.0),
    ("elementwise.embedding_efficiency", 0.2, 0.01, 1.0),
    ("elementwise.row_bytes_per_second", 10e9, 1e8, 1e12),
    ("elementwise.launch_seconds", 2e-6, 0.0, 50e-6),
)
_LINK_PARAMS = ("latency_seconds", "latency_per_extra_gpu_seconds", "bandwidth_efficiency")
_LINK_START = (20e-6, 2e-6, 0.6)
_LINK_BOUNDS = ((0.0, 0.0, 0.01), (1e-3, 1e-4, 1.0))


def _round(value: float) -> float:
    """Four significant digits: the fit is not more precise than that."""
    return float(f"{value:.4g}")


def _compute_calibration(x: np.ndarray, links: dict, base: dict | None = None) -> GpuCalibration:
    values: dict[str, dict[str, float]] = {"gemm": {}, "elementwise": {}}
    for (name, *_), value in zip(_COMPUTE_PARAMS, x):
        group, field = name.split(".")
        values[group][field] = float(value)
    return GpuCalibration(
        gemm=GemmCalibration(**values["gemm"]),
        elementwise=ElementwiseCalibration(**values["elementwise"]),
        links=links,
        attention=ATTENTION,
        cpu=CPU,
        **(base or {}),
    )


def _placeholder_links() -> dict[str, LinkCalibration]:
    start = dict(zip(_LINK_PARAMS, _LINK_START))
    return {kind: LinkCalibration(**start) for kind in ("nvswitch", "nvlink-pair", "pcie")}


def fit_compute(profiles: OperatorProfiles) -> np.ndarray:
    """Least squares on log operator time over all profiled operators of the fit rows; returns the parameters."""
    links = _placeholder_links()
    measured = {op: profiles.seconds[op] for op in OPERATORS}

    def residuals(x: np.ndarray) -> np.ndarray:
        predicted = predict_operators(profiles, _compute_calibration(x, links))
        parts = [np.log(predicted[op] / measured[op]) for op in OPERATORS]
        stacked = np.concatenate(parts)
        return stacked[np.isfinite(stacked)]

    start = np.array([p[1] for p in _COMPUTE_PARAMS])
    bounds = (np.array([p[2] for p in _COMPUTE_PARAMS]), np.array([p[3] for p in _COMPUTE_PARAMS]))
    result = least_squares(residuals, start, bounds=bounds, x_scale=np.maximum(np.abs(start), 1e-6),
                           loss="soft_l1", f_scale=0.1)
    return result.x


def _fit_link(kind: str, data: AllReduceProfiles, hw: Hardware) -> LinkCalibration:
    """Least squares on log time of one link kind's rows; the GPU-count slope stays 0 with one GPU count."""
    names = _LINK_PARAMS if len(np.unique(data.gpus)) > 1 else _LINK_PARAMS[::2]
    pick = [_LINK_PARAMS.index(n) for n in names]
    start = np.array(_LINK_START)[pick]
    bounds = (np.array(_LINK_BOUNDS[0])[pick], np.array(_LINK_BOUNDS[1])[pick])

    def link(x: np.ndarray) -> LinkCalibration:
        return LinkCalibration(**{"latency_per_extra_gpu_seconds": 0.0, **dict(zip(names, map(float, x)))})

    def residuals(x: np.ndarray) -> np.ndarray:
        cal = {kind: link(x)}
        predicted = np.empty(len(data.seconds))
        for gpus in np.unique(data.gpus):
            rows = data.gpus == gpus
            predicted[rows] = collective_seconds(data.size_bytes[rows], int(gpus), str(data.topology[rows][0]), hw, cal)
        return np.log(predicted / data.seconds)

    result = least_squares(residuals, start, bounds=bounds, x_scale=np.abs(start), loss="soft_l1", f_scale=0.2)
    return link(np.array([_round(v) for v in result.x]))


def fit_links(data: AllReduceProfiles) -> dict[str, LinkCalibration]:
    """Fit each link kind: nvswitch on the DGX, nvlink-pair and pcie on the paired server's 2- and 4-GPU rows."""
    hw = get_hardware(PROFILE_HARDWARE)
    groups = {"nvswitch": data.topology == "nvswitch",
              "nvlink-pair": (data.topology == "nvlink-pairs") & (data.gpus == 2),
              "pcie": (data.topology == "nvlink-pairs") & (data.gpus > 2)}
    return {kind: _fit_link(kind, _select_all_reduce(data, rows), hw) for kind, rows in groups.items()}


def _select_all_reduce(data: AllReduceProfiles, rows: np.ndarray) -> AllReduceProfiles:
    return AllReduceProfiles(data.topology[rows], data.gpus[rows], data.size_bytes[rows], data.seconds[rows])


def calibrate(root: Path | None = None) -> GpuCalibration:
    """Fit every fitted constant on the fit split and return the complete calibration."""
    profiles = load_operator_profiles(root)
    parts = split(profiles)
    x = np.array([_round(v) for v in fit_compute(parts["fit"])])
    links = fit_links(load_all_reduce_profiles(root))
    provenance = {
        "fitted_models": sorted(set(parts["fit"].model.tolist())),
        "held_out_models": list(HELD_OUT_MODELS),
        "held_out_tokens": [int(t) for t in held_out_tokens(profiles)],
        "notes": {
            "source": "Fitted by samullm_lc.costmodel.latency.calibration on the A100-80GB operator and all-reduce "
                      "timings of the Vidur profiling data (MIT licence); attention and cpu are not fitted.",
            "hardware": PROFILE_HARDWARE,
            "max_tokens": str(MAX_TOKENS),
            "held_out_tokens": f"every {HELD_OUT_TOKEN_STRIDE}th profiled token count from the third",
            "attention": "not fitted: FlashAttention-2 reaches 50-73% of A100 peak (Dao 2023); paged decode "
                         "attention assumed at 60% of HBM bandwidth",
            "cpu": "not fitted: vLLM V1 per-step engine work estimated from the vLLM V1 and v0.6.0 blog posts",
            "links": "nvswitch fitted on the DGX (2, 4, 8 GPUs); nvlink-pair on the paired server at 2 GPUs; "
                     "pcie on the paired server at 4 GPUs, whose ring crosses PCIe",
        },
    }
    return _compute_calibration(x, links, provenance)


def calibration_path() -> Path:
    """Where the shipped calibration JSON lives in the source tree."""
    return Path(__file__).resolve().parents[1] / "data" / CALIBRATION_FILE


def main(argv: list[str] | None = None) -> None:
    """Command line: refit, print the constants and held-out errors, optionally rewrite the shipped JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite samullm_lc/costmodel/data/{CALIBRATION_FILE}")
    args = parser.parse_args(argv)
    cal = calibrate()
    text = cal.model_dump_json(indent=2)
    print(text)
    parts = split(load_operator_profiles())
    for name, part in parts.items():
        errors = np.abs(layer_errors(part, cal))
        print(f"{name}: rows={len(part)} median |err|={np.median(errors):.3f} p90={np.quantile(errors, 0.9):.3f} "
              f"max={errors.max():.3f}")
    if args.write:
        calibration_path().write_text(text + "\n")
        print(f"wrote {calibration_path()}")


if __name__ == "__main__":
    main()
