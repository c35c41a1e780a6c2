"""Tracing: the app graph of an unchanged LangChain pipeline, from its own LLM calls.

``samullm.trace(chain, inputs)`` runs the pipeline on ``inputs`` inside an ``offline()`` block whose calls the
stand-in model answers (``stand_in.py``: no engine, marked synthetic text of sampled lengths). Each call is
recorded (``TracedCall``) with its site (the client's model and the steps of the runs above it, ``sites.py``),
the input it serves (the tracer tags each input's root run), its prompt and output tokens and its times.
``graph_of_calls`` turns the records into an ``AppGraph``: a node per site; per input, the node's requests in
call order; a request reads the earlier calls of its input whose output its prompt contains (found by content,
so it holds whatever code runs between the calls). A request's own input tokens are its prompt less what it
reads (their text as it is counted inside it), so the planner re-grows the prompt from sampled outputs.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from samullm_lc.errors import ConfigError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.langchain import sites
from samullm_lc.langchain.stand_in import MARKER_PATTERN, StandIn
from samullm_lc.runtime.requests import GenerationResult

DEFAULT_TRACE_SAMPLE = 8
"""Inputs ``offline()`` traces before a batch (fewer if the batch is smaller)."""


@dataclass(slots=True)
class TracedCall:
    """One LLM call of a traced run."""

    order: int  # submission order over the whole trace
    input: int | UUID | None
    site: str
    client_model: str
    model: str
    marker: str
    prompt_text: str
    prompt_tokens: int
    output_tokens: int
    text_tokens: int  # its answer's tokens inside a later prompt
    max_tokens: int
    started: float
    ended: float


@dataclass(slots=True)
class TraceRecorder:
    """Collects the calls of a traced run (any thread)."""

    calls: list[TracedCall] = field(default_factory=list)
    exact_tokens: set[str] = field(default_factory=set)  # models counted with their own tokenizer
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, stand_in: StandIn, route: str, client_model: str, model: str, body: dict[str, Any]
               ) -> GenerationResult:
        """Answer one call from this context with the stand-in (``model``: the weights ``client_model`` maps to)
        and record it under its site."""
        started = time.perf_counter()
        answer = stand_in.answer(route, body, model)
        call = sites.current_call()
        with self._lock:
            if stand_in.counter(model).exact:
                self.exact_tokens.add(model)
            self.calls.append(TracedCall(
                order=len(self.calls), input=call.input if call is not None else None,
                site=sites.site_key(client_model, call.steps if call is not None else ""), client_model=client_model,
                model=model, marker=answer.marker, prompt_text=answer.prompt_text, prompt_tokens=answer.prompt_tokens,
                output_tokens=answer.output_tokens, text_tokens=answer.text_tokens, max_tokens=answer.max_tokens,
                started=started,
                ended=time.perf_counter()))
        return GenerationResult(model=model, completions=[], prompt_tokens=answer.prompt_tokens,
                                response=answer.response)


def graph_of_calls(calls: Sequence[TracedCall], *, name: str, num_inputs: int | None = None,
                   description: str = "") -> AppGraph:
    """The app graph of traced calls: a node per site, named by the client's model where it has one site; its
    requests round by round (every input's first call there, then every second call, ...: the order in which a
    batch makes them, which is how the pool numbers the real calls); reads found by the markers a prompt
    contains."""
    if not calls:
        raise ConfigError("the traced run made no LLM call: check that the pipeline's LLM clients are LangChain "
                          "chat models or LLMs calling an OpenAI-compatible server, and that the inputs reach them")
    inputs = _input_indices(calls)
    count = num_inputs if num_inputs is not None else max(inputs.values()) + 1
    # nodes in the order the first inputs reach them (input by input, so threads racing do not reorder them)
    sites_in_order = list(dict.fromkeys(c.site for c in sorted(calls, key=lambda c: (inputs[c.input], c.order))))
    names = _node_names(sites_in_order, {c.site: c.client_model for c in calls})
    rank: dict[int, int] = {}  # a call's position among its input's calls at its site (a chain's or loop's round)
    seen: dict[tuple[str, int], int] = defaultdict(int)
    for call in sorted(calls, key=lambda c: c.order):
        key = (call.site, inputs[call.input])
        rank[call.order], seen[key] = seen[key], seen[key] + 1
    by_site: dict[str, list[TracedCall]] = defaultdict(list)
    for call in sorted(calls, key=lambda c: (rank[c.order], inputs[c.input], c.order)):  # round by round
        by_site[call.site].append(call)
    position = {id(call): (site, i) for site, group in by_site.items() for i, call in enumerate(group)}
    by_marker = {call.marker: call for call in calls}
    nodes = []
    for site in sites_in_order:
        group = by_site[site]
        reads: dict[str, list[list[int]]] = {}
        input_tokens = []
        for i, call in enumerate(group):
            read = [by_marker[m] for m in dict.fromkeys(_markers(call.prompt_text))
                    if m in by_marker and by_marker[m].order < call.order
                    and inputs[by_marker[m].input] == inputs[call.input]]
            for upstream in read:
                upstream_site, index = position[id(upstream)]
                reads.setdefault(names[upstream_site], [[] for _ in group])[i].append(index)
            input_tokens.append(max(1, call.prompt_tokens - sum(u.text_tokens for u in read)))
        own = names[site]
        nodes.append(LLMNode(
            name=own, model=group[0].model, site=site, input_tokens=input_tokens,
            max_tokens=max(c.max_tokens for c in group), depends_on=[u for u in reads if u != own],
            inputs=[inputs[c.input] for c in group], upstream_requests=reads,
        ))
    return AppGraph(name=name, nodes=nodes, num_inputs=count, description=description)


def _markers(text: str) -> list[str]:
    return [match.group(0) for match in MARKER_PATTERN.finditer(text)]


def _input_indices(calls: Sequence[TracedCall]) -> dict[Any, int]:
    """Each call's input index: the traced input's own, else the root runs numbered in order of first call."""
    indices: dict[Any, int] = {}
    for call in sorted(calls, key=lambda c: c.order):
        if call.input not in indices:
            indices[call.input] = call.input if isinstance(call.input, int) else len(indices)
    return indices


def _node_names(site_keys: list[str], client_of: Mapping[str, str]) -> dict[str, str]:
    """A node's name: its client's model name where that model is called from one site, else the site key."""
    per_client: dict[str, int] = defaultdict(int)
    for site in site_keys:
        per_client[client_of[site]] += 1
    return {site: client_of[site] if per_client[client_of[site]] == 1 else site for site in site_keys}


def trace(chain: Any, inputs: Sequence[Any], *, models: Mapping[str, str] | Sequence[str] | None = None,
          config: Mapping[str, Any] | None = None, seed: int = 0, name: str | None = None) -> AppGraph:
    """The app graph of ``chain`` run on ``inputs`` with the stand-in model: no engine starts, no weights load.

    ``models`` maps the clients' model names to weights as ``offline()`` takes it (the graph's nodes carry the
    weights; token counts use their tokenizers where they are on this machine). The pipeline's own code runs
    once per input: code with side effects (writes, API calls) does them for the traced inputs too.
    """
    from samullm_lc.langchain.session import OfflineSession

    _check_inputs(inputs)
    session = OfflineSession(models, seed=seed)
    session.open(process_wide=True, engines=False)
    tokens = session.activate()
    recorder = session.begin_tracing()
    try:
        results = chain.batch(list(inputs), traced_configs(config, len(inputs)), return_exceptions=True)
    finally:
        session.end_tracing()
        session.deactivate(tokens)
        session.close()
    _check_results(results)
    graph_name = name or _chain_name(chain)
    return graph_of_calls(recorder.calls, name=graph_name, num_inputs=len(inputs),
                          description=traced_description(len(inputs), recorder))


def traced_configs(config: Mapping[str, Any] | None, count: int) -> list[dict[str, Any]]:
    """One config per input, each naming its input in the runs' metadata (inherited by every run inside)."""
    return [_traced_config(config, i) for i in range(count)]


def _traced_config(config: Mapping[str, Any] | None, index: int) -> dict[str, Any]:
    base = dict(config or {})
    return {**base, "metadata": {**(base.get("metadata") or {}), sites.INPUT_METADATA_KEY: index}}


def traced_description(count: int, recorder: TraceRecorder) -> str:
    models = sorted({c.model for c in recorder.calls})
    estimated = [m for m in models if m not in recorder.exact_tokens]
    note = f"; tokens of {estimated} counted as characters / 4 (no tokenizer here)" if estimated else ""
    return f"traced from {count} inputs with the stand-in model ({len(recorder.calls)} calls){note}"


def _check_inputs(inputs: Any) -> None:
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
        raise ConfigError(f"trace(chain, inputs) takes a list of the chain's inputs, got {type(inputs).__name__}")
    if not inputs:
        raise ConfigError("trace(chain, inputs) needs at least one input")


def _chain_name(chain: Any) -> str:
    get_name = getattr(chain, "get_name", None)
    return get_name() if callable(get_name) else type(chain).__name__


def sample_indices(count: int, size: int) -> list[int]:
    """``size`` input positions spread evenly over ``count`` inputs (all of them if there are fewer)."""
    if count <= size:
        return list(range(count))
    return sorted({int(i * count / size) for i in range(size)})


def trace_sample(session: Any, chain: Any, inputs: Sequence[Any], config: Any, size: int) -> tuple[AppGraph, float]:
    """Trace ``chain`` on an even sample of ``inputs`` in ``session`` (its calls answered by the stand-in) and scale
    the graph to the whole batch; also the seconds it took."""
    started = time.perf_counter()
    picks = sample_indices(len(inputs), size)
    configs = config if isinstance(config, list) else [config] * len(inputs)
    recorder = session.begin_tracing()
    try:
        results = chain.batch([inputs[i] for i in picks],
                              [_traced_config(configs[i], k) for k, i in enumerate(picks)], return_exceptions=True)
    finally:
        session.end_tracing()
    _check_results(results)
    sample = graph_of_calls(recorder.calls, name=_chain_name(chain), num_inputs=len(picks),
                            description=traced_description(len(picks), recorder))
    graph = sample.scaled(len(inputs))
    return graph.model_copy(update={"description": sample.description + f", scaled to {len(inputs)} inputs"}), \
        time.perf_counter() - started


def _check_results(results: list[Any]) -> None:
    failures = [r for r in results if isinstance(r, Exception)]
    if failures and len(failures) == len(results):
        raise ConfigError(f"every traced input failed, so the pipeline's graph is unknown; the first failure: "
                          f"{type(failures[0]).__name__}: {failures[0]}. Fix the pipeline, or pass "
                          "offline(trace=False) to plan from the calls as they arrive")
