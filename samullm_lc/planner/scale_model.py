"""Planning a very large app on a scale model: a uniform subsample of whole inputs on engines shrunk as much.

The faithful replay simulates every request of a plan, step by step, several times per planning run (the
search's plan and the forks it replays): the paper's mixed app at 10,000 inputs (190,000 requests) takes 9 to
13 s of CPU to plan that way. Above ``ScaleModelRule.above_requests`` requests the planner plans on a scale model
instead, as its curves already are (``curves.fit_curve``): the app keeps the requests of a uniform random
subsample of one input in ``scale`` (whole inputs, so routing shares, calls per input and request-level reads are
kept), and every engine of the replay has 1/``scale`` of the batch limit and KV-cache blocks, each of its steps
priced as the full engine's steps it stands for (``ScaleModelLatency``). Model loads are not scaled, so the search
weighs loads against work as on the full app, and the curves are the full engines' at 1/``scale`` of the rate
(``ModelCurves.engine_scale``). The replayed times stand for the full app's: docs/results/planner-scale.md
measures the error against replaying every request (a few per cent, both ways: a KV cache of a few sequences
packs worse than a full one, and the subsample's draw of inputs is not the app's).

An engine option the scale model cannot shrink that much (a KV cache of a few sequences) is left out of its plan
space. ``Subsample.requests`` maps the subsample's requests back to the app's, so a run's progress
(``RunState``) carries over to a re-plan, and a plan's request counts are the app's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from samullm_lc.costmodel.latency.base import IterationLatencyModel, StepFeatures
from samullm_lc.costmodel.latency.wrappers import LatencyWrapper
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.errors import DoesNotFitError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.planner.options import EngineOption, ModelOptions

MIN_SCALED_SEQS = 8
"""A shrunk engine still runs at least this many sequences at once (256 sequences at 1/32)."""


@dataclass(frozen=True, slots=True)
class ScaleModelRule:
    """When the planner plans on a scale model, and how large it makes it.

    Apps of up to ``above_requests`` requests are replayed whole (the paper's apps at 5,000 inputs have up to
    95,000); a larger app is planned on a subsample of about ``requests`` requests, as far as an engine of every
    model can be shrunk that much (``scale_limit``).
    """

    above_requests: int = 100_000
    requests: int = 6_000


DEFAULT_SCALE_MODEL = ScaleModelRule()
"""The rule ``plan_app``, ``replan``, ``evaluate_plan`` and ``lower_bound_seconds`` use unless told otherwise."""


@dataclass(slots=True)
class Subsample:
    """The app the planner plans on, and how it stands for the full app."""

    app: AppGraph
    full: AppGraph
    scale: int  # engines of the replay are this many times smaller than the real ones (1: the full app)
    requests: dict[str, np.ndarray] | None  # per node, the full app's index of each of its requests; None: all

    def full_count(self, node: str, count: int) -> int:
        """A count of the node's requests in the subsample as a count in the full app (in proportion)."""
        if self.requests is None:
            return count
        have, full = self.requests[node].size, self.full.node(node).num_requests
        return full if count >= have else min(full, round(count * full / have))

    def progress(self, finished: dict[str, list[int]], outputs: dict[str, dict[int, int]]
                 ) -> tuple[dict[str, np.ndarray], dict[str, dict[int, int]]]:
        """A run's finished requests and observed output tokens (``RunState``: the full app's nodes and request
        indices) on the subsample's requests; those of dropped inputs are left out."""
        if self.requests is None:
            return {node: np.asarray(r, dtype=np.int64) for node, r in finished.items()}, outputs
        local: dict[str, np.ndarray] = {}
        for node, kept in self.requests.items():
            local[node] = np.full(self.full.node(node).num_requests, -1, dtype=np.int64)
            local[node][kept] = np.arange(kept.size)
        done = {node: mapped[mapped >= 0] for node, requests in finished.items() if node in local
                for mapped in [local[node][np.asarray(requests, dtype=np.int64)]]}
        known = {node: {int(local[node][r]): t for r, t in tokens.items() if local[node][r] >= 0}
                 for node, tokens in outputs.items() if node in local}
        return done, known


def choose_scale(app: AppGraph, model_options: dict[str, ModelOptions], rule: ScaleModelRule | None) -> int:
    """The subsample factor for ``app``: 1 under the rule's threshold, else the least power of two that brings the
    app to the rule's size, at most what some engine of every model can be shrunk by. Powers of two divide the
    engines' batch limits (256 or 1,024 sequences), which would otherwise round down."""
    total = sum(node.num_requests for node in app.nodes)
    if rule is None or total <= rule.above_requests:
        return 1
    wanted = 1 << max(0, math.ceil(math.log2(total / rule.requests)))
    most = min([app.inputs_count, *(max(scale_limit(s) for s in options.schedulers.values())
                                    for options in model_options.values())])
    return min(wanted, 1 << (max(1, most).bit_length() - 1))


def scale_limit(scheduler: SchedulerConfig, longest_tokens: int | None = None) -> int:
    """The largest factor an engine can be shrunk by: at least ``MIN_SCALED_SEQS`` sequences and the KV blocks of
    its longest sequence (``longest_tokens``, at most its context window, which it is if not given) left to it."""
    longest = scheduler.max_model_len if longest_tokens is None else min(longest_tokens, scheduler.max_model_len)
    return max(1, min(scheduler.max_num_seqs // MIN_SCALED_SEQS,
                      scheduler.num_kv_blocks // (scheduler.blocks_for(longest) + 1)))


def shrinkable(options: ModelOptions, option: EngineOption, scale: int, longest_tokens: int) -> bool:
    """Whether the scale model can shrink an engine of this option by ``scale`` for sequences of up to
    ``longest_tokens``. One that cannot (a KV cache of only a few sequences, a small share of a GPU) is left out
    of the scale model's plan space."""
    if scale == 1:
        return True
    try:
        return scale_limit(options.scheduler(option), longest_tokens) >= scale
    except DoesNotFitError:
        return False


def shrunk_engine(scheduler: SchedulerConfig, latency: IterationLatencyModel, scale: int, longest_tokens: int
                  ) -> tuple[SchedulerConfig, IterationLatencyModel]:
    """One replica's limits and step latency in the scale model; DoesNotFitError if it cannot be shrunk that much
    (a small memory share: ``scale_limit``). The token budget of a step is kept: with 1/``scale`` of it most
    prompts would need chunked prefill, which the simulator steps through one step at a time (twice the planning
    time at 1/10)."""
    if scale == 1:
        return scheduler, latency
    if scale_limit(scheduler, longest_tokens) < scale:
        raise DoesNotFitError(f"a 1/{scale} scale model of an engine of {scheduler.max_num_seqs} sequences and "
                              f"{scheduler.num_kv_blocks} KV blocks cannot hold a {longest_tokens}-token sequence; "
                              "plan or evaluate with scale_model=None")
    shrunk = scheduler.model_copy(update={
        "max_num_seqs": scheduler.max_num_seqs // scale,
        "num_kv_blocks": scheduler.num_kv_blocks // scale,
    })
    return shrunk, ScaleModelLatency(latency, scale, scheduler.max_num_batched_tokens)


class ScaleModelLatency(LatencyWrapper):
    """Prices a step of the scale model as the full engine's steps it stands for: its features ``factor`` times
    over, the prefill spread over as many steps as the full engine's token budget needs (the shrunk engine keeps
    the whole budget, so one of its steps may admit ``factor`` times what the full engine admits in one), the
    decodes in the first of them. (Pricing one step of ``factor`` times the budget would also make the analytic
    latency model tabulate its step costs up to that many tokens: a third of the planning time at 1/32.)"""

    def __init__(self, inner: IterationLatencyModel, factor: int, budget_tokens: int) -> None:
        super().__init__(inner)
        self.factor = factor
        self.budget = budget_tokens

    def _seconds(self, features: StepFeatures) -> np.ndarray:
        k, inner = self.factor, self.inner
        prefill_tokens, prefill_seqs, decode_seqs, context, pairs = features
        if all(isinstance(v, (int, float, np.number)) for v in features):  # the simulator's steps, one by one
            steps = max(1, -(-int(k * prefill_tokens) // self.budget))
            tokens, seqs = -(-int(k * prefill_tokens) // steps), -(-int(k * prefill_seqs) // steps)
            first = inner.step_seconds(tokens, seqs, k * decode_seqs, k * context, k * pairs / steps)
            return first if steps == 1 else first + (steps - 1) * inner.step_seconds(tokens, seqs, 0, 0,
                                                                                        k * pairs / steps)
        total = k * np.asarray(prefill_tokens, dtype=np.int64)
        steps = np.maximum(1, -(-total // self.budget))
        tokens, seqs = -(-total // steps), -(-(k * np.asarray(prefill_seqs, dtype=np.int64)) // steps)
        split = k * np.asarray(pairs, dtype=np.float64) / steps
        first = np.asarray(inner.step_seconds(tokens, seqs, k * np.asarray(decode_seqs), k * np.asarray(context),
                                              split), dtype=np.float64)
        if not (steps > 1).any():
            return first
        return first + (steps - 1) * np.asarray(inner.step_seconds(tokens, seqs, 0, 0, split), dtype=np.float64)


def subsample(app: AppGraph, scale: int, *, seed: int = 0) -> Subsample:
    """The app on a uniform random subsample of one input in ``scale`` (whole inputs, without replacement).

    Each node keeps its requests for the kept inputs, in order; a request still reads the requests it read
    (a read of a request of a dropped input, which only a read across inputs can be, is dropped). Nodes that
    gave no request-level fields keep none, so request i still reads request i.
    """
    if scale == 1:
        return Subsample(app=app, full=app, scale=1, requests=None)
    have = app.inputs_count
    count = max(1, round(have / scale))
    chosen = np.sort(np.random.default_rng([seed, have, count]).choice(have, count, replace=False))
    rank = np.full(have, -1, dtype=np.int64)
    rank[chosen] = np.arange(count)
    kept: dict[str, np.ndarray] = {}
    new_index: dict[str, np.ndarray] = {}
    for node in app.nodes:  # first every node's kept requests: the nodes of a loop read each other
        keep = kept[node.name] = np.flatnonzero(rank[app.input_of(node.name)] >= 0)
        new_index[node.name] = np.full(node.num_requests, -1, dtype=np.int64)
        new_index[node.name][keep] = np.arange(keep.size)
    renumber = {name: index.tolist() for name, index in new_index.items()}  # plain lists: read per request
    nodes = []
    for node in app.nodes:
        name, keep = node.name, kept[node.name]
        if keep.size == 0:
            continue
        update: dict[str, object] = {"input_tokens": [node.input_tokens[i] for i in keep.tolist()]}
        if node.inputs is not None:
            update["inputs"] = rank[np.asarray(node.inputs)[keep]].tolist()
        if node.upstream_requests is not None:
            update["upstream_requests"] = {
                upstream: [[j for j in (renumber[upstream][r] for r in lists[i]) if j >= 0] for i in keep.tolist()]
                for upstream, lists in node.upstream_requests.items() if upstream == name or kept[upstream].size}
            update["depends_on"] = [u for u in node.depends_on if kept[u].size]
        nodes.append(node.model_copy(update=update))
    small = AppGraph(name=app.name, description=app.description, num_inputs=count if app.num_inputs else None,
                     nodes=nodes)
    return Subsample(app=small, full=app, scale=scale, requests={node.name: kept[node.name] for node in nodes})
