"""Loading the next stage's engine while the current stage runs, on the same GPUs (beyond the paper).

A model's load (a minute for a 70B model, mostly reading its weights) delays the stage that starts it. When
the engines a new engine replaces start in the stage just before and stop at its end, they can run on part
of their GPUs' memory while the new engine loads into the rest during that stage. The new engine serves
nothing until the stage is over (its requests wait), so neither engine slows the other, and the next
stage starts with it loaded. The price is smaller KV caches for both (vLLM cannot resize a running
engine's cache), which the faithful replay accounts for.

A post-pass on the search's plan (``api``): the transition whose new engine loads longest is replayed with
the running engines keeping the shares of ``RUNNING_SHARES`` in turn, largest first (shares too small for
a model's weights and minimum KV cache skipped), for as long as each ends earlier than the best so far; the
plan changes only if a replay ends earlier than it.
"""

from __future__ import annotations

from samullm_lc.planner.plan import Plan, StageEntry

MIN_LOAD_SHARE = 0.05
"""Only a load of at least this share of the plan's end-to-end time is worth a replay: preloading saves at most
the load, and costs both engines KV cache."""
RUNNING_SHARES = (0.8, 0.7, 0.6)
"""Memory shares the running engines keep; the preloading engine gets the rest. None is 0.5, which on a TP1
engine means time-sliced GPU sharing (``options.option_for``)."""


def longest_preloadable(plan: Plan) -> tuple[int, StageEntry] | None:
    """(k, entry): the new engine of stage k + 1 with the longest load whose model has no engine in stage k and
    whose GPUs are held in stage k only by engines that start in stage k and stop at its end, all on whole
    GPUs; None if there is none or its load is under ``MIN_LOAD_SHARE`` of the plan's time."""
    best: tuple[float, int, StageEntry] | None = None
    for k in range(len(plan.stages) - 1):
        current, following = plan.stages[k], plan.stages[k + 1]
        kept = {e.plan for e in following.entries}
        running = {e.plan.model for e in current.entries}
        for entry in following.entries:
            if entry.load_seconds <= 0.0 or entry.plan.memory_fraction < 1.0 or entry.plan.model in running:
                continue
            hosts = [e for e in current.entries if set(e.plan.gpus) & set(entry.plan.gpus)]
            if hosts and all(h.load_seconds > 0.0 and h.plan.memory_fraction == 1.0 and h.plan not in kept
                             and h.nodes for h in hosts):
                if best is None or entry.load_seconds > best[0]:
                    best = (entry.load_seconds, k, entry)
    if best is None or best[0] < MIN_LOAD_SHARE * plan.estimated_seconds:
        return None
    return best[1], best[2]


def preload(plan: Plan, k: int, entry: StageEntry, share: float) -> Plan:
    """``plan`` with ``entry``'s engine started in stage ``k`` on ``1 - share`` of the memory of its GPUs,
    serving nothing there, and the engines it shares them with on ``share``."""
    rest = round(1.0 - share, 2)
    loaded = entry.plan.model_copy(update={"memory_fraction": rest})
    gpus = set(entry.plan.gpus)
    stages = [stage.model_copy(deep=True) for stage in plan.stages]
    for e in stages[k].entries:
        if set(e.plan.gpus) & gpus:
            e.plan = e.plan.model_copy(update={"memory_fraction": share})
    stages[k].entries.append(StageEntry(nodes=[], plan=loaded))
    for stage in stages[k + 1:]:  # the engine keeps its reduced share for as long as it runs unchanged
        same = [e for e in stage.entries if e.plan == entry.plan]
        if not same:
            break
        for e in same:
            e.plan = loaded
    return plan.model_copy(update={"stages": stages})

