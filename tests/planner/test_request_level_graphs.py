"""The planner on request-level graphs: routing, map-reduce fan-in, chained calls, loops, scaled graphs, scale models."""

from __future__ import annotations

import numpy as np
import pytest

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.planner import Cluster, ExecutionPlan, RunState, Stage, StageEntry, evaluate_plan, plan_app, replan
from samullm_lc.planner.context import PlanningSettings, build_app_options, build_context
from samullm_lc.planner.node_parts import node_parts
from samullm_lc.planner.scale_model import ScaleModelRule, choose_scale, subsample
from tests.planner.conftest import OTHER_SMALL, SMALL, make_app

ONE_GPU = Cluster.parse("1xA100-80GB")
TWO_GPUS = Cluster.parse("2xA100-80GB")
FIXED = OutputLengthDistribution.fixed


def _node(name: str, model: str, prompts: list[int], inputs: list[int], reads: dict[str, list[list[int]]] | None = None,
          *, output: int | None = 60) -> LLMNode:
    return LLMNode(name=name, model=model, input_tokens=prompts, max_tokens=200, inputs=inputs,
                   depends_on=[u for u in (reads or {}) if u != name], upstream_requests=reads,
                   output_lengths=None if output is None else FIXED(output))


def router_app(inputs: int, routed: int) -> AppGraph:
    """A classifier per input; the first ``routed`` inputs go to the expert, the rest to the generalist."""
    return AppGraph(name="router", num_inputs=inputs, nodes=[
        _node("classify", SMALL, [100] * inputs, list(range(inputs))),
        _node("expert", OTHER_SMALL, [300] * routed, list(range(routed)), {"classify": [[i] for i in range(routed)]}),
        *([_node("general", SMALL, [300] * (inputs - routed), list(range(routed, inputs)),
                 {"classify": [[i] for i in range(routed, inputs)]})] if routed < inputs else []),
    ])


def map_reduce_app(inputs: int, k: int, *, output: int | None = None) -> AppGraph:
    """``k`` map calls per input (sampled output lengths by default), one reduce per input reading its ``k``."""
    return AppGraph(name="map-reduce", num_inputs=inputs, nodes=[
        _node("map", SMALL, [150] * (inputs * k), [i for i in range(inputs) for _ in range(k)], output=output),
        _node("reduce", OTHER_SMALL, [50] * inputs, list(range(inputs)),
              {"map": [list(range(i * k, (i + 1) * k)) for i in range(inputs)]}, output=output),
    ])


def summary_app(calls: list[int], *, chained: bool = True, output: int = 100, judge: bool = True) -> AppGraph:
    """A running summary: input i makes ``calls[i]`` calls, each reading the one before (``chained``); a judge on
    another model reads the last summary of each input (``judge``)."""
    prompts, inputs, reads, last = [], [], [], []
    for i, count in enumerate(calls):
        for j in range(count):
            reads.append([len(prompts) - 1] if j and chained else [])
            prompts.append(100)
            inputs.append(i)
        last.append(len(prompts) - 1)
    return AppGraph(name="summary", num_inputs=len(calls), nodes=[
        _node("summary", SMALL, prompts, inputs, {"summary": reads} if chained else None, output=output),
        *([_node("judge", OTHER_SMALL, [50] * len(calls), list(range(len(calls))), {"summary": [[j] for j in last]})]
          if judge else []),
    ])


def loop_app(rounds: list[int]) -> AppGraph:
    """A LangGraph loop over two call sites: round r's draft reads the previous draft and critique, its critique
    reads the draft."""
    writer_inputs, writer_reads_self, writer_reads_critic, critic_reads, critic_inputs = [], [], [], [], []
    for i, count in enumerate(rounds):
        for r in range(count):
            here = len(writer_inputs)
            writer_reads_self.append([here - 1] if r else [])
            writer_reads_critic.append([here - 1] if r else [])
            writer_inputs.append(i)
            critic_reads.append([here])
            critic_inputs.append(i)
    n = len(writer_inputs)
    return AppGraph(name="loop", num_inputs=len(rounds), nodes=[
        LLMNode(name="writer", model=SMALL, input_tokens=[120] * n, max_tokens=200, inputs=writer_inputs,
                depends_on=["critic"], upstream_requests={"writer": writer_reads_self, "critic": writer_reads_critic},
                output_lengths=FIXED(80)),
        LLMNode(name="critic", model=OTHER_SMALL, input_tokens=[60] * n, max_tokens=200, inputs=critic_inputs,
                depends_on=["writer"], upstream_requests={"writer": critic_reads}, output_lengths=FIXED(40)),
    ])


def _context(app: AppGraph, cluster: Cluster = TWO_GPUS, **kwargs):
    return build_context(app, cluster, build_app_options(app, cluster), PlanningSettings(), **kwargs)


def _compute_seconds(plan) -> float:
    """End-to-end seconds less the first stage's longest load (one engine, one stage in these tests)."""
    return plan.estimated_seconds - max(e.load_seconds for e in plan.stages[0].entries)


# ---- workload: prompts, routing, levels ----------------------------------------------------------------------
def test_a_reduce_prompt_holds_the_outputs_of_its_own_k_map_calls():
    k = 4
    work = _context(map_reduce_app(24, k)).workload
    mapped, reduced = work.node("map"), work.node("reduce")
    assert np.unique(mapped.output).size > 1  # sampled lengths: a wrong pairing would show
    expected = 50 + mapped.output.reshape(24, k).sum(axis=1)
    assert np.array_equal(reduced.prompt, expected)


def test_half_the_inputs_routed_to_a_node_is_half_its_work():
    half, whole = _context(router_app(40, 20)), _context(router_app(40, 40))
    expert = half.workload.index["expert"]
    assert half.app.routing_fraction("expert") == 0.5
    assert half.total_tokens[expert] == pytest.approx(0.5 * whole.total_tokens[whole.workload.index["expert"]])
    assert half.workload.node("expert").num_requests == 20


def test_a_chained_node_is_split_by_call_depth_and_each_level_reads_the_one_before():
    app = summary_app([3, 1, 2])
    split = node_parts(app)
    assert [p.name for p in split.parts] == ["summary@0", "summary@1", "summary@2", "judge"]
    level1 = split.parts[1]
    assert level1.requests.tolist() == [1, 5] and level1.upstream == (0,)
    assert level1.reads[0][1].tolist() == [0, 2]  # summary@0 holds calls 0, 3 and 4: calls 1 and 5 read 0 and 4
    judge_sources = {part for part, _ in split.parts[3].reads}
    assert judge_sources == {0, 1, 2}  # the last calls have depths 2, 0 and 1


def test_a_loop_over_two_nodes_alternates_levels():
    split = node_parts(loop_app([2, 1]))
    assert [p.name for p in split.parts] == ["writer@0", "critic@1", "writer@2", "critic@3"]
    assert set(split.parts[2].upstream) == {0, 1}  # the second draft reads the first draft and its critique


def test_a_chained_prompt_grows_by_the_outputs_it_reads_and_known_outputs_are_mapped():
    app = summary_app([3], output=100)
    known = _context(app, known_outputs={"summary": {0: 1000}}).workload
    assert known.node("summary@1").prompt.tolist() == [1100]
    assert known.node("summary@2").prompt.tolist() == [200]


# ---- estimates -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [2, 5])
def test_a_chain_of_d_calls_takes_at_least_d_single_call_latencies(depth):
    one = plan_app(summary_app([1], judge=False), ONE_GPU)
    chain = plan_app(summary_app([depth], judge=False), ONE_GPU)
    parallel = plan_app(summary_app([depth], chained=False, judge=False), ONE_GPU)
    assert _compute_seconds(chain) >= depth * _compute_seconds(one) * (1 - 1e-9)
    assert parallel.estimated_seconds < chain.estimated_seconds  # the same calls, unchained, batch together


def test_an_old_graph_and_its_explicit_request_level_twin_plan_the_same():
    old = make_app("chain", [("first", SMALL, []), ("second", OTHER_SMALL, ["first"])], requests=40)
    n = old.nodes[0].num_requests
    twin = AppGraph(name="chain", num_inputs=n, nodes=[
        old.nodes[0].model_copy(update={"inputs": list(range(n))}),
        old.nodes[1].model_copy(update={"inputs": list(range(n)), "upstream_requests": {"first": [[i] for i in range(n)]}}),
    ])
    a, b = plan_app(old, TWO_GPUS), plan_app(twin, TWO_GPUS)
    assert a.estimated_seconds == b.estimated_seconds
    assert [s.model_dump() for s in a.stages] == [s.model_dump() for s in b.stages]


@pytest.mark.parametrize("build", [lambda: router_app(60, 30), lambda: map_reduce_app(30, 3),
                                   lambda: summary_app([1, 4, 2, 6, 3] * 6), lambda: loop_app([1, 3, 2] * 10)],
                         ids=["router", "map-reduce", "summary", "loop"])
def test_plan_evaluate_and_replan_run_on_request_level_graphs(build):
    app = build()
    plan = plan_app(app, TWO_GPUS)
    names = {n.name for n in app.nodes}
    listed = {n for s in plan.stages for e in s.entries for n in e.nodes}
    finished = [n for s in plan.stages for e in s.entries for n in e.finished_nodes]
    assert listed <= names and sorted(finished) == sorted(names)  # app nodes only, each finished once
    assert evaluate_plan(app, TWO_GPUS, plan) == pytest.approx(plan.estimated_seconds, rel=1e-9)
    first = app.topological_order[0]
    done = list(range(app.node(first).num_requests // 2))
    rest = replan(app, TWO_GPUS, RunState(finished={first: done}, output_tokens={first: {i: 30 for i in done}}))
    assert 0 < rest.estimated_seconds < plan.estimated_seconds


def test_a_replayed_stage_whose_nodes_cannot_run_is_skipped():
    app = make_app("chain", [("first", SMALL, []), ("second", OTHER_SMALL, ["first"])], requests=16)
    plan = plan_app(app, TWO_GPUS)
    stuck = Stage(start_seconds=0.0, end_seconds=1.0,
                  entries=[StageEntry(nodes=["second"], plan=ExecutionPlan(model=OTHER_SMALL, gpus=(1,)))])
    assert evaluate_plan(app, TWO_GPUS, plan.model_copy(update={"stages": [stuck, *plan.stages]})) == \
        pytest.approx(plan.estimated_seconds, rel=1e-9)


def test_replan_of_a_chain_with_its_first_calls_done_plans_only_the_rest():
    app = summary_app([3] * 20)
    firsts = [i * 3 for i in range(20)]
    full = plan_app(app, TWO_GPUS)
    rest = replan(app, TWO_GPUS, RunState(finished={"summary": firsts}))
    assert rest.estimated_seconds < full.estimated_seconds
    done = {n: c for s in rest.stages for e in s.entries for n, c in e.requests_done.items()}
    assert done["summary"] == 60  # the app node's count, its levels added up


def test_scaled_graphs_plan_evaluate_and_replan():
    app = summary_app([1, 4, 2]).scaled(90, seed=1)
    assert app.num_inputs == 90 and sum(app.calls_per_input("summary")) == 7 * 30
    plan = plan_app(app, TWO_GPUS)
    assert evaluate_plan(app, TWO_GPUS, plan) == pytest.approx(plan.estimated_seconds, rel=1e-9)
    assert replan(app, TWO_GPUS, RunState(finished={"summary": [0, 1]})).estimated_seconds > 0
    routed = router_app(8, 2).scaled(400)
    assert routed.routing_fraction("expert") == pytest.approx(0.25)
    assert plan_app(routed, TWO_GPUS).estimated_seconds > 0


# ---- scale models --------------------------------------------------------------------------------------------
def test_a_subsample_keeps_whole_inputs_and_their_reads():
    app = map_reduce_app(64, 3)
    sample = subsample(app, 4, seed=2)
    small = sample.app
    assert small.num_inputs == 16 and small.node("map").num_requests == 48
    assert (small.calls_per_input("map") == 3).all()
    kept_inputs = np.asarray(app.node("map").inputs)[sample.requests["map"]].reshape(16, 3)
    assert (kept_inputs == kept_inputs[:, :1]).all()  # whole inputs: all three map calls of each
    assert np.array_equal(kept_inputs[:, 0], sample.requests["reduce"])  # and the reduce of each (reduce i: input i)
    reduce_reads = small.node("reduce").upstream_requests["map"]
    assert reduce_reads[5] == [15, 16, 17]


def test_small_apps_are_never_planned_on_a_scale_model():
    app = map_reduce_app(40, 3)
    options = build_app_options(app, TWO_GPUS)
    assert choose_scale(app, options, ScaleModelRule()) == 1
    assert choose_scale(app, options, None) == 1
    assert choose_scale(app, options, ScaleModelRule(above_requests=10, requests=40)) == 4


def test_a_scale_model_estimate_stays_close_to_the_full_replay():
    app = summary_app([1, 3, 2, 5, 4, 2, 3, 1]).scaled(1600, seed=3)  # 4,200 summary calls, 1,600 judge calls
    rule = ScaleModelRule(above_requests=1000, requests=1000)
    exact = plan_app(app, TWO_GPUS, scale_model=None)
    scaled = plan_app(app, TWO_GPUS, scale_model=rule)
    assert choose_scale(app, build_app_options(app, TWO_GPUS), rule) == 8
    assert scaled.estimated_seconds == pytest.approx(exact.estimated_seconds, rel=0.1)
    assert evaluate_plan(app, TWO_GPUS, scaled, scale_model=None) == pytest.approx(exact.estimated_seconds, rel=0.1)
    done = {n: c for s in scaled.stages for e in s.entries for n, c in e.requests_done.items()}
    assert done["summary"] == app.node("summary").num_requests  # counted in the full app's requests
    state = RunState(finished={"summary": list(range(0, 4200, 2))})
    assert replan(app, TWO_GPUS, state, scale_model=rule).estimated_seconds < scaled.estimated_seconds
