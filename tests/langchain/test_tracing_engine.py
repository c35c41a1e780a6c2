"""Planning before the run on the real engine: ``offline()`` traces a sample of the first batch, plans the whole
app, and serves every real call; the answers are those of a block that does not trace."""

from __future__ import annotations

import pytest
from pipelines import PIPELINES, make_inputs

import samullm_lc as samullm

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

URL = "http://127.0.0.1:9/v1"
INPUTS = 12


def test_a_traced_block_plans_the_whole_app_first_and_answers_as_an_untraced_one() -> None:
    pipeline = PIPELINES["ensemble"]
    chain = pipeline.build(dict.fromkeys(pipeline.models, URL))
    inputs = make_inputs(INPUTS, seed=4)
    with samullm.offline(models=list(pipeline.models), progress=False) as traced:
        answers = chain.batch(inputs)
    with samullm.offline(models=list(pipeline.models), trace=False, progress=False) as untraced:
        reference = chain.batch(inputs)
    assert answers == reference  # greedy decoding: the trace changes the plan, never the answers
    report = traced.report()
    assert traced.graph.num_inputs == INPUTS and len(traced.graph.nodes) == 3
    assert report.requests_failed == 0 and report.requests_done == 3 * INPUTS
    planned = {node for stage in report.initial_plan.stages for entry in stage.entries for node in entry.nodes}
    assert planned == {node.name for node in traced.graph.nodes}  # the first plan saw every node, fuser too
    assert untraced.graph is None and untraced.report().requests_done == 3 * INPUTS
