"""Batch evaluation over a small dataset: an answerer answers each question, a judge grades the answer against
the reference, and the script scores every item and writes a JSON report (per item and aggregate).

    question -> eval-answerer -> eval-judge (question, reference, answer) -> "Score: N"

Metrics: token F1 and exact match of the answer against the reference (SQuAD-style normalisation), and the
judge's score parsed from its text ("Score: 7", or the first number from 1 to 10; none if it gave none). The
tiny models have random weights, so their texts are gibberish: the metrics are near zero and most judge texts
carry no score; the script reports that rather than failing.

    python examples/batch_eval.py                        # all 64 rows of examples/data/eval.jsonl, tiny models
    python examples/batch_eval.py --gpu --report results/eval-gpu.json
    python examples/batch_eval.py --trace-only

Plan once, reuse the plan: ``--plan FILE`` traces the batch on a stand-in model (``graph = samullm.trace(chain,
inputs, models=...)``, no engine), plans it for this machine's devices (``plan = samullm.plan(graph)``) and saves
both (``plan.save(FILE)``, ``graph.save(...)`` beside it as FILE's stem + ``.graph.json``) before running. When
FILE exists, the run reuses it without tracing or planning again:
``samullm.offline(models=..., plan=Plan.load(FILE), graph=AppGraph.load(...))`` (the graph lets the pool's later
re-plans see the whole app). Keep one plan file per dataset, batch size and device set:

    python examples/batch_eval.py --plan results/eval.plan.json     # first run: plans, saves, runs
    python examples/batch_eval.py --plan results/eval.plan.json     # later runs: reuse the saved plan

The dataset is generated (``generate_dataset``); ``--write-dataset`` rewrites examples/data/eval.jsonl from it.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

from common import API_KEY, BASE_URL, choose_models, describe_results, parser, run, trace
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_openai import ChatOpenAI

ANSWERER, JUDGE = "eval-answerer", "eval-judge"

TINY_MODELS = {
    "eval-answerer": "tiny-llama-m",
    "eval-judge": "tiny-qwen2-m",
}
GPU_MODELS = {
    "eval-answerer": "meta-llama/Llama-2-13b-chat-hf",
    "eval-judge": "meta-llama/Llama-2-70b-chat-hf",
}

DATASET = Path(__file__).parent / "data" / "eval.jsonl"
DATASET_ROWS = 64
DEFAULT_REPORT = Path("results/batch_eval.json")


# ---- the dataset -------------------------------------------------------------------------------------------

_CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Canada": "Ottawa", "Peru": "Lima",
             "Norway": "Oslo", "Egypt": "Cairo", "Chile": "Santiago", "Italy": "Rome", "Spain": "Madrid",
             "Ghana": "Accra", "Poland": "Warsaw", "Greece": "Athens", "Cuba": "Havana", "Nepal": "Kathmandu",
             "Austria": "Vienna"}
_OPPOSITES = {"hot": "cold", "early": "late", "open": "closed", "heavy": "light", "north": "south",
              "wet": "dry", "empty": "full", "loud": "quiet", "fast": "slow", "high": "low", "old": "new",
              "first": "last", "inside": "outside", "win": "lose", "buy": "sell", "push": "pull"}
_WORDS = ("river", "garden", "harbour", "lantern", "compass", "meadow", "pencil", "thunder", "biscuit",
          "volcano", "orchard", "anchor", "violin", "blanket", "whistle", "saddle")


def generate_dataset(rows: int = DATASET_ROWS, seed: int = 0) -> list[dict[str, str]]:
    """``rows`` question/reference pairs of four kinds in turn (sums, capitals, opposites, words spelt
    backwards), deterministic in ``seed``."""
    rng = random.Random(seed)
    kinds = ("sum", "capital", "opposite", "backwards")
    dataset = []
    for i in range(rows):
        kind = kinds[i % len(kinds)]
        if kind == "sum":
            a, b = rng.randint(2, 60), rng.randint(2, 60)
            question, reference = f"What is {a} plus {b}?", str(a + b)
        elif kind == "capital":
            country = rng.choice(sorted(_CAPITALS))
            question, reference = f"What is the capital of {country}?", _CAPITALS[country]
        elif kind == "opposite":
            word = rng.choice(sorted(_OPPOSITES))
            question, reference = f"What is the opposite of '{word}'?", _OPPOSITES[word]
        else:
            word = rng.choice(_WORDS)
            question, reference = f"Spell the word '{word}' backwards.", word[::-1]
        dataset.append({"id": f"eval-{i:03d}", "kind": kind, "question": question, "reference": reference})
    return dataset


def dataset_text(rows: list[dict[str, str]]) -> str:
    """The JSON Lines text of the shipped file: one row per line, keys in order."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def load_dataset(path: Path = DATASET) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_inputs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first ``n`` rows of the shipped dataset (repeated if ``n`` is larger); with a seed other than 0, the
    rows in a seeded order."""
    rows = load_dataset()
    if seed:
        random.Random(seed).shuffle(rows)
    return [dict(rows[i % len(rows)]) for i in range(n)]


# ---- the pipeline ------------------------------------------------------------------------------------------

def build() -> Runnable:
    """``{"question", "reference", ...}`` -> the same dict with ``answer`` and ``verdict`` (the judge's text)."""
    answerer = ChatOpenAI(model=ANSWERER, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=24)
    answer = ChatPromptTemplate.from_messages([
        ("system", "Answer the question with a word or a number, nothing else."),
        ("user", "{question}"),
    ]) | answerer | StrOutputParser()
    judge = ChatOpenAI(model=JUDGE, base_url=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=16)
    grade = ChatPromptTemplate.from_messages([
        ("system", "You grade answers against a reference. Reply with 'Score: N', N from 1 (wrong) to 10 (right)."),
        ("user", "Question: {question}\nReference: {reference}\nAnswer: {answer}"),
    ]) | judge | StrOutputParser()
    return RunnablePassthrough.assign(answer=answer) | RunnablePassthrough.assign(verdict=grade)


# ---- the metric --------------------------------------------------------------------------------------------

def normalise(text: str) -> list[str]:
    """SQuAD-style: lower case, no punctuation, no articles, words."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return [word for word in text.split() if word not in ("a", "an", "the")]


def token_f1(answer: str, reference: str) -> float:
    """Harmonic mean of the precision and recall of the answer's words against the reference's."""
    predicted, truth = normalise(answer), normalise(reference)
    common = sum((Counter(predicted) & Counter(truth)).values())
    if not predicted or not truth or not common:
        return float(predicted == truth)
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


_SCORE = re.compile(r"score\s*[:=]?\s*(10|[1-9])(?![0-9])", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![0-9])(10|[1-9])(?![0-9])")


def judge_score(verdict: str) -> int | None:
    """The judge's score: after "Score", else the first number from 1 to 10; None when there is none."""
    found = _SCORE.search(verdict) or _NUMBER.search(verdict)
    return int(found.group(1)) if found else None


def evaluate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-item metrics and their aggregate."""
    items = []
    for row in results:
        items.append({**{k: row[k] for k in ("id", "kind", "question", "reference", "answer", "verdict")},
                      "f1": round(token_f1(row["answer"], row["reference"]), 4),
                      "exact_match": normalise(row["answer"]) == normalise(row["reference"]),
                      "judge_score": judge_score(row["verdict"])})
    scores = [item["judge_score"] for item in items if item["judge_score"] is not None]
    aggregate = {
        "items": len(items),
        "mean_f1": round(sum(item["f1"] for item in items) / len(items), 4) if items else 0.0,
        "exact_match": round(sum(item["exact_match"] for item in items) / len(items), 4) if items else 0.0,
        "judged": len(scores),
        "mean_judge_score": round(sum(scores) / len(scores), 3) if scores else None,
        "by_kind": {kind: round(sum(i["f1"] for i in items if i["kind"] == kind)
                                / sum(1 for i in items if i["kind"] == kind), 4)
                    for kind in dict.fromkeys(item["kind"] for item in items)},
    }
    return {"aggregate": aggregate, "items": items}


# ---- the script --------------------------------------------------------------------------------------------

def graph_file(plan_file: Path) -> Path:
    """Where the traced graph is kept beside a plan file: ``eval.plan.json`` -> ``eval.plan.graph.json``."""
    return plan_file.with_name(plan_file.stem + ".graph.json")


def planned(plan_file: Path, chain: Runnable, inputs: list[dict[str, Any]], models: dict[str, str]) -> dict[str, Any]:
    """``offline()``'s ``plan=`` and ``graph=`` for this batch: read from ``plan_file`` (and the graph beside it) if
    it exists; otherwise traced (stand-in model, no engine), planned for this machine's devices and saved there."""
    import samullm_lc as samullm

    if plan_file.exists():
        print(f"reusing the plan in {plan_file}")
        saved_graph = graph_file(plan_file)
        graph = {"graph": samullm.AppGraph.load(saved_graph)} if saved_graph.exists() else {}
        return {"plan": samullm.Plan.load(plan_file), **graph}
    graph = samullm.trace(chain, inputs, models=models)
    plan = samullm.plan(graph)
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan.save(plan_file)
    graph.save(graph_file(plan_file))
    print(f"planned the batch ({plan.estimated_seconds:.1f} s estimated); plan saved to {plan_file}, its graph to "
          f"{graph_file(plan_file)}")
    return {"plan": plan, "graph": graph}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = parser(__doc__)
    p.set_defaults(n=DATASET_ROWS, report=DEFAULT_REPORT)
    p.add_argument("--plan", type=Path, metavar="FILE",
                   help="reuse the plan saved in FILE; if FILE does not exist, plan the batch and save it there")
    p.add_argument("--write-dataset", action="store_true", help=f"rewrite {DATASET} from generate_dataset()")
    args = p.parse_args(argv)
    if args.write_dataset:
        DATASET.parent.mkdir(parents=True, exist_ok=True)
        DATASET.write_text(dataset_text(generate_dataset()))
        print(f"wrote {DATASET}")
        return None
    models = choose_models(args, TINY_MODELS, GPU_MODELS)
    inputs = make_inputs(args.n, seed=args.seed)
    chain = build()
    if args.trace_only:
        print(trace(chain, inputs, models, name="batch_eval").describe())
        return None
    offline = planned(args.plan, chain, inputs, models) if args.plan else {}
    results, run_report = run(chain, inputs, models, **offline)
    print(run_report.summary())
    print(describe_results(results))
    report = {"app": "batch_eval", "dataset": str(DATASET), "models": models,
              "plan": str(args.plan) if args.plan else None, **evaluate(results),
              "run": json.loads(run_report.model_dump_json())}
    aggregate = report["aggregate"]
    print(f"{aggregate['items']} items: mean token F1 {aggregate['mean_f1']:.3f}, exact match "
          f"{aggregate['exact_match']:.1%}, judge scores parsed for {aggregate['judged']} "
          f"(mean {aggregate['mean_judge_score']})")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"report: {args.report}")
    return report


if __name__ == "__main__":
    main()
