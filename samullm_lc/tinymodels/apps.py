"""The demo application for the tiny models: two answerers of different sizes and a judge reading both.

It is the embedded default job (``samullm demo``, ``make demo``): the shape of the paper's ensemble app, small
enough for this machine's CPU engine. Prompt lengths come from the ShareGPT prompt-length table, clipped to
what a 2,048-token engine takes.
"""

from __future__ import annotations

import numpy as np

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.limits import DEMO_QUESTIONS

ANSWERERS = {"tiny-llama-s": 128, "tiny-llama-m": 128}  # model -> max_tokens
JUDGE = "tiny-qwen2-m"
JUDGE_TEMPLATE_TOKENS = 24
JUDGE_MAX_TOKENS = 32
MAX_PROMPT_TOKENS = 400


def tiny_demo_app(n: int = 200, seed: int = 0) -> AppGraph:
    """``n`` questions (at most ``DEMO_QUESTIONS``), each answered by both answerers, then judged by a third
    model reading both answers."""
    DEMO_QUESTIONS.check(n)
    rng = np.random.default_rng(seed)
    prompts = np.clip(OutputLengthDistribution.sharegpt_input_lengths().sample(n, rng), 8, MAX_PROMPT_TOKENS)
    nodes = [LLMNode(name=f"answer/{model}", model=model, input_tokens=prompts.tolist(), max_tokens=max_tokens)
             for model, max_tokens in ANSWERERS.items()]
    nodes.append(LLMNode(name="judge", model=JUDGE, input_tokens=[JUDGE_TEMPLATE_TOKENS] * n,
                         max_tokens=JUDGE_MAX_TOKENS, depends_on=[node.name for node in nodes]))
    return AppGraph(name="tiny-demo", nodes=nodes,
                    description=f"{n} questions answered by {', '.join(ANSWERERS)} and judged by {JUDGE}")
