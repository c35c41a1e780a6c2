"""Which GPUs each engine of a stage gets.

A replica of tensor-parallel degree ``tp`` takes one of the aligned blocks ``Cluster.tp_groups(tp)``, so
a TP group never spans GPUs the topology does not connect the way the latency model assumes. A
time-sliced engine takes half of one GPU (two per GPU at most); any other engine owns its GPUs, their compute
as well as their memory, which is why this counts halves of GPUs rather than memory shares
(``plan.DeviceMemory``): an engine that is not time-sliced computes at full speed only alone on its GPUs. Engines that keep their plan from the
previous stage keep their GPUs, so they keep running without a reload; the others are placed largest
first, each block where it fragments the free GPUs least. If the kept engines leave no room, the fewest
of them move (smallest first), and the engines that move restart like any changed plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.options import EngineOption

_HALVES = 2  # a GPU is two halves: an engine that is not time-sliced takes both, a time-sliced one one


@dataclass(frozen=True, slots=True, order=True)
class Assignment:
    """One engine of a stage: a model, its option, and its GPUs (replica r: gpus[r*tp:(r+1)*tp])."""

    model: str
    option: EngineOption
    gpus: tuple[int, ...]


def place(
    wanted: list[tuple[str, EngineOption]], cluster: Cluster, previous: dict[str, Assignment]
) -> tuple[Assignment, ...] | None:
    """GPUs for every (model, option), keeping previous placements where the option is unchanged; None if no fit."""
    models = {model for model, _ in wanted}
    kept = {m: a for m, a in previous.items() if m in models}
    while True:
        placed = _place(wanted, cluster, kept)
        if placed is not None or not kept:
            return placed
        by_size = sorted(kept, key=lambda m: (len(kept[m].gpus), m))
        freeing_one = [m for m in by_size if _place(wanted, cluster, {k: a for k, a in kept.items() if k != m})]
        del kept[(freeing_one or by_size)[0]]


def _place(
    wanted: list[tuple[str, EngineOption]], cluster: Cluster, previous: dict[str, Assignment]
) -> tuple[Assignment, ...] | None:
    free = [_HALVES] * cluster.num_gpus
    for lost in cluster.lost_devices:
        free[lost] = 0
    out: list[Assignment] = []
    fresh: list[tuple[str, EngineOption]] = []
    for model, option in wanted:
        before = previous.get(model)
        if before is not None and before.option == option and _fits(free, before.gpus, option.time_sliced):
            _take(free, before.gpus, option.time_sliced)
            out.append(before)
        else:
            fresh.append((model, option))
    fresh.sort(key=lambda item: (item[1].time_sliced, -item[1].tp, -item[1].replicas, item[0]))
    for model, option in fresh:
        gpus = _find(free, cluster, option)
        if gpus is None:
            return None
        out.append(Assignment(model, option, gpus))
    return tuple(sorted(out))


def _fits(free: list[int], gpus: tuple[int, ...], time_sliced: bool) -> bool:
    need = 1 if time_sliced else _HALVES
    return all(free[g] >= need for g in gpus)


def _take(free: list[int], gpus: tuple[int, ...], time_sliced: bool) -> None:
    for g in gpus:
        free[g] -= 1 if time_sliced else _HALVES


def _find(free: list[int], cluster: Cluster, option: EngineOption) -> tuple[int, ...] | None:
    """Blocks for every replica of ``option`` (taken from ``free``), or None."""
    if option.time_sliced:
        half_used = [g for g, f in enumerate(free) if f == 1]
        empty = [g for g, f in enumerate(free) if f == _HALVES]
        choice = (half_used or sorted(empty, key=lambda g: (_free_nearby(free, cluster, g, 1), g)))[:1]
        if not choice:
            return None
        _take(free, tuple(choice), True)
        return tuple(choice)
    gpus: list[int] = []
    for _ in range(option.replicas):
        blocks = [b for b in _blocks(cluster, option.tp) if all(free[g] == _HALVES for g in b)]
        if not blocks:
            return None
        block = min(blocks, key=lambda b: (_free_nearby(free, cluster, b[0], len(b)), b))
        _take(free, block, False)
        gpus.extend(block)
    return tuple(gpus)


@lru_cache(maxsize=256)
def _blocks(cluster: Cluster, tp: int) -> list[tuple[int, ...]]:
    return cluster.tp_groups(tp)


@lru_cache(maxsize=64)
def _node_size(cluster: Cluster) -> int:
    return cluster.devices_per_node


def _free_nearby(free: list[int], cluster: Cluster, start: int, size: int) -> int:
    """Free GPUs in the aligned block of twice ``size`` around ``start``: fewer means less fragmentation."""
    span = min(2 * size, _node_size(cluster))
    first = start - start % span
    return sum(1 for g in range(first, min(first + span, cluster.num_gpus)) if free[g] == _HALVES)
