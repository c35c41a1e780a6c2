"""Output-length distributions: how many tokens each request of a batch job will generate.

The time of a vLLM batch job depends on every request's output length, which is unknown until it finishes.
We sample lengths from an empirical distribution (by default the ShareGPT first replies shipped with the
package) and, during a run, refine it with the lengths observed so far. Requests cut by ``max_tokens`` or the
context window are *censored*: their true length is only known to be at least what was produced, so the
estimators here are Kaplan-Meier (product-limit) estimators over per-token stop hazards, not plain histograms.

Lengths are in tokens. A distribution is a finite support ``values`` with ``probabilities``; when
``tail_hazard`` is h > 0, the probability of the last value is the mass *at or beyond* it and the length there
continues geometrically: P(L = max(values) + j) = p_last * h * (1 - h) ** j for j >= 0.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
from pydantic import ConfigDict, model_validator

from samullm_lc.errors import ConfigError
from samullm_lc.validated import ValidatedModel

_SUM_TOLERANCE = 1e-6  # probabilities may miss 1 by this much; they are then normalised
_RENORMALISE_ABOVE = 1e-12  # below this error the probabilities are kept bit-for-bit (stable JSON round-trip)
_NEGLIGIBLE_MASS = 1e-12  # survival mass below this beyond the last stop is dropped, not given a tail
_TABLE = "sharegpt_lengths.json"


class OutputLengthDistribution(ValidatedModel):
    """A distribution of request lengths in tokens, with an optional geometric tail beyond ``max(values)``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    values: list[int]
    probabilities: list[float]
    tail_hazard: float = 0.0
    source: str = ""

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "values" not in data or "probabilities" not in data:
            return data
        values = np.asarray(data["values"])
        probabilities = np.asarray(data["probabilities"], dtype=float)
        if values.ndim != 1 or values.size == 0:
            raise ConfigError("OutputLengthDistribution: 'values' must be a non-empty list of lengths in tokens")
        if probabilities.shape != values.shape:
            raise ConfigError(
                f"OutputLengthDistribution: 'values' has {values.size} entries but 'probabilities' has "
                f"{probabilities.size}; give one probability per value"
            )
        if not np.issubdtype(values.dtype, np.number) or np.any(values != np.round(values)):
            raise ConfigError("OutputLengthDistribution: 'values' must be whole numbers of tokens")
        if values.min() < 1:
            raise ConfigError(
                f"OutputLengthDistribution: 'values' must be >= 1 token (got {values.min()}); drop non-positive lengths"
            )
        if np.any(np.diff(values) <= 0):
            raise ConfigError(
                "OutputLengthDistribution: 'values' must be strictly ascending; sort them and merge duplicates"
            )
        if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0:
            raise ConfigError("OutputLengthDistribution: 'probabilities' must be finite and >= 0")
        total = float(probabilities.sum())
        if abs(total - 1.0) > _SUM_TOLERANCE:
            raise ConfigError(
                f"OutputLengthDistribution: 'probabilities' sum to {total:.9g}, not 1; divide them by their sum "
                "(or build the distribution with from_samples)"
            )
        hazard = float(data.get("tail_hazard", 0.0))
        if not 0.0 <= hazard <= 1.0:
            raise ConfigError(
                f"OutputLengthDistribution: 'tail_hazard' must be a per-token probability in [0, 1] (got {hazard})"
            )
        data = dict(data)
        data["values"] = [int(v) for v in values]
        if abs(total - 1.0) > _RENORMALISE_ABOVE:
            data["probabilities"] = (probabilities / total).tolist()
        return data

    # ---- constructors ------------------------------------------------------------------------------
    @classmethod
    def sharegpt(cls) -> OutputLengthDistribution:
        """Output lengths (tokens) of the first gpt replies in ShareGPT V3, from the shipped table."""
        return _sharegpt("output_lengths")

    @classmethod
    def sharegpt_input_lengths(cls) -> OutputLengthDistribution:
        """Prompt lengths (tokens) of the first human turns in ShareGPT V3, from the shipped table."""
        return _sharegpt("input_lengths")

    @classmethod
    def fixed(cls, length: int) -> OutputLengthDistribution:
        """Every request generates exactly ``length`` tokens."""
        if int(length) != length or length < 1:
            raise ConfigError(f"fixed(length={length!r}): the length must be a whole number of tokens >= 1")
        return cls(values=[int(length)], probabilities=[1.0], source=f"fixed {int(length)} tokens")

    @classmethod
    def from_samples(cls, lengths: Any, censored: Any = None, source: str = "") -> OutputLengthDistribution:
        """Kaplan-Meier estimate from observed lengths (tokens); ``censored[i]`` marks a request cut short."""
        natural, cut = _split_samples(lengths, censored, "from_samples")
        return _product_limit(natural, cut, prior=None, prior_weight=0.0, source=source or "observed samples")

    def refined(self, lengths: Any, censored: Any = None, prior_weight: float = 50.0) -> OutputLengthDistribution:
        """Blend this distribution (worth ``prior_weight`` pseudo-requests) with observed lengths (tokens)."""
        if not math.isfinite(prior_weight) or prior_weight < 0:
            raise ConfigError(f"refined(prior_weight={prior_weight!r}): the weight must be a finite number >= 0")
        natural, cut = _split_samples(lengths, censored, "refined", allow_empty=True)
        if natural.size + cut.size == 0:
            return self
        source = f"{self.source or 'prior'} refined with {natural.size + cut.size} observations"
        return _product_limit(natural, cut, prior=self, prior_weight=float(prior_weight), source=source)

    # ---- use ---------------------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        rng: np.random.Generator,
        *,
        max_tokens: int | Any | None = None,
        input_lengths: Any = None,
        max_model_len: int | None = None,
    ) -> np.ndarray:
        """Draw ``n`` lengths (int64 tokens, >= 1), clipped to ``max_tokens`` and ``max_model_len - input``."""
        if int(n) != n or n < 0:
            raise ConfigError(f"sample(n={n!r}): n must be a whole number >= 0")
        n = int(n)
        values = np.asarray(self.values, dtype=np.int64)
        cdf = np.cumsum(self.probabilities)
        index = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
        np.minimum(index, values.size - 1, out=index)
        out = values[index]
        if 0.0 < self.tail_hazard < 1.0:
            in_tail = np.flatnonzero(index == values.size - 1)
            out[in_tail] += rng.geometric(self.tail_hazard, in_tail.size) - 1
        cap = _caps(n, max_tokens, input_lengths, max_model_len)
        if cap is not None:
            np.minimum(out, cap, out=out)
        return out

    def mean(self, max_tokens: int | None = None) -> float:
        """Expected length in tokens, after clipping at ``max_tokens`` when given."""
        if max_tokens is not None and (int(max_tokens) != max_tokens or max_tokens < 1):
            raise ConfigError(f"mean(max_tokens={max_tokens!r}): max_tokens must be a whole number >= 1")
        values = np.asarray(self.values, dtype=float)
        p = np.asarray(self.probabilities)
        h = self.tail_hazard
        cap = math.inf if max_tokens is None else float(max_tokens)
        if h <= 0.0:
            return float(np.dot(p, np.minimum(values, cap)))
        head = float(np.dot(p[:-1], np.minimum(values[:-1], cap)))
        anchor = values[-1]
        if anchor >= cap:
            tail = cap
        elif math.isinf(cap):
            tail = anchor + (1.0 - h) / h
        else:
            tail = anchor + (1.0 - h) * (1.0 - (1.0 - h) ** (cap - anchor)) / h
        return head + float(p[-1]) * tail

    def quantile(self, q: float) -> int:
        """Smallest length L (tokens) with P(length <= L) >= q."""
        if not 0.0 <= q <= 1.0:
            raise ConfigError(f"quantile(q={q!r}): q must be a probability in [0, 1]")
        cdf = np.cumsum(self.probabilities)
        index = min(int(np.searchsorted(cdf, q - 1e-12, side="left")), len(self.values) - 1)
        h = self.tail_hazard
        if index < len(self.values) - 1 or h <= 0.0 or h >= 1.0:
            return int(self.values[index])
        before = float(cdf[-2]) if len(cdf) > 1 else 0.0
        remaining = 1.0 - (q - before) / self.probabilities[-1]
        if remaining <= 0.0:
            raise ConfigError(f"quantile(q={q!r}): the geometric tail is unbounded; ask for q < 1")
        steps = math.ceil(math.log(remaining) / math.log1p(-h) - 1e-9) - 1
        return int(self.values[-1]) + max(0, steps)


# ---- helpers -----------------------------------------------------------------------------------------
@cache
def _sharegpt(key: str) -> OutputLengthDistribution:
    table = json.loads(resources.files("samullm_lc.costmodel.data").joinpath(_TABLE).read_text(encoding="utf-8"))
    counts = np.asarray(table[key]["counts"], dtype=float)
    return OutputLengthDistribution(
        values=table[key]["values"],
        probabilities=(counts / counts.sum()).tolist(),
        source=f"{table['source']}; {key}; {table['num_pairs']} pairs; tokens: {table['tokenizer']}",
    )


def _as_lengths(raw: Any, name: str, where: str) -> np.ndarray:
    array = np.asarray(raw)
    if array.ndim != 1:
        raise ConfigError(f"{where}: '{name}' must be a 1-D list of lengths in tokens (got shape {array.shape})")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.number) or np.any(array != np.round(array)):
        raise ConfigError(f"{where}: '{name}' must hold whole numbers of tokens")
    if array.min() < 0:
        bad = int(np.flatnonzero(array < 0)[0])
        raise ConfigError(
            f"{where}: '{name}' has a negative length ({array[bad]} at index {bad}); lengths are >= 0 tokens"
        )
    return array.astype(np.int64)


def _split_samples(lengths: Any, censored: Any, where: str, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return (natural stop lengths, censoring lengths), both int64 tokens."""
    observed = _as_lengths(lengths, "lengths", where)
    if observed.size == 0 and not allow_empty:
        raise ConfigError(f"{where}: 'lengths' is empty; pass at least one observed length in tokens")
    if censored is None:
        flags = np.zeros(observed.size, dtype=bool)
    else:
        flags = np.asarray(censored, dtype=bool)
        if flags.shape != observed.shape:
            raise ConfigError(
                f"{where}: 'censored' has {flags.size} flags but 'lengths' has {observed.size}; "
                "give one flag per observed length"
            )
    natural = np.maximum(observed[~flags], 1)  # a request that stopped at once still took one decode step
    return natural, observed[flags]


def _product_limit(
    natural: np.ndarray,
    cut: np.ndarray,
    prior: OutputLengthDistribution | None,
    prior_weight: float,
    source: str,
) -> OutputLengthDistribution:
    """Kaplan-Meier over lengths 1..M with optional prior pseudo-requests; geometric tail for leftover mass.

    At length l: stops(l) = natural stops at l (+ w * prior P(L = l)); at_risk(l) = requests still running at l,
    i.e. natural stops >= l and censored requests cut at c > l (+ w * prior P(L >= l)). A request cut at c is
    known to run at least c tokens, so it counts as running up to c - 1 and says nothing from c on.
    """
    use_prior = prior is not None and prior_weight > 0.0
    top = max(int(natural.max(initial=0)), int(cut.max(initial=1)) - 1, max(prior.values) if use_prior else 0, 1)
    stops = np.bincount(natural, minlength=top + 2)[: top + 2].astype(float)
    at_risk = np.cumsum(stops[::-1])[::-1]
    cut_counts = np.bincount(cut, minlength=top + 2)[: top + 2].astype(float)
    at_risk[:-1] += np.cumsum(cut_counts[::-1])[::-1][1:]  # cut at c -> running at every l <= c - 1
    prior_hazard = 0.0
    if use_prior:
        pmf, beyond = _dense_pmf(prior, top)
        prior_survival = np.cumsum(pmf[::-1])[::-1] + beyond
        stops += prior_weight * pmf
        at_risk += prior_weight * prior_survival
        prior_hazard = prior.tail_hazard if beyond > 0.0 else 0.0
    if stops[1:].sum() <= 0.0:
        raise ConfigError(
            f"{source}: every observed request was censored, so no stop length was seen; pass some uncensored "
            "lengths, or refine a prior distribution with refined()"
        )
    lengths = np.arange(1, top + 1)
    hazard = np.divide(stops[1 : top + 1], at_risk[1 : top + 1], out=np.zeros(top), where=at_risk[1 : top + 1] > 0)
    hazard = np.clip(hazard, 0.0, 1.0)
    survival = np.concatenate(([1.0], np.cumprod(1.0 - hazard)))  # survival[i] = P(L >= i + 1)
    mass = survival[:-1] * hazard
    leftover = float(survival[-1])
    keep = mass > 0.0
    values = lengths[keep].tolist()
    probabilities = mass[keep].tolist()
    tail_hazard = 0.0
    if leftover > _NEGLIGIBLE_MASS:
        tail_hazard = prior_hazard if prior_hazard > 0.0 else _pooled_hazard(stops[1 : top + 1], at_risk[1 : top + 1])
        values.append(top + 1)
        probabilities.append(leftover)
    total = float(sum(probabilities))
    return OutputLengthDistribution(
        values=values,
        probabilities=[p / total for p in probabilities],
        tail_hazard=tail_hazard,
        source=source,
    )


def _pooled_hazard(stops: np.ndarray, at_risk: np.ndarray) -> float:
    """Constant per-token stop hazard fitted over the upper half of the lengths with stops: sum stops / sum at-risk."""
    last = int(np.flatnonzero(stops > 0)[-1])  # index of the last length with a stop (length last + 1)
    first = last // 2
    return float(np.clip(stops[first : last + 1].sum() / at_risk[first : last + 1].sum(), 1e-9, 1.0))


def _dense_pmf(dist: OutputLengthDistribution, top: int) -> tuple[np.ndarray, float]:
    """P(L = l) for l = 0..top + 1 (index = length) and the mass beyond top + 1; needs top >= max(values)."""
    pmf = np.zeros(top + 2)
    values = np.asarray(dist.values)
    p = np.asarray(dist.probabilities)
    h = dist.tail_hazard
    if h <= 0.0 or h >= 1.0:
        pmf[values] = p
        return pmf, 0.0
    pmf[values[:-1]] = p[:-1]
    anchor = int(values[-1])
    steps = np.arange(top + 2 - anchor)
    pmf[anchor:] = p[-1] * h * (1.0 - h) ** steps
    return pmf, float(p[-1] * (1.0 - h) ** (top + 2 - anchor))


def _caps(n: int, max_tokens: Any, input_lengths: Any, max_model_len: int | None) -> np.ndarray | None:
    """Per-request upper bound on the length (tokens), or None when nothing clips."""
    cap: np.ndarray | None = None
    if max_tokens is not None:
        cap = np.asarray(max_tokens, dtype=np.int64)
        if cap.ndim == 0:
            cap = np.full(n, int(cap), dtype=np.int64)
        if cap.shape != (n,):
            raise ConfigError(
                f"sample: 'max_tokens' has shape {cap.shape} but n={n}; pass one scalar or one value per request"
            )
        if cap.size and cap.min() < 1:
            raise ConfigError(f"sample: 'max_tokens' must be >= 1 token (got {cap.min()})")
    if max_model_len is None:
        return cap
    inputs = np.zeros(n, dtype=np.int64) if input_lengths is None else np.asarray(input_lengths, dtype=np.int64)
    if inputs.ndim == 0:
        inputs = np.broadcast_to(inputs, (n,))
    if inputs.shape != (n,):
        raise ConfigError(
            f"sample: 'input_lengths' has shape {inputs.shape} but n={n}; pass one prompt length per request"
        )
    room = int(max_model_len) - inputs
    if room.size and room.min() < 1:
        bad = int(np.flatnonzero(room < 1)[0])
        raise ConfigError(
            f"sample: input_lengths[{bad}]={inputs[bad]} tokens leaves no room under max_model_len={max_model_len}; "
            "shorten the prompt or raise max_model_len"
        )
    return room if cap is None else np.minimum(cap, room)
