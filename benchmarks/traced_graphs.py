"""The traced graphs of the example pipelines (``examples/graphs/<example>.json``) with the GPU models the examples
serve, for the planner benchmarks.

Each example module names its GPU models in a dict ``GPU_MODELS`` (client model name -> weights). It is read
from the module's source, not imported: the examples import their own ``common`` module, which would clash
with this folder's, and LangChain, which the planner does not need. ``mixed.py`` builds its dict from the
five pipelines it runs; its graph gets the union of theirs.
"""

from __future__ import annotations

import ast
from pathlib import Path

from samullm_lc.graph.app_graph import AppGraph

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
GRAPHS = EXAMPLES / "graphs"
TRACED = ("batch_eval", "chain_summary", "ensemble_fuser", "langgraph_loop", "map_reduce", "mixed", "router")
"""The example pipelines, in the order of the tables."""


def gpu_models(example: str) -> dict[str, str]:
    """The example's ``GPU_MODELS`` when it is a literal dict, else the union of every example's literal one."""
    mapping = _literal_gpu_models(EXAMPLES / f"{example}.py")
    if mapping is not None:
        return mapping
    union: dict[str, str] = {}
    for path in sorted(EXAMPLES.glob("*.py")):
        union.update(_literal_gpu_models(path) or {})
    return union


def _literal_gpu_models(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "GPU_MODELS" for t in node.targets):
            try:
                return dict(ast.literal_eval(node.value))
            except ValueError:  # built from other modules' dicts
                return None
    return None


def traced_app(example: str, path: Path | None = None) -> AppGraph:
    """The example's traced graph with its GPU models (each node's model relabelled, the weights' catalogue name)."""
    app = AppGraph.load(path or GRAPHS / f"{example}.json")
    names = {key for node in app.nodes for key in (node.name, (node.site or "").split(" @ ", 1)[0], node.model)}
    mapping = {client: weights.rsplit("/", 1)[-1] for client, weights in gpu_models(example).items() if client in names}
    return app.with_models(mapping)
