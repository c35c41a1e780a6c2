"""The run report read back, drawn and written as a page: words that fit the hardware, the actual run titled as
measured, a self-contained HTML page, and reports of older versions that still load."""

import json
import re
import stat
from pathlib import Path

import matplotlib
import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.planner.plan import ExecutionPlan, Plan, Stage, StageEntry
from samullm_lc.runtime.report import EngineSpan, ModelRecord, ReplanRecord, RunReport
from samullm_lc.runtime.report_charts import plan_vs_actual_image, planned_from_start, throughput_image
from samullm_lc.runtime.report_page import report_html
from samullm_lc.runtime.throughput import TokenTimeline

S, M = "tiny-llama-s", "tiny-<mistral>&"  # a name to escape


def cpu_report(cluster: str = "2xcpu (pcie)") -> RunReport:
    """A small run on two cores: the plan, two engines, two planning decisions, a failed request and an error."""
    plan = Plan(app="demo", cluster=cluster, planner="search", estimated_seconds=9.0, stages=[
        Stage(start_seconds=0, end_seconds=5, entries=[
            StageEntry(nodes=["a"], plan=ExecutionPlan(model=S, gpus=(0,)), load_seconds=1.0, finished_nodes=["a"]),
            StageEntry(nodes=["b"], plan=ExecutionPlan(model=M, gpus=(1,)), load_seconds=1.5)]),
        Stage(start_seconds=5, end_seconds=9, entries=[
            StageEntry(nodes=["b"], plan=ExecutionPlan(model=M, gpus=(1,)), finished_nodes=["b"])]),
    ])
    timelines = {S: TokenTimeline(), M: TokenTimeline()}
    for second in range(2, 6):
        timelines[S].add(second, 40)
    for second in range(3, 10):
        timelines[M].add(second, 30)
    return RunReport(
        backend="vllm", cluster=cluster, planner="search", seconds=9.6, elapsed_seconds=10.0, estimated_seconds=9.5,
        initial_plan=plan,
        models=[ModelRecord(model=S, requests_expected=8, requests_submitted=8, requests_done=8, output_tokens=160,
                            last_finish_seconds=5.2, estimated_finish_seconds=5.5, output_tokens_over_time=timelines[S]),
                ModelRecord(model=M, requests_expected=8, requests_submitted=8, requests_done=7, requests_failed=1,
                            output_tokens=210, last_finish_seconds=9.6, estimated_finish_seconds=9.5,
                            output_tokens_over_time=timelines[M])],
        replans=[ReplanRecord(at_seconds=0.5, reason="start", planning_seconds=0.2, estimated_remaining_seconds=9.0,
                              stage=[ExecutionPlan(model=S, gpus=(0,)).short(cluster) + " for a"], planned_stage_seconds=5.0,
                              actual_stage_seconds=4.7),
                 ReplanRecord(at_seconds=5.2, reason=f"{S} finished", planning_seconds=0.1,
                              estimated_remaining_seconds=4.0)],
        engines=[EngineSpan(model=S, devices=[0], started_seconds=0.5, ready_seconds=1.6, stopped_seconds=5.2,
                            requests_done=8),
                 EngineSpan(model=M, devices=[1], started_seconds=0.5, ready_seconds=2.0, stopped_seconds=9.6,
                            requests_done=7)],
        errors=["a <b>bold</b> error"],
    )


def _svg(image: bytes) -> str:
    return image.decode()


def test_the_actual_run_is_titled_as_measured_and_drawn_on_cores():
    report = cpu_report()
    assert report.actual_title() == "actual run on 2xcpu (pcie) [search]: 9.6 s measured (estimated 9.5 s)"
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        svg = _svg(plan_vs_actual_image(report, "svg"))
    assert "9.6 s measured" in svg and "initial plan, search: 9.5 s estimated, 2 stages" in svg
    assert ">core 0<" in svg and ">GPU" not in svg


def test_the_initial_plan_is_drawn_from_when_it_was_made():
    planned = planned_from_start(cpu_report())
    assert [(s.start_seconds, s.end_seconds) for s in planned.stages] == [(0.5, 5.5), (5.5, 9.5)]
    assert planned.estimated_seconds == 9.5
    assert planned_from_start(cpu_report().model_copy(update={"initial_plan": None})) is None


def test_the_charts_are_written_private(tmp_path: Path):
    report = cpu_report()
    for path in (report.save_plan_vs_actual(tmp_path / "gantt.png"), report.save_throughput(tmp_path / "tp.png"),
                 report.save_gantt(tmp_path / "actual.png")):
        assert path.read_bytes()[:4] == b"\x89PNG" and stat.S_IMODE(path.stat().st_mode) == 0o600
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        svg = _svg(throughput_image(report, "svg"))
    assert "output tokens/s" in svg and "all models" in svg and "tiny-&lt;mistral&gt;&amp;" in svg


def test_charts_of_a_report_without_engines_or_finishes_still_draw():
    empty = RunReport(backend="sim", cluster="8xA100-80GB (nvswitch)", planner="search")
    assert plan_vs_actual_image(empty)[:4] == b"\x89PNG" and throughput_image(empty)[:4] == b"\x89PNG"
    page = report_html(empty)
    assert page.count("data:image/png") == 2 and "0.0 s" in page and "no estimate" in page


def test_the_html_page_is_self_contained_and_says_what_happened(tmp_path: Path):
    path = cpu_report().save_html(tmp_path / "report.html")
    page = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert page.startswith("<!DOCTYPE html>") and page.count('src="data:image/png;base64,') == 2
    assert 'src="http' not in page and "<script" not in page and "<link" not in page and "url(" not in page
    assert "9.6 s" in page and "estimated 9.5 s (-1.0%)" in page and "15" in page  # headline, requests done
    assert "requests failed" in page and "output tokens/s" in page
    assert "tiny-&lt;mistral&gt;&amp;" in page and "<mistral>" not in page  # every run text escaped
    assert "a &lt;b&gt;bold&lt;/b&gt; error" in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 may spell anything
    assert "<th>cores</th>" in text and "GPU" not in text
    assert f"{S} finished" in page and "nothing to run" in page  # the planning decisions


def test_the_page_on_gpus_names_gpus():
    page = report_html(cpu_report("8xA100-80GB (nvswitch)"))
    assert "<th>GPUs</th>" in page and "cores" not in page


def test_a_report_round_trips_and_an_old_one_without_the_series_still_loads(tmp_path: Path):
    report = cpu_report()
    path = report.save(tmp_path / "run.json")
    assert RunReport.load(path) == report
    old = json.loads(path.read_text())
    for model in old["models"]:
        del model["output_tokens_over_time"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = RunReport.load(tmp_path / "old.json")
    assert [m.output_tokens_over_time.output_tokens for m in loaded.models] == [[], []]
    assert report_html(loaded).count("data:image/png") == 2
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        assert "written by an older samullm_lc" in throughput_image(loaded, "svg").decode()


@pytest.mark.parametrize(("content", "expected"), [
    (None, "cannot read run report"),
    ("not json", "is not a valid run report (the file: Invalid JSON"),
    ('{"app": "x"}', "is not a valid run report (backend: Field required)"),
    ('{"backend": "sim", "cluster": "c", "planner": "p", "models": [{"model": 3}]}', "models.0.model"),
])
def test_a_file_that_is_not_a_run_report_is_a_config_error_with_the_fix(tmp_path: Path, content, expected):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="samullm run --report FILE") as caught:
        RunReport.load(path)
    assert expected in str(caught.value) and str(path) in str(caught.value)
