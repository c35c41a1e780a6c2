"""The request book: one record per request, queues, app-node progress and the nodes beyond the app graph."""

from concurrent.futures import Future

import numpy as np
import pytest

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.errors import RequestError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.runtime.request_book import EXTRA_SUFFIX, OBSERVED_LENGTHS_KEPT, ObservedLengths, RequestBook
from samullm_lc.runtime.requests import Completion, GenerationResult, Request, SamplingSpec

A, B = "model-a", "model-b"


def _app() -> AppGraph:
    return AppGraph(name="two", nodes=[
        LLMNode(name="first", model=A, input_tokens=[10, 20], max_tokens=8),
        LLMNode(name="second", model=B, input_tokens=[30, 40], max_tokens=8, depends_on=["first"]),
    ])


def _request(i: int, model: str = A, node: str = "", max_tokens: int = 16) -> Request:
    return Request(id=i, model=model, kind="tokens", prompt=[1] * (i + 1), sampling=SamplingSpec(max_tokens=max_tokens),
                   node=node)


def _result(model: str = A, tokens: int = 5, reason: str = "stop") -> GenerationResult:
    return GenerationResult(model=model, completions=[Completion(text="x", num_tokens=tokens, finish_reason=reason)],
                            prompt_tokens=3)


def _take(book: RequestBook, i: int, model: str = A, node: str = ""):
    record = book.register(_request(i, model, node), Future())
    book.enqueue(record)
    return record


def test_requests_fill_their_models_nodes_in_order_then_go_beyond_the_graph():
    book = RequestBook(_app(), [A, B])
    records = [_take(book, i) for i in range(3)]
    assert [(r.request.node, r.request.index, r.beyond_app) for r in records] == [
        ("first", 0, False), ("first", 1, False), (A + EXTRA_SUFFIX, 0, True)]
    named = _take(book, 9, B, node="second")
    assert (named.request.node, named.request.index) == ("second", 0)
    assert book.has_node("first") and not book.has_node(A + EXTRA_SUFFIX)
    assert book.outstanding == 4 and book.outstanding_of(A) == 3 and book.queued(A) == 3


def test_a_batch_moves_requests_onto_an_engine_and_requeue_puts_them_back_in_front_in_order():
    book = RequestBook(None, [A])
    records = [_take(book, i) for i in range(5)]
    batch = book.next_batch(A, engine_id=7, size=3)
    assert [r.id for r in batch] == [0, 1, 2] and all(r.attempts == 1 for r in batch)
    assert [r.engine_id for r in records] == [7, 7, 7, None, None] and book.queued(A) == 2
    book.requeue(book.on_engine([2, 0, 99]))  # 99 was never taken in
    assert [r.engine_id for r in records[:3]] == [None, 7, None]
    assert [r.id for r in book.next_batch(A, engine_id=8, size=10)] == [2, 0, 3, 4]
    assert records[0].request.attempts == 2


def test_completing_a_request_resolves_it_once_and_keeps_everything_in_step():
    book = RequestBook(_app(), [A, B])
    first, second = _take(book, 0), _take(book, 1)
    book.next_batch(A, engine_id=0, size=2)
    assert book.complete(first, _result(tokens=4), observe=True) is False
    assert book.get(0) is None and first.resolved and first.future.result().completions[0].num_tokens == 4
    assert book.complete(first, _result(tokens=9), observe=True) is False  # a second result is ignored
    assert book.observed_count(A) == 1
    assert book.complete(second, _result(tokens=0), observe=False) is True  # the model's last request
    assert book.observed_count(A) == 1 and book.outstanding == 0
    finished, outputs = book.node_progress({"first", "second"})
    assert finished == {"first": [0, 1]} and outputs == {"first": {0: 4, 1: 1}}  # at least one token each
    assert book.node_progress({"second"}) == ({}, {})


def test_a_failed_request_fails_its_future_alone():
    book = RequestBook(None, [A])
    bad, good = _take(book, 0), _take(book, 1)
    assert book.fail(bad, "no luck") is False
    with pytest.raises(RequestError, match="no luck"):
        bad.future.result(0)
    assert not good.future.done() and book.outstanding == 1
    assert book.fail(good, "also") is True and book.outstanding == 0


def test_requests_beyond_the_graph_are_planned_while_unfinished_then_forgotten():
    book = RequestBook(None, [A])
    assert book.planned_app() is None
    records = [book.register(_request(i, max_tokens=8 * (i + 1)), Future()) for i in range(3)]
    app = book.planned_app()
    (node,) = app.nodes
    assert (app.name, node.name, node.input_tokens, node.max_tokens) == ("pool", A + EXTRA_SUFFIX, [1, 2, 3], 24)
    for record in records:
        book.complete(record, _result(), observe=True)
    assert book.planned_app() is None  # nothing is kept per finished request beyond the graph


def test_giving_a_model_up_hands_back_its_queue_and_leaves_its_nodes_and_their_readers_out_of_the_plan():
    book = RequestBook(_app(), [A, B])
    queued = [_take(book, i) for i in range(2)]
    on_engine = book.next_batch(A, engine_id=0, size=1)
    returned = book.give_up(A, "model-a is gone")
    assert [r.request.id for r in returned] == [1] and book.queued(A) == 0 and on_engine[0].id == 0
    assert book.given_up(A) == "model-a is gone" and book.given_up(B) is None and book.given_up_models == {A}
    assert book.planned_app() is None  # "second" reads "first": both are left out
    assert not queued[1].resolved  # the caller fails them


def test_take_all_empties_the_queues_and_returns_every_outstanding_record():
    book = RequestBook(None, [A, B])
    records = [_take(book, 0), _take(book, 1, B)]
    book.next_batch(A, engine_id=3, size=1)
    assert book.take_all() == records and book.queued_models() == []
    for record in records:
        book.abandon(record, "stopped")
    assert book.outstanding == 0 and all("stopped" in str(r.future.exception()) for r in records)


def test_queued_models_follow_the_order_the_book_first_saw_them_and_late_models_get_a_queue():
    book = RequestBook(None, [A, B])
    _take(book, 0, B)
    _take(book, 1, "late-model")
    _take(book, 2, A)
    assert book.queued_models() == [A, B, "late-model"]


def test_refined_lengths_blend_the_models_observations_into_its_base_distribution():
    book = RequestBook(None, [A, B])
    for i in range(50):
        book.complete(_take(book, i), _result(tokens=7), observe=True)
    base = OutputLengthDistribution.sharegpt()
    lengths = book.refined_lengths([A, B], lambda model: base)
    assert list(lengths) == [A] and lengths[A].mean() < base.mean()


def test_the_sample_of_observed_lengths_stays_bounded_and_uniform():
    observed, rng = ObservedLengths(), np.random.default_rng(0)
    for i in range(3 * OBSERVED_LENGTHS_KEPT):
        observed.add(i, cut=i % 2 == 0, rng=rng)
    assert observed.seen == 3 * OBSERVED_LENGTHS_KEPT
    assert len(observed.tokens) == len(observed.cut) == OBSERVED_LENGTHS_KEPT
    assert abs(np.mean(observed.tokens) / (1.5 * OBSERVED_LENGTHS_KEPT) - 1) < 0.05  # about the mean of all
    assert all(c == (t % 2 == 0) for t, c in zip(observed.tokens, observed.cut, strict=True))
