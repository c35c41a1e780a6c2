"""The paper's four applications as AppGraphs: ensemble, router, chain summary, and all three mixed.

SamuLLM (Fang et al., 2025) evaluates its planner on an LLM-Blender style ensemble, a RouterBench style router
and a BooookScore style chunked summariser with an evaluator. The real MixInstruct and RouterBench prompts are
not available offline, so every prompt length here is drawn from the shipped ShareGPT V3 prompt-length table
(``OutputLengthDistribution.sharegpt_input_lengths()``) and clipped so that prompt plus ``max_tokens`` fits the
model's context window. Output lengths are left to the planner's default (the model's distribution, or ShareGPT).

The builders are plain functions of ``(n, seed)`` so that benchmarks and tests build any size in memory. Each
app draws from its own random stream, so the mixed app is exactly the three others with their node names
prefixed. ``write_apps`` writes them as the JSON files in ``examples/apps`` (``scripts/build_paper_apps.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from samullm_lc.costmodel.architecture import resolve_architecture
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.graph.app_graph import AppGraph, LLMNode

DEFAULT_N = 1000

# LLM-Blender's MixInstruct members; max_tokens spread over the 256-512 range, one value per model.
ENSEMBLE_MAX_TOKENS: dict[str, int] = {
    "vicuna-13b-v1.5": 512,
    "oasst-sft-4-pythia-12b-epoch-3.5": 384,
    "alpaca-13b": 256,
    "baize-v2-13b": 384,
    "koala-13B-HF": 320,
    "dolly-v2-12b": 256,
    "mpt-7b-chat": 448,
    "chatglm3-6b": 512,
    "stablelm-tuned-alpha-7b": 320,
}

# RouterBench's five open models with a fixed routing mix (share of prompts sent to each); an assumption,
# since RouterBench's per-prompt routing decisions are not available offline.
ROUTER_MIX: dict[str, float] = {
    "Llama-2-70b-chat-hf": 0.20,
    "Mixtral-8x7B-Instruct-v0.1": 0.30,
    "WizardLM-13B-V1.2": 0.20,
    "CodeLlama-34b-Instruct-hf": 0.10,
    "Mistral-7B-Instruct-v0.2": 0.20,
}
ROUTER_MAX_TOKENS = 512

# BooookScore's incremental summariser: a document cut into 2,048-token chunks, each chunk summarised with the
# summary so far, then an evaluator reads the final summary.
SUMMARISER = "vicuna-13b-v1.5"
EVALUATOR = "Llama-2-70b-chat-hf"
CHUNK_TOKENS = 2048
NUM_CHUNKS = 8
LAST_CHUNK_MIN_TOKENS = 256  # the last chunk of a document is whatever is left: 256-2,048 tokens
SUMMARY_TEMPLATE_TOKENS = 256  # instructions around each chunk (the previous summary is added as upstream output)
SUMMARY_MAX_TOKENS = 512
EVALUATOR_TEMPLATE_TOKENS = 768  # evaluation instructions and few-shot examples around the final summary
EVALUATOR_MAX_TOKENS = 512

_STREAMS = {"ensemble": 1, "router": 2, "chain-summary": 3}


def _rng(app: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[app]])


def _prompt_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """ShareGPT prompt lengths in tokens, unclipped."""
    return OutputLengthDistribution.sharegpt_input_lengths().sample(n, rng)


def _fit_context(lengths: np.ndarray, model: str, max_tokens: int) -> list[int]:
    """Clip prompt lengths (tokens) so that prompt + max_tokens fits the model's context window."""
    room = resolve_architecture(model).max_model_len - max_tokens
    return np.clip(lengths, 1, room).astype(int).tolist()


def ensemble_app(n: int = DEFAULT_N, seed: int = 0) -> AppGraph:
    """Nine MixInstruct models, each answering the same ``n`` prompts; no dependencies."""
    prompts = _prompt_lengths(n, _rng("ensemble", seed))
    nodes = [
        LLMNode(name=model, model=model, input_tokens=_fit_context(prompts, model, max_tokens), max_tokens=max_tokens)
        for model, max_tokens in ENSEMBLE_MAX_TOKENS.items()
    ]
    return AppGraph(
        name="ensemble",
        nodes=nodes,
        description=(
            f"LLM-Blender MixInstruct-style ensemble: {len(nodes)} models each answer the same {n} prompts "
            "(ShareGPT prompt lengths standing in for MixInstruct's); max_tokens 256-512 per model."
        ),
    )


def _routing_counts(n: int) -> dict[str, int]:
    """Prompts per model under ``ROUTER_MIX`` (largest remainder, every model at least one when n allows)."""
    shares = np.array(list(ROUTER_MIX.values())) * n
    counts = np.floor(shares).astype(int)
    for index in np.argsort(-(shares - counts), kind="stable")[: n - counts.sum()]:
        counts[index] += 1
    for index in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[index] += 1
    return {model: int(count) for model, count in zip(ROUTER_MIX, counts) if count > 0}


def router_app(n: int = DEFAULT_N, seed: int = 0) -> AppGraph:
    """``n`` prompts, each routed to one of five RouterBench models in the fixed ``ROUTER_MIX``."""
    rng = _rng("router", seed)
    prompts = _prompt_lengths(n, rng)
    counts = _routing_counts(n)
    owner = rng.permutation(np.repeat(np.arange(len(counts)), list(counts.values())))
    nodes = [
        LLMNode(
            name=model, model=model, max_tokens=ROUTER_MAX_TOKENS,
            input_tokens=_fit_context(prompts[owner == index], model, ROUTER_MAX_TOKENS),
        )
        for index, model in enumerate(counts)
    ]
    mix = ", ".join(f"{model} {share:.0%}" for model, share in ROUTER_MIX.items())
    return AppGraph(
        name="router",
        nodes=nodes,
        description=(
            f"RouterBench-style router: {n} prompts (ShareGPT prompt lengths), each routed to one model "
            f"in a fixed mix ({mix}); max_tokens {ROUTER_MAX_TOKENS}."
        ),
    )


def chain_summary_app(n: int = DEFAULT_N, seed: int = 0, num_chunks: int = NUM_CHUNKS) -> AppGraph:
    """``n`` documents of ``num_chunks`` chunks: one summariser node per chunk index, then an evaluator."""
    rng = _rng("chain-summary", seed)
    last_chunk = rng.integers(LAST_CHUNK_MIN_TOKENS, CHUNK_TOKENS + 1, size=n)
    nodes = []
    for k in range(num_chunks):
        chunk = last_chunk if k == num_chunks - 1 else np.full(n, CHUNK_TOKENS)
        nodes.append(LLMNode(
            name=f"summarise-{k}", model=SUMMARISER, max_tokens=SUMMARY_MAX_TOKENS,
            input_tokens=(chunk + SUMMARY_TEMPLATE_TOKENS).astype(int).tolist(),
            depends_on=[f"summarise-{k - 1}"] if k else [],
        ))
    nodes.append(LLMNode(
        name="evaluate", model=EVALUATOR, max_tokens=EVALUATOR_MAX_TOKENS,
        input_tokens=[EVALUATOR_TEMPLATE_TOKENS] * n, depends_on=[f"summarise-{num_chunks - 1}"],
    ))
    return AppGraph(
        name="chain-summary",
        nodes=nodes,
        description=(
            f"BooookScore-style incremental summary: {n} documents of {num_chunks} chunks of up to "
            f"{CHUNK_TOKENS} tokens; {SUMMARISER} summarises chunk k with the summary of chunk k-1, then "
            f"{EVALUATOR} evaluates the final summary."
        ),
    )


def mixed_app(n: int = DEFAULT_N, seed: int = 0) -> AppGraph:
    """The ensemble, router and chain-summary apps side by side, node names prefixed with the app name."""
    nodes = []
    for part in (ensemble_app(n, seed), router_app(n, seed), chain_summary_app(n, seed)):
        for node in part.nodes:
            nodes.append(node.model_copy(update={
                "name": f"{part.name}/{node.name}",
                "depends_on": [f"{part.name}/{upstream}" for upstream in node.depends_on],
            }))
    return AppGraph(
        name="mixed",
        nodes=nodes,
        description=f"The ensemble, router and chain-summary apps at N={n}, run together.",
    )


PAPER_APPS: dict[str, Callable[[int, int], AppGraph]] = {
    "ensemble": ensemble_app,
    "router": router_app,
    "chain-summary": chain_summary_app,
    "mixed": mixed_app,
}


def to_json(app: AppGraph) -> str:
    """The app as JSON with one node per line (loadable by ``AppGraph.load``)."""
    nodes = [json.dumps(node.model_dump(exclude_none=True), separators=(",", ":")) for node in app.nodes]
    head = json.dumps({"name": app.name, "description": app.description}, indent=1)[:-2]
    return head + ',\n "nodes": [\n  ' + ",\n  ".join(nodes) + "\n ]\n}\n"


def write_apps(out: Path, n: int = DEFAULT_N, seed: int = 0) -> list[Path]:
    """Write every paper app at size ``n`` into ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if n == DEFAULT_N else f"-n{n}"
    paths = []
    for name, build in PAPER_APPS.items():
        path = out / f"{name}{suffix}.json"
        path.write_text(to_json(build(n, seed)))
        paths.append(path)
    return paths
