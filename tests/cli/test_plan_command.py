"""`samullm plan`: the plan as JSON, every planner side by side, the Gantt chart, errors that name the fix."""

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from samullm_lc.cli.main import app
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.graph.paper_apps import mixed_app, router_app
from samullm_lc.planner.plan import Plan

PLANNER_NAMES = ("greedy", "search", "exhaustive", "sequential", "all-at-once", "muxserve-like", "per-model-pools")

runner = CliRunner()


def _router_app(n: int) -> AppGraph:
    return router_app(n, 0)


@pytest.fixture(scope="module")
def small_app(tmp_path_factory) -> Path:
    """The router app at 40 prompts: five models of 7B-70B, small enough to plan in a blink."""
    return _router_app(40).save(tmp_path_factory.mktemp("apps") / "router-n40.json")


def plan_args(path: Path, *extra: str) -> list[str]:
    return ["plan", str(path), "--cluster", "8xA100-80GB", *extra]


def test_help_names_every_planner_and_the_lower_bound_key():
    result = runner.invoke(app, ["plan", "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    text = " ".join(result.output.split())
    for name in PLANNER_NAMES:
        assert name in text
    assert "lower_bound" in text


def test_json_prints_the_plan_with_estimated_seconds(small_app):
    result = runner.invoke(app, plan_args(small_app, "--json"))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["estimated_seconds"] > 0
    plan = Plan.model_validate(payload)
    assert plan.planner == "search" and plan.stages
    served = {node for stage in plan.stages for entry in stage.entries for node in entry.nodes}
    assert served == {node.name for node in AppGraph.load(small_app).nodes}


def test_text_mode_describes_the_plan(small_app):
    result = runner.invoke(app, plan_args(small_app, "--planner", "sequential", "--topology", "nvlink-pairs"))
    assert result.exit_code == 0, result.output
    assert "router" in result.stdout and "stage 0" in result.stdout and "[sequential]" in result.stdout


def test_compare_json_has_every_planner_and_the_lower_bound(small_app):
    result = runner.invoke(app, plan_args(small_app, "--compare", "--json"))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    skipped = payload.pop("skipped", {})
    bound = payload.pop("lower_bound")
    assert set(payload) == set(PLANNER_NAMES) - {"exhaustive"}
    assert "exhaustive" in skipped and "5 models" in skipped["exhaustive"]
    assert all(seconds >= bound * (1 - 1e-6) for seconds in payload.values())


def test_compare_runs_exhaustive_on_a_small_instance(tmp_path):
    tiny = AppGraph(name="tiny", nodes=[
        LLMNode(name="a", model="Mistral-7B-Instruct-v0.2", input_tokens=[200] * 30, max_tokens=128),
        LLMNode(name="b", model="vicuna-13b-v1.5", input_tokens=[300] * 30, max_tokens=128, depends_on=["a"]),
    ])
    result = runner.invoke(app, ["plan", str(tiny.save(tmp_path / "tiny.json")), "--cluster", "2xA100-80GB",
                                 "--compare", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert "skipped" not in payload
    assert set(payload) == set(PLANNER_NAMES) | {"lower_bound"}


def test_compare_text_prints_a_table(small_app):
    result = runner.invoke(app, plan_args(small_app, "--compare", "--planner", "greedy"))
    assert result.exit_code == 0, result.output
    for name in ("greedy", "sequential", "lower_bound"):
        assert name in result.stdout


def test_gantt_writes_a_png(small_app, tmp_path):
    chart = tmp_path / "plan.png"
    result = runner.invoke(app, plan_args(small_app, "--gantt", str(chart)))
    assert result.exit_code == 0, result.output
    assert chart.read_bytes().startswith(b"\x89PNG") and chart.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--planner", "magic"], ["magic", "sequential"]),
        (["--topology", "torus"], ["torus", "nvlink-pairs"]),
    ],
)
def test_bad_options_exit_2_and_name_the_choices(small_app, extra, expected):
    result = runner.invoke(app, plan_args(small_app, *extra))
    assert result.exit_code == 2
    for word in expected:
        assert word in result.output


@pytest.mark.parametrize(("spec", "expected"), [("8xB9000", "B9000"), ("eight A100s", "COUNTxHARDWARE")])
def test_a_bad_cluster_spec_exits_2(small_app, spec, expected):
    result = runner.invoke(app, ["plan", str(small_app), "--cluster", spec])
    assert result.exit_code == 2
    assert expected in result.output


def test_a_missing_app_file_exits_2_and_points_at_the_examples(tmp_path):
    result = runner.invoke(app, plan_args(tmp_path / "nope.json"))
    assert result.exit_code == 2
    assert "nope.json" in result.output and "examples/apps" in result.output


def test_a_malformed_app_file_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "nodes": [{"name": "a"}]}))
    result = runner.invoke(app, plan_args(bad))
    assert result.exit_code == 2
    assert "bad.json" in result.output and "AppGraph" in result.output


def test_a_model_that_fits_nowhere_is_named_with_the_memory_it_needs(tmp_path):
    huge = AppGraph(name="huge", nodes=[LLMNode(name="big", model="Llama-2-70b-hf", input_tokens=[100] * 4,
                                                max_tokens=64)])
    path = huge.save(tmp_path / "huge.json")
    result = runner.invoke(app, ["plan", str(path), "--cluster", "1xL40S"])
    assert result.exit_code == 2
    assert "Llama-2-70b-hf" in result.output and "GiB" in result.output


def test_an_unwritable_gantt_path_exits_2(small_app, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(app, plan_args(small_app, "--planner", "sequential", "--gantt", str(blocker / "plan.png")))
    assert result.exit_code == 2
    assert "gantt" in result.output and "plan.png" in result.output


def test_curve_batches_reach_the_planner_and_are_checked(small_app):
    from samullm_lc.planner import Cluster, plan_app

    result = runner.invoke(app, plan_args(small_app, "--curve-batches", "24", "--json"))
    assert result.exit_code == 0, result.output
    expected = plan_app(AppGraph.load(small_app), Cluster.parse("8xA100-80GB"), curve_batches=24)
    assert json.loads(result.stdout)["estimated_seconds"] == pytest.approx(expected.estimated_seconds)
    refused = runner.invoke(app, plan_args(small_app, "--curve-batches", "0"))
    assert refused.exit_code != 0 and "curve-batches" in refused.output


def test_a_gantt_chart_is_private_to_its_owner(small_app, tmp_path):
    chart = tmp_path / "plan.png"
    result = runner.invoke(app, plan_args(small_app, "--planner", "sequential", "--gantt", str(chart)))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(chart.stat().st_mode) == 0o600


@pytest.mark.parametrize(("name", "expected"), [("plan.xyz", "matplotlib writes no .xyz files"),
                                                ("folder", "is a folder")])
def test_a_gantt_path_that_cannot_be_written_exits_2_before_planning(small_app, tmp_path, monkeypatch, name,
                                                                     expected):
    (tmp_path / "folder").mkdir()
    monkeypatch.setattr("samullm_lc.planner.plan_app", lambda *a, **k: pytest.fail("planned before checking"))
    result = runner.invoke(app, plan_args(small_app, "--gantt", str(tmp_path / name)))
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())


def test_a_gantt_chart_that_fails_to_write_after_planning_exits_3_with_the_plan_printed(small_app, tmp_path,
                                                                                         monkeypatch):
    def disk_full(plan, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("samullm_lc.planner.gantt.draw_gantt", disk_full)
    result = runner.invoke(app, plan_args(small_app, "--planner", "sequential", "--json", "--gantt",
                                          str(tmp_path / "plan.png")))
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)["estimated_seconds"] > 0
    assert "plan.png" in result.output and "No space left on device" in " ".join(result.output.split())


@pytest.mark.parametrize(("extra", "expected"), [
    (["--cluster", "0xA100-80GB"], "devices in a cluster must be at least 1, got 0"),
    (["--cluster", "99999999999999999999xA100-80GB"], "over the limit of 1,024"),
    (["--samples", "21"], "over the limit of 20"),
    (["--curve-batches", "1000000"], "over the limit of 100"),
    (["--seed", "-1"], "--seed"),
])
def test_hostile_values_exit_2_with_the_limit_and_no_traceback(small_app, extra, expected):
    result = runner.invoke(app, ["plan", str(small_app), *(extra if extra[0] == "--cluster" else
                                                            ["--cluster", "8xA100-80GB", *extra])])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_non_utf8_app_file_exits_2_naming_it(tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    result = runner.invoke(app, plan_args(bad))
    assert result.exit_code == 2, result.output
    assert "latin1.json is not UTF-8 text" in " ".join(result.output.split())


def test_compare_skips_per_model_pools_when_the_models_do_not_fit_at_once(tmp_path):
    path = mixed_app(20, 0).save(tmp_path / "mixed-n20.json")  # 14 models: their pools need 15 GPUs at once
    result = runner.invoke(app, plan_args(path, "--compare", "--json"))
    assert result.exit_code == 0, result.output
    skipped = json.loads(result.stdout)["skipped"]
    assert "need at least 15 GPUs" in skipped["per-model-pools"]
    alone = runner.invoke(app, plan_args(path, "--planner", "per-model-pools"))
    assert alone.exit_code == 2 and "need at least 15 GPUs" in " ".join(alone.output.split())


def test_gantt_versus_draws_the_plan_above_a_baseline(small_app, tmp_path):
    alone, versus = tmp_path / "plan.png", tmp_path / "versus.png"
    assert runner.invoke(app, plan_args(small_app, "--gantt", str(alone))).exit_code == 0
    result = runner.invoke(app, plan_args(small_app, "--gantt", str(versus), "--gantt-versus", "sequential"))
    assert result.exit_code == 0, result.output
    assert "search plan above the sequential plan" in " ".join(result.output.split())
    assert versus.read_bytes().startswith(b"\x89PNG") and versus.stat().st_size > alone.stat().st_size
    with_compare = runner.invoke(app, plan_args(small_app, "--compare", "--gantt", str(versus),
                                                "--gantt-versus", "all-at-once"))
    assert with_compare.exit_code == 0, with_compare.output


@pytest.mark.parametrize(("extra", "expected"), [
    (["--gantt-versus", "nope", "--gantt", "x.png"], "unknown planner 'nope'; choose one of greedy, search"),
    (["--gantt-versus", "sequential"], "add --gantt FILE"),
    (["--gantt-versus", "search", "--gantt", "x.png"], "names the --planner itself"),
])
def test_gantt_versus_names_another_known_planner_and_comes_with_a_chart(small_app, tmp_path, monkeypatch, extra,
                                                                         expected):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, plan_args(small_app, *extra))
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_the_compare_skip_reason_names_cores_on_a_cpu_cluster():
    from samullm_lc.cli.plan_command import _too_big_for_exhaustive
    from samullm_lc.planner.cluster import Cluster

    app_graph = _router_app(4)
    assert "cores; this is" in _too_big_for_exhaustive(app_graph, Cluster.parse("64xcpu"))
    assert "GPUs; this is" in _too_big_for_exhaustive(app_graph, Cluster.parse("64xA100-80GB"))
