"""The sampled workload the planner reasons about: every request's prompt and output length, per node.

SamuLLM plans on one draw of the unknown output lengths (sampling then simulation). The planner's nodes are
the app's nodes, the nodes of a loop split by call depth (``node_parts.py``), kept in topological order and
referred to by index in the hot loops. A downstream request's prompt is its own input plus the sampled
outputs of exactly the requests it reads, cut to the model's context window (the engine would reject a
longer prompt; we assume the application truncates it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.planner.node_parts import NodePart, NodeParts, Reads, node_parts


@dataclass(slots=True)
class NodeWork:
    """One planner node's sampled requests: prompt and output tokens per request, and what they read."""

    index: int
    name: str  # the app node's name, or ``<node>@<depth>`` for a level of a node in a loop
    model: str
    prompt: np.ndarray  # tokens per request, upstream outputs included
    output: np.ndarray  # sampled output tokens per request
    upstream: tuple[int, ...]  # the planner nodes its requests read, each once
    flops_per_token: float
    done: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # requests finished before planning
    reads: Reads = ()  # request-level edges: (upstream node, per request the index it reads there or -1)
    app_node: str = ""  # the app node it is (part of)

    @property
    def num_requests(self) -> int:
        """Requests of the node."""
        return int(self.prompt.size)

    @property
    def tokens(self) -> np.ndarray:
        """Prompt plus output tokens of each request: the planner's unit of work."""
        return self.prompt + self.output

    def remaining_tokens(self) -> float:
        """Tokens of the requests not finished before planning."""
        return float(self.tokens[~self.done].sum())


@dataclass(slots=True)
class Workload:
    """All nodes of an app with sampled lengths, in topological order."""

    app: str
    nodes: list[NodeWork]
    index: dict[str, int]
    model_nodes: dict[str, list[int]]
    downstream: list[tuple[int, ...]]
    app_nodes: dict[str, list[int]] = field(default_factory=dict)  # app node -> its planner nodes (one unless in a loop)

    @property
    def models(self) -> list[str]:
        """Distinct models, in first-use order."""
        return list(self.model_nodes)

    def node(self, name: str) -> NodeWork:
        """A node by name."""
        return self.nodes[self.index[name]]


@dataclass(slots=True)
class ModelSampling:
    """What sampling needs from a model: its context window, FLOPs per token and default output lengths."""

    max_model_len: int
    flops_per_token: float
    output_lengths: OutputLengthDistribution


def sample_workload(
    app: AppGraph,
    models: dict[str, ModelSampling],
    *,
    seed: int = 0,
    sample_index: int = 0,
    finished: dict[str, np.ndarray] | None = None,
    known_outputs: dict[str, dict[int, int]] | None = None,
) -> Workload:
    """Draw every request's output length (one stream per app node, a loop's levels drawn in turn) and build the
    prompts of downstream requests.

    ``finished`` marks requests already done (re-planning); ``known_outputs`` fixes the output lengths
    already observed for some requests. Both are per app node and request index, as the runtime knows them.
    """
    split = node_parts(app)
    index = {part.name: i for i, part in enumerate(split.parts)}
    position = {name: i for i, name in enumerate(app.topological_order)}
    streams: dict[str, tuple[np.random.Generator, dict, tuple[np.ndarray, np.ndarray]]] = {}
    nodes: list[NodeWork] = []
    for p, part in enumerate(split.parts):
        name = part.app_node
        spec = app.node(name)
        sampling = models[spec.model]
        if name not in streams:  # one stream per app node; a loop's levels draw from it in turn
            streams[name] = (np.random.default_rng([seed, sample_index, position[name]]),
                             _per_part(split, name, (known_outputs or {}).get(name, {})),
                             split.where(name, (finished or {}).get(name, np.zeros(0, dtype=np.int64))))
        rng, known, (done_owner, done_local) = streams[name]
        prompt = _prompt(app.input_tokens(name), part, nodes, spec.include_upstream_outputs)
        np.minimum(prompt, sampling.max_model_len - 1, out=prompt)
        lengths = spec.output_lengths or sampling.output_lengths
        output = lengths.sample(prompt.size, rng, max_tokens=spec.max_tokens, input_lengths=prompt,
                                max_model_len=sampling.max_model_len)
        for request, tokens in known.get(p, ()):
            output[request] = max(1, int(tokens))
        marked = np.zeros(prompt.size, dtype=bool)
        marked[done_local[done_owner == p]] = True
        nodes.append(NodeWork(
            index=p, name=part.name, model=spec.model, prompt=prompt, output=np.maximum(output, 1),
            upstream=part.upstream, flops_per_token=sampling.flops_per_token, done=marked, reads=part.reads,
            app_node=name,
        ))
    model_nodes: dict[str, list[int]] = {}
    for node in nodes:
        model_nodes.setdefault(node.model, []).append(node.index)
    downstream = [tuple(n.index for n in nodes if i in n.upstream) for i in range(len(nodes))]
    return Workload(app=app.name, nodes=nodes, index=index, model_nodes=model_nodes, downstream=downstream,
                    app_nodes=split.of_node)


def _prompt(input_tokens: np.ndarray, part: NodePart, nodes: list[NodeWork], with_outputs: bool) -> np.ndarray:
    """The part's prompts: its requests' own tokens plus, if the node includes them, the sampled outputs of
    every request they read."""
    prompt = input_tokens.copy() if part.requests is None else input_tokens[part.requests]
    if with_outputs:
        for upstream, read in part.reads:
            has = read >= 0
            if has.all():
                prompt += nodes[upstream].output[read]
            else:
                prompt[has] += nodes[upstream].output[read[has]]
    return prompt


def _per_part(split: NodeParts, name: str, outputs: dict[int, int]) -> dict[int, list[tuple[int, int]]]:
    """Observed output tokens of an app node's requests, per planner node as (its index there, tokens)."""
    if not outputs:
        return {}
    owner, local = split.where(name, np.fromiter(outputs.keys(), dtype=np.int64, count=len(outputs)))
    per: dict[int, list[tuple[int, int]]] = {}
    for p, request, tokens in zip(owner.tolist(), local.tolist(), outputs.values(), strict=True):
        per.setdefault(p, []).append((request, tokens))
    return per
