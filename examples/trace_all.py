"""Trace every example and save its application graph to examples/graphs/<example>.json (benchmarks read them).

Each example runs on ``make_inputs(N)`` with its tiny models through ``samullm.trace`` (a stand-in model answers
every call: no engine starts, a few seconds in all), and the graph is written with ``graph.save(path)``: one
node per client model name, its calls per input and which earlier calls each call reads.

    python examples/trace_all.py                 # all examples, 16 inputs each
    python examples/trace_all.py router --n 32   # some of them, another size
    python examples/trace_all.py --gpu           # nodes carry the GPU models instead of the tiny ones

The stand-in samples output lengths, so token counts differ from run to run; the structure does not
(tests/examples/test_traced_structure.py checks the saved graphs against it).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from common import positive_int, trace

EXAMPLES = ("ensemble_fuser", "router", "chain_summary", "map_reduce", "langgraph_loop", "mixed", "batch_eval")
GRAPHS = Path(__file__).parent / "graphs"
N = 16


def trace_example(name: str, n: int = N, *, gpu: bool = False, seed: int = 0):
    """The example's traced graph on ``make_inputs(n, seed)``, named after the example."""
    example = importlib.import_module(name)
    models = example.GPU_MODELS if gpu else example.TINY_MODELS
    return trace(example.build(), example.make_inputs(n, seed=seed), models, name=name)


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("examples", nargs="*", metavar="EXAMPLE",
                   help=f"examples to trace (default: all of {', '.join(EXAMPLES)})")
    p.add_argument("--n", type=positive_int, default=N, help=f"inputs per example (default {N})")
    p.add_argument("--gpu", action="store_true", help="nodes carry the GPU models (GPU_MODELS)")
    p.add_argument("--out", type=Path, default=GRAPHS, help=f"folder of the graphs (default {GRAPHS})")
    args = p.parse_args(argv)
    unknown = [name for name in args.examples if name not in EXAMPLES]
    if unknown:
        p.error(f"unknown example(s) {unknown}; choose from {', '.join(EXAMPLES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in args.examples or EXAMPLES:
        graph = trace_example(name, args.n, gpu=args.gpu)
        written.append(graph.save(args.out / f"{name}.json"))
        print(graph.describe())
        print(f"  -> {written[-1]}")
    return written


if __name__ == "__main__":
    main()
