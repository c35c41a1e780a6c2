"""What a multi-LLM application is: LLM nodes, their request sets, and which outputs feed which prompts.

A node is one model answering one set of requests. An edge says that request i of the downstream node
needs the output of request i of the upstream node (an ensemble's fuser reads every member's answer to
prompt i; chunk k of a summary reads the summary of chunk k - 1). So a downstream request arrives when
all its upstream requests have finished, and its prompt grows by their outputs.
"""

from __future__ import annotations

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


class AppGraph(ValidatedModel):
    """A multi-LLM application as a DAG of LLM nodes; JSON round-trip."""

    model_config = ConfigDict(extra="forbid")

    name: str
    nodes: list[LLMNode]
    description: str = ""

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
            for upstream in node.depends_on:
                if self.node(upstream).num_requests != node.num_requests:
                    raise ConfigError(
                        f"node {node.name!r} ({node.num_requests} requests) depends on {upstream!r} "
                        f"({self.node(upstream).num_requests} requests): request i reads upstream request i, "
                        "so the counts must match"
                    )
        self.topological_order  # raises on a cycle
        return self

    def node(self, name: str) -> LLMNode:
        """A node by name; ConfigError if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"app {self.name!r} has no node {name!r}")

    @cached_property
    def topological_order(self) -> list[str]:
        """Node names, every node after its upstream nodes (Kahn's algorithm, stable in declaration order)."""
        remaining = {node.name: set(node.depends_on) for node in self.nodes}
        order: list[str] = []
        while remaining:
            ready = [name for name, deps in remaining.items() if not deps]
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
