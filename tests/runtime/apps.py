"""App graphs the runtime tests share."""

from __future__ import annotations

import numpy as np

from samullm_lc.graph.app_graph import AppGraph, LLMNode


def ensemble_app(n: int, members: list[str], fuser: str) -> AppGraph:
    """``n`` questions answered by every member (50-400 prompt tokens, seeded), then fused by ``fuser``."""
    rng = np.random.default_rng(1)
    nodes = [LLMNode(name=m, model=m, input_tokens=rng.integers(50, 400, n).tolist(), max_tokens=256) for m in members]
    nodes.append(LLMNode(name="fuse", model=fuser, input_tokens=[64] * n, max_tokens=128, depends_on=members))
    return AppGraph(name="ensemble", nodes=nodes)
