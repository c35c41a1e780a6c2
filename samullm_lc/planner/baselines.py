"""The baselines the planner is measured against, as stage policies for the same faithful replay.

- sequential (the SamuLLM authors' "naive"): one model at a time, in topological order, alone on all
  GPUs with the fastest plan that uses them all; its consecutive nodes run in one engine;
- all-at-once: every model that can run starts at once, GPUs split in proportion to each model's work;
  engines are never changed; freed GPUs go to the models still waiting, split the same way;
- muxserve-like (after MuxServe's placement): models packed onto GPUs largest first, each on its smallest
  plan (half a GPU for small models when sharing is allowed), spare GPUs to the model with the most work
  per GPU; engines are never changed; freed GPUs are packed the same way;
- per-model-pools (as Ray Data LLM runs a pipeline: one fixed vLLM actor pool per model): at the start every
  model of the app gets its own slice of the GPUs, in proportion to its work (each at least its smallest
  whole-GPU engine; small models on half a GPU when whole GPUs are too few), filled with data-parallel replicas
  of one tensor-parallel degree (the fastest on the slice); engines are never changed, a downstream model's pool
  waits for its inputs, and a finished model's GPUs stay idle.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from samullm_lc.errors import DoesNotFitError, SamullmError
from samullm_lc.planner.candidates import runnable_models
from samullm_lc.planner.cluster import device_word
from samullm_lc.planner.context import PlanningContext
from samullm_lc.planner.options import EngineOption
from samullm_lc.planner.placement import place
from samullm_lc.planner.stages import Group, StageState, stage_nodes


class SequentialPolicy:
    """Each model alone on all GPUs with its fastest option, in topological order."""

    def __init__(self, ctx: PlanningContext) -> None:
        self.ctx = ctx

    def next_group(self, state: StageState) -> Group:
        """Keep the running model while it can run alone, then start the first model (topologically) that can."""
        unfinished = state.remaining > 0.0
        for model, assignment in state.engines.items():
            if stage_nodes(self.ctx, unfinished, {model}):
                return (assignment,)
        first = next(n for n in range(self.ctx.num_nodes)
                     if unfinished[n] and stage_nodes(self.ctx, unfinished, {self.ctx.node_model[n]}))
        model = self.ctx.node_model[first]
        curves = self.ctx.curves[model]
        gpus = self.ctx.cluster.usable_gpus
        fastest = curves.best(float(gpus)) or curves.best_up_to(gpus)[-1]
        group = place([(model, fastest.option)], self.ctx.cluster, {})
        if group is None:
            raise SamullmError(f"sequential: {model} on {fastest.option.label()} does not fit {self.ctx.cluster}")
        return group


def _with_work(ctx: PlanningContext, state: StageState, wanted: list[tuple[str, EngineOption]]
               ) -> list[tuple[str, EngineOption]]:
    """Drop the models that would have no node to run next to the others (their input is not running)."""
    while wanted:
        nodes = stage_nodes(ctx, state.remaining > 0.0, {m for m, _ in wanted})
        busy = {ctx.node_model[n] for n in nodes}
        if len(busy) == len(wanted):
            return wanted
        wanted = [(m, o) for m, o in wanted if m in busy]
    return wanted


WorkMeasure = Callable[[PlanningContext, StageState, str], float]
"""A model's remaining work, as the baselines split GPUs by it: (context, state, model) -> GPU-seconds."""


def gpu_seconds_left(ctx: PlanningContext, state: StageState, model: str) -> float:
    """GPU-seconds of the model's remaining work on its smallest whole-GPU option: the baselines' measure of work."""
    option = ctx.curves[model].smallest(whole=True).option
    tokens = float(sum(state.remaining[n] for n in ctx.model_nodes(model)))
    return option.num_gpus * ctx.curves[model].curve(option).remaining_seconds(tokens)


class _StaticPolicy:
    """Running engines are kept as they are; free GPUs go to waiting models by ``_allocate``."""

    def __init__(self, ctx: PlanningContext) -> None:
        self.ctx = ctx

    def next_group(self, state: StageState) -> Group:
        """The running engines that still have work, plus waiting models on the free GPUs. Running engines whose
        requests all wait on a model without GPUs (a loop across models) are stopped to make room for it."""
        runnable = runnable_models(self.ctx, state)
        kept = [(m, a.option) for m, a in state.engines.items() if m in runnable]
        waiting = [m for m in runnable if m not in state.engines]
        group = self._group(state, kept, waiting)
        if not group:
            group = self._group(state, _with_work(self.ctx, state, kept), waiting)
        if not group:
            raise SamullmError(f"{type(self).__name__}: no waiting model fits the free {device_word(self.ctx.cluster)} "
                               f"of {self.ctx.cluster}")
        return group

    def _group(self, state: StageState, kept: list[tuple[str, EngineOption]], waiting: list[str]) -> Group | None:
        """``kept`` plus as many of ``waiting`` (dropped from the back) as fit and have work."""
        used = sum(o.num_gpus for _, o in kept)
        while True:
            added = self._allocate(state, waiting, self.ctx.cluster.usable_gpus - used)
            wanted = _with_work(self.ctx, state, kept + added)
            group = place(wanted, self.ctx.cluster, state.engines) if wanted else None
            if group is not None or not waiting:
                return group
            waiting = waiting[:-1]

    def _smallest(self, state: StageState, model: str, *, time_sliced: bool) -> EngineOption:
        """The fastest option on the fewest GPUs (a time-sliced half GPU allowed if ``time_sliced``)."""
        return self.ctx.curves[model].smallest(whole=not time_sliced).option

    def _work(self, state: StageState, model: str) -> float:
        """GPU-seconds of the model's remaining work on its smallest whole-GPU option."""
        return gpu_seconds_left(self.ctx, state, model)

    def _allocate(self, state: StageState, waiting: list[str], free: float) -> list[tuple[str, EngineOption]]:
        raise NotImplementedError

    def _grow(self, picked: dict[str, EngineOption], spare: float, weight: dict[str, float]) -> None:
        """Hand spare GPUs, one option step at a time, to the model with the most work per GPU."""
        while spare >= 1.0:
            steps = []
            for model, option in picked.items():
                curves = self.ctx.curves[model]
                bigger = curves.next_faster(curves.curve(option), spare)
                if bigger is not None:
                    steps.append((weight[model] / option.num_gpus, model, bigger.option))
            if not steps:
                return
            _, model, option = max(steps)
            spare -= option.num_gpus - picked[model].num_gpus
            picked[model] = option


class AllAtOncePolicy(_StaticPolicy):
    """Every runnable model at once, GPUs in proportion to work (each at least its smallest whole-GPU plan)."""

    def _allocate(self, state: StageState, waiting: list[str], free: float) -> list[tuple[str, EngineOption]]:
        """Largest work first: each model's share of the free GPUs is its share of the work."""
        work = {m: self._work(state, m) for m in waiting}
        total = sum(work.values()) or 1.0
        picked: dict[str, EngineOption] = {}
        used = 0.0
        for model in sorted(waiting, key=lambda m: -work[m]):
            curves = self.ctx.curves[model]
            curve = curves.curve(self._smallest(state, model, time_sliced=False))
            target = min(free - used, max(curve.option.num_gpus, free * work[model] / total))
            while (bigger := curves.next_faster(curve, target - curve.option.num_gpus)) is not None:
                curve = bigger
            if used + curve.option.num_gpus <= free:
                picked[model] = curve.option
                used += curve.option.num_gpus
        self._grow(picked, free - used, work)
        return list(picked.items())


class MuxServeLikePolicy(_StaticPolicy):
    """Largest models first on their smallest plans (small ones on half a GPU), spare GPUs by work."""

    def _allocate(self, state: StageState, waiting: list[str], free: float) -> list[tuple[str, EngineOption]]:
        size = {m: self.ctx.model_options[m].architecture.weight_bytes for m in waiting}
        crowded = len(waiting) > free
        picked: dict[str, EngineOption] = {}
        used = 0.0
        for model in sorted(waiting, key=lambda m: -size[m]):
            option = self._smallest(state, model, time_sliced=crowded)
            if used + option.num_gpus <= free:
                picked[model] = option
                used += option.num_gpus
        work = {m: self._work(state, m) for m in picked}
        self._grow(picked, free - used, work)
        return list(picked.items())


class PerModelPoolsPolicy:
    """One fixed pool of engines per model for the whole run, as Ray Data LLM runs a pipeline of models.

    The pools are sized and placed once, at the first stage, over every model with work left: each model's slice
    of the GPUs is its share of the GPU-seconds of work (``work``: ``gpu_seconds_left`` unless told), at least its
    smallest whole-GPU engine; a slice raised to that engine takes its GPUs from the largest slice. When the
    smallest engines do not fit together, the models that may run on half a GPU do (least work first), as a Ray
    user would give them fractional GPUs. Each slice is filled with data-parallel replicas of one tensor-parallel
    degree: the one that finishes the model's work soonest on the slice (the most efficient when the slice divides
    evenly); GPUs a degree leaves over go, one replica at a time, to the model with the most work per GPU. Every
    stage runs the same engines; a finished model's engines stop and its GPUs stay idle.
    """

    def __init__(self, ctx: PlanningContext, *, work: WorkMeasure | None = None) -> None:
        self.ctx = ctx
        self.work = work or gpu_seconds_left  # what the slices are in proportion to
        self.pools: Group | None = None  # placed at the first stage, then never changed

    def next_group(self, state: StageState) -> Group:
        """The pools of the models that still have work."""
        if self.pools is None:
            self.pools = self._place(state, self.pool_options(state))
        busy = {self.ctx.node_model[n] for n in range(self.ctx.num_nodes) if state.remaining[n] > 0.0}
        return tuple(a for a in self.pools if a.model in busy)

    def pool_options(self, state: StageState) -> dict[str, EngineOption]:
        """Each model's engines (option) for the whole run; DoesNotFitError if the models cannot all run at once."""
        ctx = self.ctx
        models = [m for m in ctx.models if any(state.remaining[n] > 0.0 for n in ctx.model_nodes(m))]
        work = {m: self.work(ctx, state, m) for m in models}
        shared = self._halves(models, work)
        whole = [m for m in models if m not in shared]
        free = ctx.cluster.usable_gpus - math.ceil(len(shared) / 2)
        slices = self._slices(whole, work, free)
        picked = {m: self._fill(m, slices[m]) for m in whole}
        self._grow(picked, free - sum(o.num_gpus for o in picked.values()), work)
        picked.update({m: EngineOption(1, 1, time_sliced=True) for m in shared})
        return picked

    def _least(self, model: str) -> int:
        """GPUs of the model's smallest whole-GPU engine."""
        return int(self.ctx.curves[model].smallest(whole=True).option.num_gpus)

    def _halves(self, models: list[str], work: dict[str, float]) -> list[str]:
        """The models put on half a GPU so that every model's smallest engine fits at once (none if they fit on
        whole GPUs); DoesNotFitError naming the GPUs needed if they cannot fit even so."""
        least = {m: self._least(m) for m in models}
        can_share = sorted((m for m in models if EngineOption(1, 1, time_sliced=True) in self.ctx.options(m)),
                           key=lambda m: (work[m], m))
        shared: list[str] = []

        def need() -> int:
            return sum(least[m] for m in models if m not in shared) + math.ceil(len(shared) / 2)

        while need() > self.ctx.cluster.usable_gpus:
            if len(shared) == len(can_share):
                engines = ", ".join(f"{m} {least[m]}" for m in models if m not in shared)
                one, many = device_word(self.ctx.cluster, plural=False), device_word(self.ctx.cluster)
                halves = f"; small models on half a {one}: {', '.join(shared)}" if shared else ""
                raise DoesNotFitError(
                    f"per-model-pools: the {len(models)} models of {self.ctx.app.name!r} need at least {need()} "
                    f"{many} at once ({many} of each one's smallest engine: {engines}{halves}), and "
                    f"{self.ctx.cluster} has {self.ctx.cluster.usable_gpus}; plan on at least {need()} {many} or "
                    "with another planner")
            shared.append(can_share[len(shared)])
        return shared

    def _slices(self, models: list[str], work: dict[str, float], free: int) -> dict[str, int]:
        """Whole GPUs per model, in proportion to work (largest remainders), each at least its smallest engine."""
        total = sum(work.values()) or 1.0
        target = {m: free * work[m] / total for m in models}
        least = {m: self._least(m) for m in models}
        slices = {m: max(least[m], math.floor(target[m])) for m in models}
        while sum(slices.values()) > free:  # a slice raised to its smallest engine takes from the largest one
            slices[max((m for m in models if slices[m] > least[m]), key=lambda m: (slices[m], m))] -= 1
        while models and sum(slices.values()) < free:
            slices[max(models, key=lambda m: (target[m] - slices[m], m))] += 1
        return slices

    def _fill(self, model: str, gpus: int) -> EngineOption:
        """Replicas of one tensor-parallel degree on at most ``gpus`` GPUs: the option that finishes soonest."""
        curves = self.ctx.curves[model]
        most: dict[int, EngineOption] = {}
        for option in self.ctx.options(model):
            if option.time_sliced or option.memory < 1.0 or option.num_gpus > gpus:
                continue
            if option.tp not in most or option.replicas > most[option.tp].replicas:
                most[option.tp] = option
        return min(most.values(), key=lambda o: (curves.curve(o).standalone_seconds, o.num_gpus))

    def _grow(self, picked: dict[str, EngineOption], spare: float, work: dict[str, float]) -> None:
        """Hand GPUs a slice's degree left over, one replica at a time, to the model with the most work per GPU."""
        while True:
            grown = [(work[m] / o.num_gpus, m, EngineOption(o.tp, o.replicas + 1)) for m, o in picked.items()
                     if o.tp <= spare and EngineOption(o.tp, o.replicas + 1) in self.ctx.options(m)]
            if not grown:
                return
            _, model, option = max(grown)
            spare -= option.tp
            picked[model] = option

    def _place(self, state: StageState, picked: dict[str, EngineOption]) -> Group:
        """GPUs for every pool (engines already up on the same option keep theirs)."""
        group = place(sorted(picked.items()), self.ctx.cluster, state.engines)
        if group is None:
            pools = ", ".join(f"{m} {o.label()}" for m, o in picked.items())
            raise DoesNotFitError(f"per-model-pools: the pools {pools} do not fit the aligned blocks of "
                                  f"{self.ctx.cluster}; use another planner")
        return group


BASELINE_POLICIES: dict[str, type[SequentialPolicy | _StaticPolicy]] = {
    "sequential": SequentialPolicy,
    "all-at-once": AllAtOncePolicy,
    "muxserve-like": MuxServeLikePolicy,
}
