"""How many calls each traced node will still get, from the real inputs' own progress.

The traced graph, scaled to the batch, says how many calls each node makes on average per input. The real
inputs differ (a document with fewer chunks, a loop that stops early), so a node whose count was over-estimated
would hold its readers' model back until the end of the batch. The drop-in therefore counts, per input (its root
run), the calls made at each node, and knows when an input has moved past a node: once it calls a node that
reads from it (directly or not, loops aside), or once its root run ends, its calls at that node are final. A
node's expected total is then: final counts, plus for each input still before or at it the more of what it
made and the traced average, plus the traced average for each input not started yet. The pool gets these
counts (``EnginePool.expect``) whenever their rounded values change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from samullm_lc.graph.app_graph import AppGraph


class InputProgress:
    """Per input, the calls made at each node and the nodes it has moved past (any thread)."""

    def __init__(self, graph: AppGraph, publish: Callable[[dict[str, int]], None]) -> None:
        self.graph = graph
        self._publish = publish
        names = [node.name for node in graph.nodes]
        self._mean = {name: float(graph.calls_per_input(name).mean()) for name in names}
        self._before = _upstream_nodes(graph)
        self._lock = threading.Lock()
        self._made: dict[Any, dict[str, int]] = {}  # input -> node -> calls made
        self._final: dict[Any, set[str]] = {}  # input -> nodes it has moved past
        self._total = {name: self._mean[name] * graph.inputs_count for name in names}
        self._published: dict[str, int] = {}

    def call(self, input_key: Any, node: str) -> None:
        """A call of ``input_key`` (its root run) at ``node``: its own count, and the nodes it has moved past."""
        with self._lock:
            made = self._started(input_key)
            self._set(input_key, node, made.get(node, 0) + 1)
            for upstream in self._before.get(node, ()):
                self._finalise(input_key, upstream)
            changed = self._changes()
        if changed:
            self._publish(changed)

    def input_done(self, input_key: Any) -> None:
        """The input's root run ended: every count of it is final."""
        with self._lock:
            if input_key not in self._made:
                return
            for name in self._mean:
                self._finalise(input_key, name)
            changed = self._changes()
        if changed:
            self._publish(changed)

    def expected(self) -> dict[str, int]:
        """The expected total calls per node now."""
        with self._lock:
            return {name: round(total) for name, total in self._total.items()}

    def _started(self, input_key: Any) -> dict[str, int]:
        made = self._made.get(input_key)
        if made is None:  # started, nothing made yet: it still counts the average, as it did unstarted
            made = self._made[input_key] = {}
            self._final[input_key] = set()
            if len(self._made) > self.graph.inputs_count:  # more inputs than the graph was scaled to
                for name, mean in self._mean.items():
                    self._total[name] += mean
        return made

    def _contribution(self, input_key: Any, name: str) -> float:
        made = self._made[input_key].get(name, 0)
        return float(made) if name in self._final[input_key] else max(float(made), self._mean[name])

    def _set(self, input_key: Any, name: str, made: int) -> None:
        before = self._contribution(input_key, name)
        self._made[input_key][name] = made
        self._total[name] += self._contribution(input_key, name) - before

    def _finalise(self, input_key: Any, name: str) -> None:
        if name in self._final[input_key]:
            return
        before = self._contribution(input_key, name)
        self._final[input_key].add(name)
        self._total[name] += self._contribution(input_key, name) - before

    def _changes(self) -> dict[str, int]:
        now = {name: round(total) for name, total in self._total.items()}
        changed = {name: count for name, count in now.items() if self._published.get(name) != count}
        self._published.update(changed)
        return changed


def _upstream_nodes(graph: AppGraph) -> dict[str, set[str]]:
    """Per node, the nodes it reads from, directly or not, outside its own loop: an input calling it is past them."""
    loop_of = {name: set(group) for group in graph.loops for name in group}
    direct = {node.name: set(node.depends_on) for node in graph.nodes}
    upstream: dict[str, set[str]] = {}
    for name, reads in direct.items():
        seen: set[str] = set()
        stack = list(reads)
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(direct.get(current, ()))
        upstream[name] = seen - loop_of.get(name, set()) - {name}
    return upstream
