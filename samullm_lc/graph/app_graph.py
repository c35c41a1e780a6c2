"""What a multi-LLM application is: LLM nodes, their request sets, and which outputs feed which prompts.

A node is one model answering one set of requests (one call site of a pipeline). By default an edge says
that request i of the downstream node needs the output of request i of the upstream node (an ensemble's
fuser reads every member's answer to prompt i). A downstream request arrives when all the requests it reads
have finished, and its prompt grows by their outputs.

Traced pipelines are not one request per input per node, so a node may say more (``inputs``,
``upstream_requests``): which pipeline input each request serves (a router sends an input to one of several
nodes; a map step makes k calls per input) and which requests of which nodes each request reads (a reduce
reads its input's k map calls; a running summary's call reads the previous call of the same node). Per-node
calls per input and routing fractions follow from these; ``scaled`` resamples whole inputs to a batch size.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.errors import ConfigError
from samullm_lc.limits import TOKENS_PER_REQUEST
from samullm_lc.user_files import read_user_text
from samullm_lc.validated import ValidatedModel

APP_FILE_FIX = ("give an AppGraph JSON such as examples/apps/ensemble.json (scripts/build_paper_apps.py writes the "
                "paper's apps; docs/paper-apps.md describes the format)")


class LLMNode(ValidatedModel):
    """One model answering one request set."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    model: str = Field(description="Catalogue name, HF id or config path of the model.")
    input_tokens: list[int] = Field(description="Prompt tokens of each request, before upstream outputs are added.")
    max_tokens: int = Field(gt=0)
    depends_on: list[str] = Field(default_factory=list, description="Upstream node names.")
    include_upstream_outputs: bool = Field(True, description="Upstream outputs are appended to each prompt.")
    output_lengths: OutputLengthDistribution | None = Field(
        None, description="This node's output-length distribution; the model's (or ShareGPT) if not given."
    )
    site: str | None = Field(None, description="Where the pipeline makes the node's calls (traced graphs): the client's "
                                               "model name and the steps of the runs above the call.")
    inputs: list[int] | None = Field(
        None, description="The pipeline input each request serves; request i serves input i if not given.")
    upstream_requests: dict[str, list[list[int]]] | None = Field(
        None, description="Per upstream node (or this node itself, for calls chained at one site): the indices of "
                          "its requests that each request of this node reads. If not given, request i reads "
                          "request i of every upstream node.")

    @model_validator(mode="after")
    def _check(self) -> LLMNode:
        if not self.input_tokens:
            raise ConfigError(f"node {self.name!r} has no requests: give at least one input length")
        if min(self.input_tokens) < 1:
            raise ConfigError(f"node {self.name!r}: every prompt needs at least 1 token")
        try:
            TOKENS_PER_REQUEST.check(max(self.input_tokens))
            TOKENS_PER_REQUEST.check(self.max_tokens)
        except ConfigError as exc:
            raise ConfigError(f"node {self.name!r}: {exc}") from None
        return self

    @property
    def num_requests(self) -> int:
        """Requests of the node."""
        return len(self.input_tokens)

    @property
    def chained(self) -> bool:
        """Whether some of the node's requests read earlier requests of the node itself."""
        return bool(self.upstream_requests) and self.name in self.upstream_requests


RequestReads = list[tuple[str, np.ndarray]]
"""A node's request-level edges: (upstream node, for each request the upstream request it reads or -1). A request
reading k requests of one node gives k edges from that node."""


class AppGraph(ValidatedModel):
    """A multi-LLM application as a DAG of LLM nodes; JSON round-trip."""

    model_config = ConfigDict(extra="forbid")

    name: str
    nodes: list[LLMNode]
    description: str = ""
    num_inputs: int | None = Field(None, ge=1, description="Pipeline inputs the graph describes (traced graphs); "
                                                           "each node's request i serves input i if not given.")

    @model_validator(mode="after")
    def _check(self) -> AppGraph:
        names = [node.name for node in self.nodes]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ConfigError(f"app {self.name!r}: node names must be unique, repeated: {sorted(duplicates)}")
        known = set(names)
        for node in self.nodes:
            missing = [d for d in node.depends_on if d not in known]
            if missing:
                raise ConfigError(f"node {node.name!r} depends on unknown node(s) {missing}; known: {sorted(known)}")
            if node.upstream_requests is not None or node.inputs is not None:
                self._check_request_level(node)
                continue
            for upstream in node.depends_on:
                if self.node(upstream).num_requests != node.num_requests:
                    raise ConfigError(
                        f"node {node.name!r} ({node.num_requests} requests) depends on {upstream!r} "
                        f"({self.node(upstream).num_requests} requests): request i reads upstream request i, "
                        "so the counts must match"
                    )
        for group in self.loops:
            self._check_loop_requests(group)
        self.topological_order  # raises on a cycle
        return self

    def _check_request_level(self, node: LLMNode) -> None:
        """A node with request-level fields: inputs in range, one reads list per request, indices in range, chained
        calls reading only earlier calls of the node."""
        where = f"node {node.name!r}"
        if node.inputs is not None:
            if len(node.inputs) != node.num_requests:
                raise ConfigError(f"{where}: inputs has {len(node.inputs)} entries for {node.num_requests} requests")
            if self.num_inputs is None:
                raise ConfigError(f"{where} gives inputs, so the app must give num_inputs")
            if node.inputs and not 0 <= min(node.inputs) <= max(node.inputs) < self.num_inputs:
                raise ConfigError(f"{where}: inputs must lie in 0..{self.num_inputs - 1} (num_inputs)")
        reads = node.upstream_requests
        if reads is None:
            if node.depends_on:
                raise ConfigError(f"{where} gives inputs and depends on {node.depends_on}: give upstream_requests "
                                  "too (which upstream requests each request reads)")
            return
        allowed = {*node.depends_on, node.name}
        missing = [u for u in node.depends_on if u not in reads]
        unknown = [u for u in reads if u not in allowed]
        if missing or unknown:
            raise ConfigError(f"{where}: upstream_requests must name exactly its depends_on nodes (and itself for "
                              f"chained calls); missing {missing}, not upstream {unknown}")
        for upstream, lists in reads.items():
            if len(lists) != node.num_requests:
                raise ConfigError(f"{where}: upstream_requests[{upstream!r}] has {len(lists)} entries for "
                                  f"{node.num_requests} requests")
            limit = self.node(upstream).num_requests
            for i, indices in enumerate(lists):
                if indices and not 0 <= min(indices) <= max(indices) < (i if upstream == node.name else limit):
                    bound = f"below {i} (a chained call reads earlier calls)" if upstream == node.name else \
                        f"in 0..{limit - 1}"
                    raise ConfigError(f"{where}: request {i} reads {upstream!r} requests {indices}; they must be "
                                      f"{bound}")

    def node(self, name: str) -> LLMNode:
        """A node by name; ConfigError if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"app {self.name!r} has no node {name!r}")

    def request_reads(self, name: str) -> RequestReads:
        """The node's request-level edges, upstream nodes (and the node itself, for chained calls) in
        ``depends_on`` order: every request of the node reads the edge's upstream request unless it is -1."""
        node = self.node(name)
        n = node.num_requests
        if node.upstream_requests is None:
            return [(upstream, np.arange(n, dtype=np.int64)) for upstream in node.depends_on]
        edges: RequestReads = []
        for upstream in [*node.depends_on, *([name] if node.chained else [])]:
            lists = node.upstream_requests[upstream]
            width = max((len(indices) for indices in lists), default=0)
            for k in range(max(width, 1) if upstream != name else width):
                edges.append((upstream, np.asarray([indices[k] if k < len(indices) else -1 for indices in lists],
                                                   dtype=np.int64)))
        return edges

    def input_of(self, name: str) -> np.ndarray:
        """The pipeline input each of the node's requests serves."""
        node = self.node(name)
        if node.inputs is not None:
            return np.asarray(node.inputs, dtype=np.int64)
        return np.arange(node.num_requests, dtype=np.int64)

    @property
    def inputs_count(self) -> int:
        """Pipeline inputs: ``num_inputs``, else the most requests of a node (request i serves input i)."""
        return self.num_inputs or max(node.num_requests for node in self.nodes)

    def calls_per_input(self, name: str) -> np.ndarray:
        """How many requests the node makes for each pipeline input (0 for inputs routed elsewhere)."""
        return np.bincount(self.input_of(name), minlength=self.inputs_count)

    def routing_fraction(self, name: str) -> float:
        """The share of pipeline inputs that make at least one request of the node."""
        return float(np.count_nonzero(self.calls_per_input(name))) / self.inputs_count

    def scaled(self, num_inputs: int, *, seed: int = 0) -> AppGraph:
        """The graph for ``num_inputs`` pipeline inputs: whole inputs of this graph repeated in turn (each as often
        as the others, give or take one; the last round a random draw), with their requests and the requests they
        read, so routing, calls per input and dependencies keep their shares. Each node keeps its order: the
        copies of its first request, then of its second, ... (a traced node's rounds stay in order)."""
        if not isinstance(num_inputs, int) or num_inputs < 1:
            raise ConfigError(f"scale a graph to a positive number of inputs, got {num_inputs!r}")
        have = self.inputs_count
        rounds, rest = divmod(num_inputs, have)
        rng = np.random.default_rng(seed)
        source = np.concatenate([np.tile(np.arange(have), rounds), np.sort(rng.choice(have, rest, replace=False))])
        copies: list[list[int]] = [[] for _ in range(have)]  # sample input -> new inputs copying it
        for new, old in enumerate(source.tolist()):
            copies[old].append(new)
        orders: dict[str, list[tuple[int, int]]] = {}  # node -> its new requests as (copy, old request)
        new_index: dict[str, dict[tuple[int, int], int]] = {}  # node -> (old request, copy) -> new request
        for node in self.nodes:
            old_inputs = self.input_of(node.name).tolist()
            order = sorted(((c, old) for old, i in enumerate(old_inputs) for c in range(len(copies[i]))),
                           key=lambda pair: (pair[1], pair[0]))  # the node's order kept: all copies of each request
            orders[node.name] = order
            new_index[node.name] = {(old, c): new for new, (c, old) in enumerate(order)}
        nodes = []
        for node in self.nodes:
            order, old_inputs = orders[node.name], self.input_of(node.name).tolist()
            if not order:  # no drawn input reaches this node (a rare route): the scaled app has no such node
                continue
            reads = None
            if node.upstream_requests is not None or node.depends_on:  # a request reads requests of its own input
                raw = node.upstream_requests or {u: [[i] for i in range(node.num_requests)] for u in node.depends_on}
                reads = {u: [[new_index[u][(j, c)] for j in raw[u][old]] for c, old in order]
                         for u in raw if orders[u]}
            nodes.append(node.model_copy(update={
                "input_tokens": [node.input_tokens[old] for _, old in order],
                "inputs": [copies[old_inputs[old]][c] for c, old in order],
                "depends_on": [u for u in node.depends_on if orders[u]],
                "upstream_requests": reads,
            }))
        return AppGraph(name=self.name, description=self.description, num_inputs=num_inputs, nodes=nodes)

    @cached_property
    def loops(self) -> list[list[str]]:
        """Groups of nodes that read each other in a cycle (a LangGraph loop: the writer reads the critic's last
        critique, the critic the writer's draft), in declaration order. Only their requests form a DAG."""
        reach = {node.name: set(node.depends_on) for node in self.nodes}
        changed = True
        while changed:  # transitive closure; graphs have tens of nodes
            changed = False
            for name, ups in reach.items():
                grown = ups.union(*(reach[u] for u in ups))
                if grown != ups:
                    reach[name], changed = grown, True
        groups: list[list[str]] = []
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen or node.name not in reach[node.name]:
                continue
            group = [n.name for n in self.nodes if n.name == node.name or
                     (n.name in reach[node.name] and node.name in reach[n.name])]
            seen.update(group)
            groups.append(group)
        return groups

    def _check_loop_requests(self, group: list[str]) -> None:
        """The requests of a loop's nodes must not read each other in a cycle (Kahn's algorithm on requests)."""
        members = set(group)
        waits: dict[tuple[str, int], int] = {}
        readers: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for name in group:
            if self.node(name).upstream_requests is None:
                raise ConfigError(f"app {self.name!r} has a dependency cycle among {sorted(group)}; nodes in a loop "
                                  "must say which requests each request reads (upstream_requests)")
            for i in range(self.node(name).num_requests):
                waits[(name, i)] = 0
            for upstream, edge in self.request_reads(name):
                if upstream in members:
                    for i, j in enumerate(edge.tolist()):
                        if j >= 0:
                            waits[(name, i)] += 1
                            readers.setdefault((upstream, j), []).append((name, i))
        ready = [key for key, count in waits.items() if count == 0]
        done = 0
        while ready:
            key = ready.pop()
            done += 1
            for reader in readers.get(key, ()):
                waits[reader] -= 1
                if waits[reader] == 0:
                    ready.append(reader)
        if done < len(waits):
            raise ConfigError(f"app {self.name!r}: requests of {sorted(group)} read each other in a cycle")

    @cached_property
    def topological_order(self) -> list[str]:
        """Node names, every node after its upstream nodes (Kahn's algorithm, stable in declaration order); the
        nodes of a loop (``loops``) come together, in declaration order, after what the loop reads."""
        group_of = {name: tuple(group) for group in self.loops for name in group}
        remaining = {node.name: set(node.depends_on) - set(group_of.get(node.name, ())) for node in self.nodes}
        order: list[str] = []
        while remaining:
            ready = [name for name, deps in remaining.items() if not deps]
            ready = [name for name in ready if all(m in ready for m in group_of.get(name, ()))]
            if not ready:
                raise ConfigError(f"app {self.name!r} has a dependency cycle among {sorted(remaining)}")
            for name in ready:
                order.append(name)
                del remaining[name]
            for deps in remaining.values():
                deps.difference_update(ready)
        return order

    def downstream(self, name: str) -> list[str]:
        """Names of the nodes that read ``name``'s outputs."""
        return [node.name for node in self.nodes if name in node.depends_on]

    def models(self) -> list[str]:
        """Distinct models, in first-use order."""
        return list(dict.fromkeys(node.model for node in self.nodes))

    def input_tokens(self, name: str) -> np.ndarray:
        """Prompt tokens of each of the node's requests (upstream outputs not included)."""
        return np.asarray(self.node(name).input_tokens, dtype=np.int64)

    def save(self, path: str | Path) -> Path:
        """Write the graph as JSON."""
        path = Path(path)
        path.write_text(self.model_dump_json(indent=1, exclude_none=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> AppGraph:
        """Read a graph written by ``save``; ConfigError naming the file if it is missing, not UTF-8 or invalid."""
        text = read_user_text(path, what="app graph", fix=APP_FILE_FIX)
        try:
            return cls.model_validate_json(text)
        except ConfigError as exc:
            raise ConfigError(f"app graph {path} is not a valid AppGraph ({exc}); {APP_FILE_FIX}") from None

    def describe(self) -> str:
        """The graph as a person reads it: per node its model, requests, calls per input (of the inputs it
        reaches), routing fraction, ``max_tokens`` and the nodes it reads."""
        lines = [f"{self.name}: {self.inputs_count} inputs, {len(self.nodes)} nodes"
                 + (f" ({self.description})" if self.description else "")]
        width = max(len(node.name) for node in self.nodes)
        for name in self.topological_order:
            node = self.node(name)
            calls = self.calls_per_input(name)
            reached = calls[calls > 0]
            per_input = f"{reached.min()}-{reached.max()}" if reached.size and reached.min() != reached.max() else \
                f"{reached.max() if reached.size else 0}"
            reads = ", ".join(node.depends_on + ([f"{name} (chained)"] if node.chained else [])) or "-"
            lines.append(f"  {name:<{width}}  {node.model:<24} {node.num_requests:5d} requests, {per_input:>5} per "
                         f"input, routed {self.routing_fraction(name):6.1%}, max_tokens {node.max_tokens:4d}, "
                         f"reads: {reads}")
        return "\n".join(lines)

    def with_models(self, models: Mapping[str, str]) -> AppGraph:
        """The graph with other models: each node's model replaced by the one ``models`` gives for the node's name,
        else for its site's client model (``site``: ``"MODEL"`` or ``"MODEL @ STEPS"``), else for its model (a
        traced graph's tiny models relabelled to the GPU models an example serves, e.g. its ``GPU_MODELS``)."""
        keys = [(node.name, (node.site or "").split(" @ ", 1)[0], node.model) for node in self.nodes]
        unused = set(models) - {key for triple in keys for key in triple}
        if unused:
            raise ConfigError(f"with_models: {sorted(unused)} name no node, client model or model of app "
                              f"{self.name!r}")
        nodes = [node.model_copy(update={"model": next((models[k] for k in triple if k in models), node.model)})
                 for node, triple in zip(self.nodes, keys, strict=True)]
        return self.model_copy(update={"nodes": nodes})
