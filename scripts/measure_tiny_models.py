"""Measure each tiny random-weight model in the real vLLM CPU engine: start time, speed, output lengths.

For every model it builds the folder, starts an in-process engine with dummy weights, sends a batch of
requests (temperature 1.0, so the output length is geometric with mean about the vocabulary size),
then one request of fixed length, and prints start seconds, output tokens per second (batched and
single-stream) and the mean and median output length; it shuts the engine down before the next model. The figures feed the table in ``docs/tiny-models.md``.

Usage, from the repository root: ``PYTHONPATH=. python scripts/measure_tiny_models.py
[--models tiny-llama-s ...] [--requests 256] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from samullm_lc.tinymodels import TINY_MODELS, ensure_tiny_model, get_spec
from samullm_lc.tinymodels.tokenizer import corpus_lines

MIB = 1024**2
# Tokens of the one-request run that gives the single-stream (unbatched) decode speed.
SINGLE_STREAM_TOKENS = 256


def measure(name: str, requests: int, max_tokens: int, kv_cache_mib: int, cache_dir: Path | None) -> dict[str, Any]:
    """Start one engine for ``name``, generate ``requests`` completions, return the figures."""
    from vllm import LLM, SamplingParams

    spec = get_spec(name)
    path = ensure_tiny_model(name, cache_dir)
    started = time.perf_counter()
    llm = LLM(
        model=str(path),
        **spec.vllm_kwargs(),
        enforce_eager=True,
        distributed_executor_backend="uni",
        kv_cache_memory_bytes=kv_cache_mib * MIB,
        max_model_len=2048,
        seed=0,
    )
    start_s = time.perf_counter() - started
    try:
        prompts = list(corpus_lines(seed=1, sentences=requests))
        params = SamplingParams(temperature=1.0, max_tokens=max_tokens)
        began = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - began
        single = SamplingParams(temperature=1.0, max_tokens=SINGLE_STREAM_TOKENS, ignore_eos=True)
        began = time.perf_counter()
        llm.generate(prompts[:1], single, use_tqdm=False)
        single_s = time.perf_counter() - began
    finally:
        llm.llm_engine.engine_core.shutdown()
    lengths = [len(output.outputs[0].token_ids) for output in outputs]
    stopped = sum(output.outputs[0].finish_reason == "stop" for output in outputs)
    return {
        "model": name,
        "architecture": spec.architecture,
        "vocab_size": spec.vocab_size,
        "start_s": round(start_s, 2),
        "generate_s": round(elapsed, 2),
        "output_tokens": sum(lengths),
        "tokens_per_s": round(sum(lengths) / elapsed, 1),
        "single_stream_tokens_per_s": round(SINGLE_STREAM_TOKENS / single_s, 1),
        "mean_output_len": round(statistics.fmean(lengths), 1),
        "median_output_len": statistics.median(lengths),
        "stopped_at_eos": stopped,
        "requests": requests,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure each model in turn, print one line per model and a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(TINY_MODELS), choices=sorted(TINY_MODELS))
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--kv-cache-mib", type=int, default=1024, help="KV cache per engine, MiB.")
    parser.add_argument("--cache-dir", type=Path, default=None, help="Tiny-model cache (default: the standard one).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine; vLLM reads it on import

    results = []
    for name in args.models:
        result = measure(name, args.requests, args.max_tokens, args.kv_cache_mib, args.cache_dir)
        results.append(result)
        print(json.dumps(result), flush=True)

    print("\n| model | start s | tokens/s (batch) | tokens/s (1 request) | mean output len | median output len |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['model']} | {r['start_s']} | {r['tokens_per_s']} | {r['single_stream_tokens_per_s']} "
            f"| {r['mean_output_len']} | {r['median_output_len']} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
