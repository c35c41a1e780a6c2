"""The drop-in against the real thing: pipelines written for ``vllm serve`` give the same results unchanged
inside ``samullm.offline()``.

Both sides serve the same tiny models with seeded random weights (``ensure_seeded_tiny_model``: with vLLM's
dummy weights every prompt would get the same answer, and a mix-up between requests could not show) and the
pool's exact engine settings; the servers run first, then stop (one engine per core), then the same pipeline
objects' builders run inside one ``offline()`` block that serves all three models.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pipelines import MEDIUM, PIPELINES, QWEN, SMALL, make_inputs
from reference_servers import ReferenceServerPool

import samullm_lc as samullm
from samullm_lc.tinymodels.seeded import ensure_seeded_tiny_model

pytestmark = pytest.mark.engine

INPUTS = 24
TOOL_PARSER = "hermes"  # both sides serve tool calls as `vllm serve --enable-auto-tool-choice --tool-call-parser`
MIN_IDENTICAL = 0.99
VOLATILE = {"id", "created", "system_fingerprint"}  # differ between any two server responses too


@pytest.fixture(scope="module")
def weights() -> dict[str, str]:
    return {m: str(ensure_seeded_tiny_model(m)) for m in (SMALL, MEDIUM, QWEN)}


@pytest.fixture(scope="module")
def runs(weights: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every pipeline run against the servers, then inside one offline() block (same URLs), plus one chat and
    one completion call with their callback run trees, both ways."""
    inputs = make_inputs(INPUTS, seed=7)
    reference: dict[str, list] = {}
    flags = ("--enable-auto-tool-choice", "--tool-call-parser", TOOL_PARSER)
    with ReferenceServerPool(log_dir=tmp_path_factory.mktemp("servers"), weights=weights, extra_flags=flags) as servers:
        urls: dict[str, str] = {}
        for name, pipeline in sorted(PIPELINES.items(), key=lambda p: p[1].models):
            urls.update(servers.urls(list(pipeline.models)))
            reference[name] = pipeline.build(urls).batch(inputs)
        urls.update(servers.urls([SMALL]))
        reference_calls = _single_calls(urls[SMALL])
    offline: dict[str, list] = {}
    with samullm.offline(models=weights, devices="2xcpu", progress=False, tool_parser=TOOL_PARSER) as run:
        for name, pipeline in PIPELINES.items():
            offline[name] = pipeline.build(urls).batch(inputs)
        offline_calls = _single_calls(urls[SMALL])
    return {"inputs": inputs, "reference": reference, "offline": offline, "report": run.report(),
            "reference_calls": reference_calls, "offline_calls": offline_calls}


def _single_calls(url: str) -> dict[str, Any]:
    from langchain_core.tracers.base import BaseTracer
    from langchain_openai import ChatOpenAI, OpenAI

    class Recorder(BaseTracer):
        def __init__(self) -> None:
            super().__init__()
            self.runs: list[Any] = []

        def _persist_run(self, run: Any) -> None:
            self.runs.append(run)

    chat, completion = Recorder(), Recorder()
    client = ChatOpenAI(model=SMALL, base_url=url, api_key="EMPTY", temperature=0, max_tokens=12, logprobs=True,
                        top_logprobs=2)
    message = client.invoke("Describe the sea in one line.", config={"callbacks": [chat], "tags": ["probe"]})
    llm = OpenAI(model=SMALL, base_url=url, api_key="EMPTY", temperature=0, max_tokens=12)
    result = llm.generate(["Once upon a time"], callbacks=[completion])
    return {"message": message, "llm_result": result, "chat_tree": _tree(chat.runs), "llm_tree": _tree(completion.runs),
            "tool_call": _raw_tool_call(url)}


def _raw_tool_call(url: str) -> dict[str, Any]:
    """A named tool choice through the OpenAI SDK itself: the raw response, as the server sends it."""
    import openai

    tool = {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
    client = openai.OpenAI(base_url=url, api_key="EMPTY")
    response = client.chat.completions.create(
        model=SMALL, messages=[{"role": "user", "content": "Add 2 and 3."}], tools=[tool], max_tokens=48,
        tool_choice={"type": "function", "function": {"name": "add"}}, temperature=0)
    return response.model_dump()


def _tree(runs: list[Any]) -> list[Any]:
    """A run tree without ids and times: name, type, tags, inputs, outputs (volatile keys dropped), children."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE and k != "run_id"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        if hasattr(value, "model_dump"):
            return strip(value.model_dump())
        return value

    return [(r.name, r.run_type, sorted(r.tags or []), strip(r.inputs), strip(r.outputs), _tree(r.child_runs))
            for r in runs]


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_results_match_the_servers(runs: dict[str, Any], name: str) -> None:
    reference, offline = runs["reference"][name], runs["offline"][name]
    assert len(offline) == len(reference) == len(runs["inputs"])
    same = sum(json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
               for a, b in zip(reference, offline, strict=True))
    assert same / len(reference) >= MIN_IDENTICAL, [
        (i, a, b) for i, (a, b) in enumerate(zip(reference, offline, strict=True)) if a != b][:3]


def test_outputs_depend_on_the_input(runs: dict[str, Any]) -> None:
    """The comparison means something: answers differ from input to input (seeded weights, not dummy ones)."""
    assert len({json.dumps(r, default=str) for r in runs["reference"]["ensemble"]}) > INPUTS // 2


def test_every_call_was_served_by_the_pool(runs: dict[str, Any]) -> None:
    report = runs["report"]
    assert report.requests_failed == 0
    assert report.requests_done == sum(report.call_sites.values()) > 5 * INPUTS
    assert {site.split()[0] for site in report.call_sites} == {SMALL, MEDIUM, QWEN}


def test_chat_result_has_the_servers_shape(runs: dict[str, Any]) -> None:
    ours, theirs = runs["offline_calls"]["message"], runs["reference_calls"]["message"]
    assert type(ours) is type(theirs)
    assert ours.content == theirs.content and ours.content
    assert ours.usage_metadata == theirs.usage_metadata
    assert ours.additional_kwargs == theirs.additional_kwargs
    assert ours.response_metadata.keys() == theirs.response_metadata.keys()
    for key in ours.response_metadata.keys() - VOLATILE:
        assert ours.response_metadata[key] == theirs.response_metadata[key], key
    assert ours.response_metadata["logprobs"]["content"]


def test_completion_result_has_the_servers_shape(runs: dict[str, Any]) -> None:
    ours, theirs = runs["offline_calls"]["llm_result"], runs["reference_calls"]["llm_result"]
    assert ours.generations == theirs.generations
    assert {k: v for k, v in ours.llm_output.items() if k not in VOLATILE} == {
        k: v for k, v in theirs.llm_output.items() if k not in VOLATILE}


def test_tool_call_has_the_servers_shape(runs: dict[str, Any]) -> None:
    ours, theirs = runs["offline_calls"]["tool_call"], runs["reference_calls"]["tool_call"]

    def message(response: dict[str, Any]) -> dict[str, Any]:
        """The answer without the random tool-call ids (the tiny model may not finish its call in 48 tokens:
        then both sides return the same partial text and no call)."""
        answer = dict(response["choices"][0]["message"])
        answer["tool_calls"] = [{k: v for k, v in c.items() if k != "id"} for c in answer["tool_calls"] or []]
        return answer

    assert message(ours) == message(theirs)
    assert ours["choices"][0]["finish_reason"] == theirs["choices"][0]["finish_reason"]
    assert ours["usage"] == theirs["usage"]


def test_callback_run_trees_are_the_same(runs: dict[str, Any]) -> None:
    for tree in ("chat_tree", "llm_tree"):
        assert runs["offline_calls"][tree] == runs["reference_calls"][tree]
        assert runs["offline_calls"][tree]
