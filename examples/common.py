"""What every example shares: the server the pipelines were written for, the command line, the choice between
tiny models (this machine) and GPU models, and running or tracing a pipeline under samullm.

The examples are ordinary LangChain pipelines: ``ChatOpenAI`` clients pointed at an OpenAI-compatible vLLM
server (``BASE_URL``), each role with its own client model name. Nothing in them knows about samullm; only
``main`` does, through ``run_example``:

- run: ``with samullm.offline(models=...) as run: results = chain.batch(inputs)`` serves every call on an
  in-process pool of vLLM engines, then prints the run report;
- ``--trace-only``: ``samullm.trace(chain, inputs, models=...)`` runs the pipeline on a stand-in model (no engine)
  and prints the application graph it records (one node per client and call site).

``--gpu`` swaps the tiny random-weight models (``TINY_MODELS``, gibberish but fast on CPU cores) for the GPU
models (``GPU_MODELS``) and lets the pool use the GPUs CUDA shows; the pipeline itself does not change.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

BASE_URL = "http://localhost:8000/v1"
"""The vLLM server the pipelines were written against. Inside ``samullm.offline()`` nothing listens there: the
OpenAI SDK's calls to it are answered in-process."""

API_KEY = "EMPTY"

TINY_TO_GPU = {
    "tiny-llama-s": "meta-llama/Llama-2-7b-chat-hf",
    "tiny-llama-m": "meta-llama/Llama-2-13b-chat-hf",
    "tiny-qwen2-m": "meta-llama/Llama-2-70b-chat-hf",
}
"""One GPU model per tiny model, the same in every example: client names that share a tiny model share a GPU
model, so the apps keep their shape at GPU scale (Hugging Face ids whose short names are in the catalogue;
the weights must be in the local Hugging Face cache)."""

DEFAULT_N = 16
SHOWN_RESULTS = 3

WORDS = ("river", "mountain", "city", "garden", "market", "bridge", "library", "harbour", "forest", "island",
         "engine", "battery", "satellite", "compiler", "database", "network", "protein", "glacier", "volcano",
         "orchestra", "recipe", "festival", "railway", "lighthouse", "telescope", "vaccine", "algorithm",
         "museum", "tunnel", "desert")
"""Nouns the examples' inputs are made of."""

FILLER = ("the", "a", "of", "to", "and", "in", "is", "that", "for", "on", "with", "as", "was", "by", "at", "from",
          "this", "old", "new", "small", "large", "quiet", "busy", "north", "south", "early", "late", "near")


def sentence(rng: random.Random, words: int) -> str:
    """A deterministic pseudo-sentence of ``words`` words (about one noun in three)."""
    picked = [rng.choice(WORDS) if rng.random() < 0.35 else rng.choice(FILLER) for _ in range(words)]
    text = " ".join(picked)
    return text[:1].upper() + text[1:] + "."


def paragraph(rng: random.Random, words: int) -> str:
    """Sentences of 6-14 words adding up to exactly ``words`` words."""
    sentences, left = [], words
    while left > 0:
        size = min(left, rng.randint(6, 14))
        sentences.append(sentence(rng, size))
        left -= size
    return " ".join(sentences)


# ---- the command line --------------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser(description: str | None) -> argparse.ArgumentParser:
    """The examples' common options; an example adds its own before ``run_example`` parses them."""
    p = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0] if description else None)
    p.add_argument("--n", type=positive_int, default=DEFAULT_N, help=f"pipeline inputs (default {DEFAULT_N})")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")
    p.add_argument("--gpu", action="store_true",
                   help="serve the GPU models (GPU_MODELS) on the GPUs CUDA shows instead of the tiny models")
    p.add_argument("--trace-only", action="store_true",
                   help="trace the pipeline on a stand-in model (no engine) and print its graph instead of running")
    p.add_argument("--report", type=Path, metavar="PATH",
                   help="write the run report as JSON, its HTML page beside it (.html) and the engines' log (.log)")
    p.add_argument("--verbose", action="store_true", help="show the engines' own output (vLLM's logs) here")
    return p


def choose_models(args: argparse.Namespace, tiny: Mapping[str, str], gpu: Mapping[str, str]) -> dict[str, str]:
    """``{client name: weights}`` for this run: the GPU models with ``--gpu``, else the tiny ones."""
    return dict(gpu if args.gpu else tiny)


def run_example(
    build: Callable[[], Any],
    make_inputs: Callable[..., list[dict[str, Any]]],
    tiny: Mapping[str, str],
    gpu: Mapping[str, str],
    argv: Sequence[str] | None = None,
    *,
    description: str | None = None,
) -> list[Any] | None:
    """Parse the common options, then trace (``--trace-only``) or run the pipeline on ``make_inputs(n)``: print
    the graph, or the run report and the first results, and write ``--report``. Returns the results of a run."""
    args = parser(description).parse_args(argv)
    models = choose_models(args, tiny, gpu)
    inputs = make_inputs(args.n, seed=args.seed)
    name = Path(inspect.getfile(build)).stem
    if args.trace_only:
        graph = trace(build(), inputs, models, name=name)
        print(graph.describe())
        return None
    print(f"{name}: {args.n} inputs through samullm.offline(), "
          f"{len(models)} client models served by {len(set(models.values()))} {'GPU' if args.gpu else 'tiny'} models")
    engine_log = args.report.with_suffix(".log") if args.report else None
    results, report = run(build(), inputs, models, verbose=args.verbose, engine_log=engine_log)
    print(report.summary())
    print(describe_results(results))
    if args.report:
        page = report.save_html(args.report.with_suffix(".html"))
        print(f"run report: {page} (the page), {report.save(args.report)} (JSON; `samullm report` draws it)")
    return results


def run(chain: Any, inputs: list[dict[str, Any]], models: Mapping[str, str], **offline: Any) -> tuple[list[Any], Any]:
    """The pipeline's batch inside ``samullm.offline()``: every call served by the engine pool."""
    import samullm_lc as samullm

    with samullm.offline(models=dict(models), **offline) as session:
        results = chain.batch(inputs)
    return results, session.report()


def trace(chain: Any, inputs: list[dict[str, Any]], models: Mapping[str, str], *, name: str | None = None) -> Any:
    """The pipeline's application graph, recorded on a stand-in model (no engine runs); ``name`` names the graph
    (else it is the chain's LangChain name)."""
    import samullm_lc as samullm

    graph = samullm.trace(chain, inputs, models=dict(models))
    return graph.model_copy(update={"name": name}) if name else graph


# ---- printing ----------------------------------------------------------------------------------------------

def describe_results(results: Sequence[Any], shown: int = SHOWN_RESULTS) -> str:
    """The first few results, each on one line (the tiny models' texts are gibberish: random weights)."""
    lines = [f"{len(results)} results; the first {min(shown, len(results))}:"]
    for result in results[:shown]:
        text = json.dumps(result, default=str, ensure_ascii=False)
        lines.append(f"  {text[:160]}{'...' if len(text) > 160 else ''}")
    return "\n".join(lines)
