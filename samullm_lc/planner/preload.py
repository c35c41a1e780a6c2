"""Loading the next stage's engine while the current stage runs, on the same GPUs (beyond the paper).

A model's load (a minute for a 70B model, mostly reading its weights) delays the stage that starts it. When
the engines a new engine replaces start in the stage just before and stop at its end, they can run on part
of their GPUs' memory while the new engine loads into the rest during that stage. The new engine serves
nothing until the stage is over (its requests wait), so neither engine slows the other, and the next
stage starts with it loaded. The price is smaller KV caches for both (vLLM cannot resize a running
engine's cache), which the faithful replay accounts for.

A post-pass on the search's replayed run (``api``), before any ``Plan`` is built: it reads the run's stage
records; the transition whose new engine loads longest is replayed with the running engines keeping the
shares of ``RUNNING_SHARES`` in turn, largest first (shares too small for a model's weights and minimum KV
cache skipped), for as long as each ends earlier than the best so far; the run changes only if a replay
ends earlier than it.
"""

from __future__ import annotations

from dataclasses import replace

from samullm_lc.planner.options import EngineOption
from samullm_lc.planner.placement import Assignment
from samullm_lc.planner.replay import EntryRecord, StageChoice, StageRecord

MIN_LOAD_SHARE = 0.05
"""Only a load of at least this share of the plan's end-to-end time is worth a replay: preloading saves at most
the load, and costs both engines KV cache."""
RUNNING_SHARES = (0.8, 0.7, 0.6)
"""Memory shares the running engines keep, tried in turn; the preloading engine gets the rest. Neither engine
is time-sliced (``EngineOption.time_sliced``): the new one computes only once the running ones have stopped."""


def longest_preloadable(stages: list[StageRecord], end_seconds: float) -> tuple[int, EntryRecord] | None:
    """(k, entry): the new engine of stage k + 1 with the longest load whose model has no engine in stage k and
    whose GPUs are held in stage k only by engines that start in stage k and stop at its end, all on whole
    GPUs; None if there is none or its load is under ``MIN_LOAD_SHARE`` of ``end_seconds``."""
    best: tuple[float, int, EntryRecord] | None = None
    for k in range(len(stages) - 1):
        current, following = stages[k], stages[k + 1]
        kept = {e.assignment for e in following.entries}
        running = {e.assignment.model for e in current.entries}
        for entry in following.entries:
            placed = entry.assignment
            if entry.load <= 0.0 or placed.option.memory_fraction < 1.0 or placed.model in running:
                continue
            hosts = [e for e in current.entries if set(e.assignment.gpus) & set(placed.gpus)]
            movable = bool(hosts) and all(h.load > 0.0 and h.assignment.option.memory_fraction == 1.0
                                          and h.assignment not in kept and h.nodes for h in hosts)
            if movable and (best is None or entry.load > best[0]):
                best = (entry.load, k, entry)
    if best is None or best[0] < MIN_LOAD_SHARE * end_seconds:
        return None
    return best[1], best[2]


def preload(stages: list[StageRecord], k: int, entry: EntryRecord, share: float) -> list[StageChoice]:
    """Stages ``k`` on, as replay input, with ``entry``'s engine started in stage ``k`` on ``1 - share`` of the
    memory of its GPUs, serving nothing there, and the engines it shares them with on ``share``."""
    original = entry.assignment
    loaded = _with_memory(original, round(1.0 - share, 2))
    first = stages[k].choice()
    group = [_with_memory(a, share) if set(a.gpus) & set(original.gpus) else a for a in first.group]
    choices = [StageChoice(tuple(sorted([*group, loaded])), {**first.nodes, loaded.model: []})]
    carried = True  # the engine keeps its reduced share for as long as it runs unchanged
    for stage in stages[k + 1:]:
        choice = stage.choice()
        carried = carried and original in choice.group
        if carried:
            choice = StageChoice(tuple(sorted(loaded if a == original else a for a in choice.group)), choice.nodes)
        choices.append(choice)
    return choices


def _with_memory(placed: Assignment, memory: float) -> Assignment:
    """``placed`` on a ``memory`` share of each of its GPUs."""
    option = placed.option
    return replace(placed, option=EngineOption(option.tp, option.replicas, option.time_sliced, memory))
