"""The baselines the planner is measured against, as stage policies for the same faithful replay.

- sequential (the SamuLLM authors' "naive"): one model at a time, in topological order, alone on all
  GPUs with the fastest plan that uses them all; its consecutive nodes run in one engine;
- all-at-once: every model that can run starts at once, GPUs split in proportion to each model's work;
  engines are never changed; freed GPUs go to the models still waiting, split the same way;
- muxserve-like (after MuxServe's placement): models packed onto GPUs largest first, each on its smallest
  plan (half a GPU for small models when sharing is allowed), spare GPUs to the model with the most work
  per GPU; engines are never changed; freed GPUs are packed the same way.
"""

from __future__ import annotations

from samullm_lc.errors import SamullmError
from samullm_lc.planner.candidates import runnable_models
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
        fastest = curves.best(float(self.ctx.cluster.num_gpus)) or curves.best_up_to(self.ctx.cluster.num_gpus)[-1]
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
            raise SamullmError(f"{type(self).__name__}: no waiting model fits the free GPUs of {self.ctx.cluster}")
        return group

    def _group(self, state: StageState, kept: list[tuple[str, EngineOption]], waiting: list[str]) -> Group | None:
        """``kept`` plus as many of ``waiting`` (dropped from the back) as fit and have work."""
        used = sum(o.num_gpus for _, o in kept)
        while True:
            added = self._allocate(state, waiting, self.ctx.cluster.num_gpus - used)
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
        option = self._smallest(state, model, time_sliced=False)
        tokens = float(sum(state.remaining[n] for n in self.ctx.model_nodes(model)))
        return option.num_gpus * self.ctx.curves[model].curve(option).remaining_seconds(tokens)

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


BASELINE_POLICIES: dict[str, type[SequentialPolicy | _StaticPolicy]] = {
    "sequential": SequentialPolicy,
    "all-at-once": AllAtOncePolicy,
    "muxserve-like": MuxServeLikePolicy,
}
