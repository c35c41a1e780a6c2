"""The paper's apps (examples/apps/*.json): they load, use catalogue models, and have the intended shape."""

from pathlib import Path

import pytest

from samullm_lc.costmodel.architecture import catalogue_names, resolve_architecture
from samullm_lc.graph import paper_apps
from samullm_lc.graph.app_graph import AppGraph

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "examples" / "apps"
NODE_COUNTS = {"ensemble": 9, "router": 5, "chain-summary": 9, "mixed": 23}


@pytest.mark.parametrize("name", list(NODE_COUNTS))
def test_committed_app_loads_and_matches_the_builder(name):
    path = APPS / f"{name}.json"
    app = AppGraph.load(path)
    assert app.name == name
    assert len(app.nodes) == NODE_COUNTS[name]
    assert path.read_text() == paper_apps.to_json(paper_apps.PAPER_APPS[name](paper_apps.DEFAULT_N, 0))


@pytest.mark.parametrize("name", list(NODE_COUNTS))
def test_every_model_is_in_the_catalogue_and_every_request_fits_its_context(name):
    app = paper_apps.PAPER_APPS[name](200, 3)
    assert set(app.models()) <= set(catalogue_names())
    for node in app.nodes:
        upstream = sum(app.node(u).max_tokens for u in node.depends_on) if node.include_upstream_outputs else 0
        context = resolve_architecture(node.model).max_model_len
        assert max(node.input_tokens) + upstream + node.max_tokens <= context, node.name


def test_ensemble_members_answer_the_same_prompts_with_256_to_512_tokens():
    app = paper_apps.ensemble_app(300, 0)
    assert all(node.num_requests == 300 and not node.depends_on for node in app.nodes)
    assert {node.max_tokens for node in app.nodes} <= set(range(256, 513))
    vicuna, chatglm = app.node("vicuna-13b-v1.5"), app.node("chatglm3-6b")
    short = [i for i, length in enumerate(vicuna.input_tokens) if length < 1000]
    assert [vicuna.input_tokens[i] for i in short] == [chatglm.input_tokens[i] for i in short]


def test_router_sends_each_prompt_to_exactly_one_model_in_the_stated_mix():
    app = paper_apps.router_app(1000, 0)
    counts = {node.model: node.num_requests for node in app.nodes}
    assert sum(counts.values()) == 1000
    assert counts == {model: round(share * 1000) for model, share in paper_apps.ROUTER_MIX.items()}
    small = paper_apps.router_app(7, 0)
    assert len(small.nodes) == 5 and sum(node.num_requests for node in small.nodes) == 7


def test_chain_summary_is_a_chain_of_chunks_then_an_evaluator():
    app = paper_apps.chain_summary_app(50, 0)
    order = app.topological_order
    assert order == [f"summarise-{k}" for k in range(paper_apps.NUM_CHUNKS)] + ["evaluate"]
    for k in range(1, paper_apps.NUM_CHUNKS):
        assert app.node(f"summarise-{k}").depends_on == [f"summarise-{k - 1}"]
    assert app.node("evaluate").depends_on == [f"summarise-{paper_apps.NUM_CHUNKS - 1}"]
    assert app.node("evaluate").model == "Llama-2-70b-chat-hf"
    assert {app.node(f"summarise-{k}").model for k in range(paper_apps.NUM_CHUNKS)} == {"vicuna-13b-v1.5"}
    assert max(app.node("summarise-0").input_tokens) == paper_apps.CHUNK_TOKENS + paper_apps.SUMMARY_TEMPLATE_TOKENS


def test_mixed_is_the_three_apps_with_prefixed_names():
    n, seed = 40, 5
    mixed = paper_apps.mixed_app(n, seed)
    for part in (paper_apps.ensemble_app(n, seed), paper_apps.router_app(n, seed), paper_apps.chain_summary_app(n, seed)):
        for node in part.nodes:
            twin = mixed.node(f"{part.name}/{node.name}")
            assert twin.input_tokens == node.input_tokens and twin.model == node.model
            assert twin.depends_on == [f"{part.name}/{u}" for u in node.depends_on]


def test_builders_are_deterministic_and_the_seed_matters():
    assert paper_apps.ensemble_app(100, 1) == paper_apps.ensemble_app(100, 1)
    assert paper_apps.ensemble_app(100, 1) != paper_apps.ensemble_app(100, 2)


def test_write_apps_names_other_sizes_by_n(tmp_path):
    paths = paper_apps.write_apps(tmp_path, n=12)
    assert sorted(p.name for p in paths) == sorted(f"{name}-n12.json" for name in paper_apps.PAPER_APPS)
    assert all(AppGraph.load(p).nodes for p in paths)
