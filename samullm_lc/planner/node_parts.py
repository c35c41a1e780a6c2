"""The planner's nodes from the app's request-level graph: each app node is one planner node, except that the
nodes of a loop are split by call depth.

The planner reasons about a DAG of nodes (a stage runs nodes whose upstream nodes are finished or in the stage;
the replay places a node's requests after those of the nodes they read). A loop is no such DAG: a chained app
node, whose calls read earlier calls of itself (a running summary, a LangGraph loop at one call site), or the
nodes of a LangGraph loop over several call sites that read each other (``AppGraph.loops``: the writer reads
the critic's last critique, the critic the writer's draft). So a loop becomes one planner node per app node
and call depth: depth 0 are the loop's calls that read no call of the loop, depth d the calls whose deepest
read call of the loop has depth d - 1. Each level reads only lower levels and nodes outside the loop, and a
chain of d calls stays d requests one after the other (a chained node's levels, of one model, are vertically
fused in a stage; the levels of a loop over two models alternate, a stage holding two consecutive ones).

Every edge is request-level: per request of the planner node, the index of the request it reads in one upstream
planner node, or -1 (a fan-in of k requests from one node is k edges). An app node without request-level fields
keeps the edges it always had, request i reading request i (``np.arange``), so old graphs plan as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samullm_lc.graph.app_graph import AppGraph

LEVEL_SEPARATOR = "@"
"""Level d of a node in a loop is the planner node ``<node>@<d>``."""

Reads = tuple[tuple[int, np.ndarray], ...]
"""A planner node's request-level edges: (upstream planner node, per request the index of the request it reads
there or -1)."""


@dataclass(slots=True)
class NodePart:
    """One planner node: a whole app node, or one call depth of an app node in a loop."""

    name: str  # the app node's name, or ``<node>@<depth>`` for a level of a node in a loop
    app_node: str
    requests: np.ndarray | None  # the app node's index of each of its requests; None: all of them, in order
    reads: Reads

    @property
    def upstream(self) -> tuple[int, ...]:
        """The planner nodes it reads, each once, in edge order."""
        return tuple(dict.fromkeys(part for part, _ in self.reads))


@dataclass(slots=True)
class NodeParts:
    """The planner nodes of an app, in topological order, and where each app request went."""

    parts: list[NodePart]
    of_node: dict[str, list[int]]  # app node -> its planner nodes
    part_of: dict[str, np.ndarray]  # app node -> per request, its planner node
    local_of: dict[str, np.ndarray]  # app node -> per request, its index in that planner node

    def where(self, node: str, requests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per given request of an app node: its planner node, and its index there."""
        requests = np.asarray(requests, dtype=np.int64)
        if node not in self.part_of:
            return np.full(requests.size, self.of_node[node][0], dtype=np.int64), requests
        return self.part_of[node][requests], self.local_of[node][requests]


def node_parts(app: AppGraph) -> NodeParts:
    """Split the app's nodes into planner nodes (a loop's nodes by call depth) with request-level edges."""
    result = NodeParts(parts=[], of_node={}, part_of={}, local_of={})
    loops = {name: group for group in app.loops for name in group}
    for name in app.topological_order:
        if name in result.of_node:  # split with its loop
            continue
        if name not in loops and not app.node(name).chained:
            reads = tuple(edge for upstream, index in app.request_reads(name)
                          for edge in _mapped(result, upstream, index))
            _add(result, name, NodePart(name=name, app_node=name, requests=None, reads=reads), None)
            continue
        group = loops.get(name, [name])
        edges = {member: app.request_reads(member) for member in group}
        depths = _call_depths({member: app.node(member).num_requests for member in group}, edges)
        for member in group:
            result.part_of[member] = np.full(depths[member].size, -1, dtype=np.int64)
            result.local_of[member] = np.full(depths[member].size, -1, dtype=np.int64)
            result.of_node[member] = []
        for level in range(max(int(d.max(initial=0)) for d in depths.values()) + 1):
            for member in group:
                requests = np.flatnonzero(depths[member] == level)
                if requests.size == 0:
                    continue
                reads = tuple(edge for upstream, index in edges[member]
                              for edge in _mapped(result, upstream, index[requests]) if edge[1].size)
                _add(result, member, NodePart(name=f"{member}{LEVEL_SEPARATOR}{level}", app_node=member,
                                              requests=requests, reads=reads), requests)
    return result


def _add(result: NodeParts, node: str, part: NodePart, requests: np.ndarray | None) -> None:
    index = len(result.parts)
    result.parts.append(part)
    result.of_node.setdefault(node, []).append(index)
    if requests is not None:
        result.part_of[node][requests] = index
        result.local_of[node][requests] = np.arange(requests.size)


def _mapped(result: NodeParts, upstream: str, index: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """One app-level edge as planner-level edges: unchanged to a whole node; to a node split by depth, one edge per
    level read (-1 where the request reads another level). An edge reading nothing is dropped (a level's first
    calls read no earlier call)."""
    has = index >= 0
    if not has.any():
        return []
    if upstream not in result.part_of:
        return [(result.of_node[upstream][0], index)]
    owner = np.where(has, result.part_of[upstream][np.where(has, index, 0)], -1)
    local = result.local_of[upstream][np.where(has, index, 0)]
    return [(int(p), np.where(owner == p, local, -1)) for p in np.unique(owner[has]).tolist()]


def _call_depths(sizes: dict[str, int], edges: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Per call of each node of a loop, 1 + the deepest call of the loop it reads (0 if it reads none).

    Relaxed level by level (as many rounds as the deepest chain): the loop's requests read each other in a DAG
    (``AppGraph`` checks it), so the depths settle.
    """
    depth = {member: np.zeros(size, dtype=np.int64) for member, size in sizes.items()}
    while True:
        new = {member: d.copy() for member, d in depth.items()}
        for member in sizes:
            for upstream, index in edges[member]:
                if upstream in sizes:
                    has = index >= 0
                    new[member][has] = np.maximum(new[member][has], depth[upstream][index[has]] + 1)
        if all(np.array_equal(new[m], depth[m]) for m in sizes):
            return depth
        depth = new
