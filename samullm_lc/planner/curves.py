"""Progress curves: how fast each model's engine gets through work under each execution plan.

Each (model, option) is simulated standalone: the model's requests all queued at time 0, spread
round-robin over the replicas; one replica is simulated and stands for all of them, as a scale model
(every k-th request on an engine with 1/k of the batch limits and KV cache, steps priced at k times
their features; ``fit_curve``). From the run we fit a two-number curve used inside the search, where
simulating every candidate stage would be far too slow:

- ``tail``: the seconds from the last request's admission to the end of the run (the last batch drains);
- ``rate``: tokens (prompt + output) per second the whole plan processes before that.

A fresh engine needs ``w / rate + tail`` for ``w`` tokens of work; a running one ``w / rate +
min(tail, w / rate)`` (part of its tail is behind it when little work is left). The chosen plan is
always re-simulated faithfully (``replay``); the curves only rank candidates.

Per model and GPU count only the fastest option is offered to the stage search (as in SamuLLM). Options
are simulated lazily, the first time the search asks for a GPU count, and cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from samullm_lc.costmodel.latency.wrappers import ScaledLatency
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.costmodel.simulator import simulate
from samullm_lc.planner.options import EngineOption, ModelOptions
from samullm_lc.planner.workload import Workload

MAX_SCALE = 8
"""Largest factor a replica's engine and requests are shrunk by when fitting a curve (``fit_curve``)."""
MIN_SCALED_REQUESTS = 128
"""A scale model keeps at least this many requests."""
BATCHES_SIMULATED = 6
"""By default a longer share is cut to this many batches of the scale model (as many sequences as its batch
limit and KV cache hold at the mean length); the rest is added at the fitted rate. More batches make the
curves of engines under KV pressure more accurate and planning slower (docs/results/planner-curve-accuracy.md)."""
REPLICATED_MIN_BATCHES = 6
"""A data-parallel option whose replicas each get at least this many batches of requests takes its curve from
the single-replica option's instead of its own simulation (``ModelCurves._replicated``)."""


@dataclass(slots=True)
class EngineCurve:
    """Speed of one model under one option, fitted on its standalone simulation."""

    option: EngineOption
    rate: float  # tokens per second, all replicas together, while requests queue
    tail: float  # seconds from the last admission to the end of the run
    standalone_seconds: float
    load_seconds: float

    def remaining_seconds(self, tokens: float, *, fresh: bool = False) -> float:
        """Seconds to finish ``tokens`` tokens of work; a ``fresh`` engine always pays a whole tail."""
        bulk = tokens / self.rate
        return bulk + (self.tail if fresh else min(self.tail, bulk))

    def tokens_left(self, tokens: float, seconds: float, *, fresh: bool = False) -> float:
        """Tokens still to do after running ``seconds`` seconds on ``tokens`` tokens of work."""
        left = self.remaining_seconds(tokens, fresh=fresh) - seconds
        if left <= 0.0:
            return 0.0
        if left >= 2.0 * self.tail:
            return min(tokens, (left - self.tail) * self.rate)
        return min(tokens, left * self.rate / 2.0)

    def in_flight_tokens(self) -> float:
        """Tokens of partly done requests in a busy engine: about half the work of a tail."""
        return 0.5 * self.rate * self.tail


def scale_factor(scheduler: SchedulerConfig, prompt: np.ndarray, output: np.ndarray) -> int:
    """The largest power of two (at most ``MAX_SCALE``) the engine and request set can be shrunk by."""
    longest = scheduler.blocks_for(int((prompt + output).max(initial=1)))
    k = MAX_SCALE
    while k > 1 and (prompt.size < MIN_SCALED_REQUESTS * k or scheduler.max_num_seqs < 16 * k
                     or scheduler.max_num_batched_tokens < 1024 * k or scheduler.num_kv_blocks // k <= longest):
        k //= 2
    return k


def batch_size(scheduler: SchedulerConfig, prompt: np.ndarray, output: np.ndarray) -> int:
    """Sequences the engine runs at once on these requests: its batch limit, or what its KV cache holds at
    their mean length."""
    mean_length = float((prompt + output).mean()) if prompt.size else 1.0
    return max(1, min(scheduler.max_num_seqs, int(scheduler.kv_capacity_tokens // mean_length)))


def fit_curve(option: EngineOption, model_options: ModelOptions, prompt: np.ndarray, output: np.ndarray, *,
              batches: int = BATCHES_SIMULATED) -> EngineCurve:
    """Simulate one replica of ``option`` on its round-robin share of the requests and fit the curve.

    The replica is simulated as a scale model: every k-th request, on an engine with 1/k of the batch
    limits and KV blocks, each step priced as the full step with k times its features. It keeps the
    batch dynamics (KV pressure, preemption, the tail) at a fraction of the cost. A share longer than
    ``batches`` batches is subsampled and its remaining work added at the fitted rate.
    """
    prompt, output = prompt[:: option.replicas], output[:: option.replicas]
    share = float((prompt + output).sum())
    scheduler, latency = model_options.scheduler(option), model_options.latency(option)
    k = scale_factor(scheduler, prompt, output)
    if k > 1:
        scheduler = scheduler.model_copy(update={
            "max_num_seqs": scheduler.max_num_seqs // k,
            "max_num_batched_tokens": scheduler.max_num_batched_tokens // k,
            "num_kv_blocks": scheduler.num_kv_blocks // k,
        })
        latency, prompt, output = ScaledLatency(latency, k), prompt[::k], output[::k]
    keep = max(MIN_SCALED_REQUESTS // 2, batches * batch_size(scheduler, prompt, output))
    if prompt.size > keep:
        step = -(-prompt.size // keep)
        prompt, output = prompt[::step], output[::step]
    result = simulate(scheduler, latency, prompt, output)
    seconds = max(result.total_seconds, 1e-9)
    tail = min(max(0.0, seconds - float(np.nanmax(result.first_token_seconds))), 0.5 * seconds)
    rate = k * float((prompt + output).sum()) / (seconds - tail)
    return EngineCurve(option=option, rate=rate * option.replicas, tail=tail, standalone_seconds=share / rate + tail,
                       load_seconds=model_options.load(option))


@dataclass(slots=True)
class ModelCurves:
    """The simulated options of one model (filled lazily) and the fastest option per GPU count."""

    model_options: ModelOptions
    options: list[EngineOption]
    prompt: np.ndarray
    output: np.ndarray
    batches: int = BATCHES_SIMULATED  # of each simulation (``fit_curve``)
    engine_scale: int = 1  # the replay's engines are this many times smaller, on as many times fewer requests
    curves: dict[EngineOption, EngineCurve] = field(default_factory=dict)
    _best: dict[float, EngineCurve | None] = field(default_factory=dict)
    _efficient: dict[float, EngineCurve] = field(default_factory=dict)
    _counts: list[float] = field(default_factory=list)

    @property
    def model(self) -> str:
        """The model these curves describe."""
        return self.model_options.model

    def curve(self, option: EngineOption) -> EngineCurve:
        """The curve of ``option``, simulated on first use (or derived from one replica's, see ``_replicated``)."""
        curve = self.curves.get(option)
        if curve is None:
            curve = self.curves[option] = self._replicated(option) or self._shrunk(fit_curve(
                option, self.model_options, self.prompt, self.output, batches=self.batches))
        return curve

    def _shrunk(self, curve: EngineCurve) -> EngineCurve:
        """The curve of the replay's engine when it is a scale model (``scale_model.py``): 1/``engine_scale`` of
        the real engine's rate on the subsample's work (so as long as the real engine on all of it), the same
        tail and load."""
        k = self.engine_scale
        if k == 1:
            return curve
        return EngineCurve(option=curve.option, rate=curve.rate / k, tail=curve.tail,
                           standalone_seconds=(curve.standalone_seconds - curve.tail) * k + curve.tail,
                           load_seconds=curve.load_seconds)

    def _replicated(self, option: EngineOption) -> EngineCurve | None:
        """A data-parallel option's curve from its single-replica option's, when every replica's share is long.

        A replica of ``r`` runs every r-th request on the single-replica engine: when its share is many
        batches long, it drains at the same per-replica rate and ends with the same tail, so the option
        processes ``r`` times the tokens per second. Deriving it saves a simulation per option and keeps
        the options of one tensor-parallel degree consistent with each other (fitted separately, each
        carries its own scale-model noise). Short shares are simulated: the tail dominates them.
        """
        if option.replicas == 1 or option.time_sliced:
            return None
        single = EngineOption(tp=option.tp)
        if single not in self.options:
            return None
        prompt, output = self.prompt[:: option.replicas], self.output[:: option.replicas]
        if prompt.size < REPLICATED_MIN_BATCHES * batch_size(self.model_options.scheduler(single), prompt, output):
            return None
        base = self.curve(single)
        total = float((self.prompt + self.output).sum())
        rate = base.rate * option.replicas
        return EngineCurve(option=option, rate=rate, tail=base.tail, standalone_seconds=total / rate + base.tail,
                           load_seconds=self.model_options.load(option))

    def gpu_counts(self) -> list[float]:
        """GPU counts some option of this model occupies, fewest first."""
        if not self._counts:
            self._counts = sorted({option.num_gpus for option in self.options})
        return self._counts

    def best(self, gpus: float) -> EngineCurve | None:
        """The fastest option occupying exactly ``gpus`` GPUs, or None if there is none."""
        if gpus not in self._best:
            candidates = [self.curve(o) for o in self.options if o.num_gpus == gpus]
            self._best[gpus] = min(candidates, key=lambda c: c.standalone_seconds) if candidates else None
        return self._best[gpus]

    def best_up_to(self, gpus: float) -> list[EngineCurve]:
        """The fastest option per GPU count up to ``gpus``, dropping counts no faster than a smaller one.

        Simulates every option up to ``gpus``; the search uses the lazier methods below.
        """
        kept: list[EngineCurve] = []
        for count in self.gpu_counts():
            if count > gpus:
                break
            curve = self.best(count)
            if curve is not None and (not kept or curve.standalone_seconds < kept[-1].standalone_seconds
                                      or curve.option.time_sliced):
                kept.append(curve)
        return kept

    def smallest(self, *, whole: bool = False) -> EngineCurve:
        """The fastest option on the fewest GPUs (on at least one whole GPU if ``whole``)."""
        counts = [g for g in self.gpu_counts() if g >= 1.0 or not whole]
        curve = self.best(counts[0])
        assert curve is not None
        return curve

    def next_faster(self, curve: EngineCurve, spare: float) -> EngineCurve | None:
        """The option on the fewest extra GPUs (at most ``spare``) that is faster than ``curve``."""
        for count in self.gpu_counts():
            if curve.option.num_gpus < count <= curve.option.num_gpus + spare:
                bigger = self.best(count)
                if bigger is not None and bigger.standalone_seconds < curve.standalone_seconds:
                    return bigger
        return None

    def efficient(self, gpus: float) -> EngineCurve:
        """The option with the fewest GPU-seconds on at most ``gpus`` GPUs, walking up from the smallest.

        Usually the smallest; larger when more GPUs speed the model up more than proportionally (a model
        whose smallest plan leaves almost no KV cache).
        """
        if gpus not in self._efficient:
            curve = self.smallest()
            while True:
                bigger = self.next_faster(curve, gpus - curve.option.num_gpus)
                if bigger is None or bigger.option.num_gpus * bigger.standalone_seconds >= (
                        curve.option.num_gpus * curve.standalone_seconds):
                    break
                curve = bigger
            self._efficient[gpus] = curve
        return self._efficient[gpus]

    def known(self) -> list[EngineCurve]:
        """The options simulated so far (at least the smallest)."""
        if not self.curves:
            self.smallest()
        return list(self.curves.values())


def model_curves(workload: Workload, model_options: ModelOptions, options: list[EngineOption], *,
                 batches: int = BATCHES_SIMULATED, engine_scale: int = 1) -> ModelCurves:
    """The (lazy) curves of one model over all its unfinished requests, in FCFS (topological) order."""
    nodes = [workload.nodes[i] for i in workload.model_nodes[model_options.model]]
    prompt = np.concatenate([n.prompt[~n.done] for n in nodes])
    output = np.concatenate([n.output[~n.done] for n in nodes])
    if prompt.size == 0:
        prompt, output = np.ones(1, np.int64), np.ones(1, np.int64)
    return ModelCurves(model_options=model_options, options=options, prompt=prompt, output=output, batches=batches,
                       engine_scale=engine_scale)
