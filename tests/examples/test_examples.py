"""The examples' contract (no engine): each module's surface, client names unique across examples, one GPU model per
tiny model, deterministic inputs, the shipped evaluation dataset and the evaluation's metric."""

from __future__ import annotations

import importlib
import json

import pytest

EXAMPLES = ("ensemble_fuser", "router", "chain_summary", "map_reduce", "langgraph_loop", "mixed", "batch_eval")
SINGLE = tuple(name for name in EXAMPLES if name != "mixed")  # the mixed app reuses the others' clients
TINY = {"tiny-llama-s", "tiny-llama-m", "tiny-qwen2-m"}


def example(name: str):
    return importlib.import_module(name)


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_has_the_common_surface(name):
    ex = example(name)
    assert ex.__doc__ and f"examples/{name}.py" in ex.__doc__  # says how to run it
    assert set(ex.TINY_MODELS) == set(ex.GPU_MODELS)
    assert set(ex.TINY_MODELS.values()) <= TINY
    assert all(callable(getattr(ex, f)) for f in ("build", "make_inputs", "main"))
    assert ex.make_inputs(5) == ex.make_inputs(5) and len(ex.make_inputs(5)) == 5
    assert ex.make_inputs(5, seed=1) != ex.make_inputs(5)


def test_client_names_are_unique_across_examples_and_mixed_is_their_union():
    seen: dict[str, str] = {}
    for name in SINGLE:
        for client in example(name).TINY_MODELS:
            assert client not in seen, f"{client} is used by {seen.get(client)} and {name}"
            seen[client] = name
    mixed = example("mixed")
    assert mixed.TINY_MODELS == {c: m for n in SINGLE if n != "batch_eval" for c, m in example(n).TINY_MODELS.items()}


def test_client_names_sharing_a_tiny_model_share_a_gpu_model():
    gpu_of: dict[str, set[str]] = {}
    for name in EXAMPLES:
        ex = example(name)
        for client, tiny in ex.TINY_MODELS.items():
            gpu_of.setdefault(tiny, set()).add(ex.GPU_MODELS[client])
    assert all(len(gpus) == 1 for gpus in gpu_of.values()), gpu_of
    from common import TINY_TO_GPU

    assert {tiny: gpus.pop() for tiny, gpus in gpu_of.items()} == {t: TINY_TO_GPU[t] for t in gpu_of}


def test_gpu_models_are_in_the_catalogue():
    from samullm_lc import resolve_architecture

    for name in EXAMPLES:
        for model in example(name).GPU_MODELS.values():
            resolve_architecture(model)  # UnknownModelError otherwise


def test_the_shipped_dataset_is_the_generators_output():
    ex = example("batch_eval")
    assert ex.DATASET.read_text() == ex.dataset_text(ex.generate_dataset())
    rows = ex.load_dataset()
    assert len(rows) == ex.DATASET_ROWS == 64
    assert len({row["id"] for row in rows}) == 64 and all(row["question"] and row["reference"] for row in rows)


def test_token_f1_and_exact_match():
    ex = example("batch_eval")
    assert ex.token_f1("Paris", "paris") == 1.0
    assert ex.token_f1("The answer is Paris.", "Paris") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert ex.token_f1("", "Paris") == 0.0 and ex.token_f1("zq xv", "Paris") == 0.0


@pytest.mark.parametrize("text, score", [
    ("Score: 7", 7), ("score=10 because", 10), ("I would give it 3 out of 10", 3), ("Score: 11, no 4", 4),
    ("ĠxqÙ ørk 42 ~~ ]]", None), ("", None), ("[samullm stand-in 000012] ~ ~", None),
])
def test_judge_score_tolerates_gibberish(text, score):
    assert example("batch_eval").judge_score(text) == score


def test_evaluate_aggregates_gibberish_without_failing():
    ex = example("batch_eval")
    rows = [{**row, "answer": "ĠxqÙ ørk", "verdict": "zz 12 ~"} for row in ex.make_inputs(8)]
    rows[0] = {**rows[0], "answer": rows[0]["reference"], "verdict": "Score: 9"}
    report = ex.evaluate(rows)
    assert report["aggregate"]["items"] == 8 and report["aggregate"]["judged"] == 1
    assert report["aggregate"]["mean_f1"] == pytest.approx(1 / 8) and report["aggregate"]["mean_judge_score"] == 9
    json.dumps(report)


def test_the_loop_approves_only_on_the_word_ok():
    loop = example("langgraph_loop")
    assert loop.approved("OK.") and loop.approved("looks fine, ok")
    assert not loop.approved("token broken hook") and not loop.approved("[samullm stand-in 000001] ~ ~")


@pytest.mark.parametrize("name", EXAMPLES)
def test_trace_only_prints_the_graph(name, capsys):
    assert example(name).main(["--trace-only", "--n", "4"]) is None
    out = capsys.readouterr().out
    assert "4 inputs" in out
    for client in example(name).TINY_MODELS:
        if name != "router":  # 4 inputs need not take every route
            assert client in out
