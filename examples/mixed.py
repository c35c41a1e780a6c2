"""The Mixed app: the five other pipelines over one batch. Each input carries one input for each of them, and a
RunnableParallel runs all five on it, so every model of every pipeline is busy in the same run:

    {"ensemble": ..., "router": ..., "chain_summary": ..., "map_reduce": ..., "langgraph_loop": ...}
        -> ensemble_fuser | router | chain_summary | map_reduce | langgraph_loop   (side by side)

The client names are those of the five examples (unique across them), so the graph holds every node of each.

    python examples/mixed.py --n 16
    python examples/mixed.py --gpu --n 200
    python examples/mixed.py --trace-only
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import chain_summary
import ensemble_fuser
import langgraph_loop
import map_reduce
import router
from common import run_example
from langchain_core.runnables import Runnable, RunnableParallel

PIPELINES = {
    "ensemble": ensemble_fuser,
    "router": router,
    "chain_summary": chain_summary,
    "map_reduce": map_reduce,
    "langgraph_loop": langgraph_loop,
}
"""Key of the input (and of the result) -> the example module whose pipeline serves it."""

TINY_MODELS = {name: model for module in PIPELINES.values() for name, model in module.TINY_MODELS.items()}
GPU_MODELS = {name: model for module in PIPELINES.values() for name, model in module.GPU_MODELS.items()}


def build() -> Runnable:
    """``{key: that pipeline's input}`` -> ``{key: that pipeline's result}`` for the five pipelines."""
    return RunnableParallel({key: itemgetter(key) | module.build() for key, module in PIPELINES.items()})


def make_inputs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` inputs; input i holds input i of each pipeline's own ``make_inputs(n, seed)``."""
    per_pipeline = {key: module.make_inputs(n, seed=seed) for key, module in PIPELINES.items()}
    return [{key: inputs[i] for key, inputs in per_pipeline.items()} for i in range(n)]


def main(argv: list[str] | None = None) -> list[Any] | None:
    return run_example(build, make_inputs, TINY_MODELS, GPU_MODELS, argv, description=__doc__)


if __name__ == "__main__":
    main()
