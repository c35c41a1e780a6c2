"""The sampled workload the planner reasons about: every request's prompt and output length, per node.

SamuLLM plans on one draw of the unknown output lengths (sampling then simulation). Nodes are kept in
topological order and referred to by index in the hot loops. A downstream request's prompt is its own
input plus the sampled outputs of the upstream requests it reads, cut to the model's context window
(the engine would reject a longer prompt; we assume the application truncates it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.graph.app_graph import AppGraph


@dataclass(slots=True)
class NodeWork:
    """One node's sampled requests: prompt and output tokens per request, and what it reads from."""

    index: int
    name: str
    model: str
    prompt: np.ndarray  # tokens per request, upstream outputs included
    output: np.ndarray  # sampled output tokens per request
    upstream: tuple[int, ...]
    flops_per_token: float
    done: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # requests finished before planning

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
    """Draw every request's output length (one stream per node) and build the prompts of downstream requests.

    ``finished`` marks requests already done (re-planning); ``known_outputs`` fixes the output lengths
    already observed for some requests.
    """
    order = app.topological_order
    index = {name: i for i, name in enumerate(order)}
    nodes: list[NodeWork] = []
    for i, name in enumerate(order):
        spec = app.node(name)
        sampling = models[spec.model]
        prompt = app.input_tokens(name).copy()
        if spec.include_upstream_outputs:
            for upstream in spec.depends_on:
                prompt += nodes[index[upstream]].output
        np.minimum(prompt, sampling.max_model_len - 1, out=prompt)
        rng = np.random.default_rng([seed, sample_index, i])
        lengths = spec.output_lengths or sampling.output_lengths
        output = lengths.sample(prompt.size, rng, max_tokens=spec.max_tokens, input_lengths=prompt,
                                max_model_len=sampling.max_model_len)
        for request, tokens in (known_outputs or {}).get(name, {}).items():
            output[request] = max(1, int(tokens))
        done = np.zeros(prompt.size, dtype=bool)
        if finished and name in finished:
            done[np.asarray(finished[name], dtype=np.int64)] = True
        nodes.append(NodeWork(
            index=i, name=name, model=spec.model, prompt=prompt, output=np.maximum(output, 1),
            upstream=tuple(index[u] for u in spec.depends_on), flops_per_token=sampling.flops_per_token, done=done,
        ))
    model_nodes: dict[str, list[int]] = {}
    for node in nodes:
        model_nodes.setdefault(node.model, []).append(node.index)
    downstream = [tuple(n.index for n in nodes if i in n.upstream) for i in range(len(nodes))]
    return Workload(app=app.name, nodes=nodes, index=index, model_nodes=model_nodes, downstream=downstream)
