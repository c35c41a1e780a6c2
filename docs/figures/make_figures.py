"""Draw the figures of docs/concepts.md with the library itself; the PNGs are committed beside this script.

    .venv/bin/python docs/figures/make_figures.py        # about 10 s, no engine, no GPU

- ``cost-model.png``: sampling then simulation for one model (Llama-2-7b-hf, one A100-80GB, 1,000 requests of
  512 prompt tokens and max_tokens 512): the sampled output lengths, and requests finished over time in the
  simulated engine for five samples.
- ``plan-vs-sequential.png``: the paper's ensemble app (9 models, 1,000 questions) on 8 A100-80GB: the
  ``search`` planner's stages above the ``sequential`` baseline's (one model at a time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from samullm_lc import CostModel, simulate
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.planner import Cluster, plan_app
from samullm_lc.planner.gantt import draw_gantt_comparison

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUESTS, PROMPT_TOKENS, MAX_TOKENS, SAMPLES = 1000, 512, 512, 5


def cost_model_figure(path: Path) -> None:
    cost = CostModel("Llama-2-7b-hf", "A100-80GB", tp=1)
    rng = np.random.default_rng(0)
    inputs = np.full(REQUESTS, PROMPT_TOKENS)
    figure = Figure(figsize=(11, 3.6), dpi=110)
    FigureCanvasAgg(figure)
    lengths_axes, progress_axes = figure.subplots(1, 2)
    for sample in range(SAMPLES):
        outputs = cost.sample_output_tokens(inputs, MAX_TOKENS, rng)
        result = simulate(cost.scheduler, cost.latency, inputs, outputs)
        if sample == 0:
            lengths_axes.hist(outputs, bins=40, color="tab:blue")
        finish = np.sort(result.finish_seconds)
        progress_axes.step(finish, np.arange(1, finish.size + 1), where="post", linewidth=1,
                           label=f"sample {sample + 1}: {result.total_seconds:.1f} s")
    lengths_axes.set_title(f"1. sample output lengths (ShareGPT, max_tokens {MAX_TOKENS})", fontsize=10)
    lengths_axes.set_xlabel("output tokens")
    lengths_axes.set_ylabel("requests")
    progress_axes.set_title("2. simulate vLLM's continuous batching", fontsize=10)
    progress_axes.set_xlabel("time (s)")
    progress_axes.set_ylabel("requests finished")
    progress_axes.legend(fontsize=8, frameon=False)
    figure.suptitle(f"Llama-2-7b-hf on 1 x A100-80GB, {REQUESTS:,} requests of {PROMPT_TOKENS} prompt tokens",
                    fontsize=11)
    figure.tight_layout()
    figure.savefig(path)


def plan_figure(path: Path) -> None:
    app = AppGraph.load(ROOT / "examples" / "apps" / "ensemble.json")
    cluster = Cluster.parse("8xA100-80GB")
    plans = [plan_app(app, cluster, planner) for planner in ("search", "sequential")]
    draw_gantt_comparison(plans, path)
    path.chmod(0o644)  # a docs asset, not a user's report


def main() -> None:
    cost_model_figure(HERE / "cost-model.png")
    plan_figure(HERE / "plan-vs-sequential.png")
    for name in ("cost-model.png", "plan-vs-sequential.png"):
        print(HERE / name)


if __name__ == "__main__":
    main()
