"""Words fit the hardware: cores on the CPU engine, GPUs on GPUs, in plans, charts and the planner's messages."""

from pathlib import Path

import matplotlib
import pytest

from samullm_lc.planner.cluster import Cluster, device_word
from samullm_lc.planner.gantt import draw_gantt, draw_gantt_comparison, gantt_image
from samullm_lc.planner.plan import ExecutionPlan, Plan, Stage, StageEntry


@pytest.mark.parametrize(("cluster", "plural", "singular"), [
    (Cluster.parse("2xcpu"), "cores", "core"),
    ("2xcpu (pcie)", "cores", "core"),  # str(cluster), as plans and reports keep it
    ("2xcpu", "cores", "core"),
    ("4xcpu less lost devices [1]", "cores", "core"),
    (Cluster.parse("8xA100-80GB"), "GPUs", "GPU"),
    ("2x8xH100-80GB (nvswitch)", "GPUs", "GPU"),
    ("a cluster named by hand", "GPUs", "GPU"),
    ("3xB9000", "GPUs", "GPU"),
])
def test_device_word_follows_the_hardware(cluster, plural, singular):
    assert device_word(cluster) == plural and device_word(cluster, plural=False) == singular


def _plan(cluster: str, planner: str = "search", seconds: float = 10.0) -> Plan:
    entry = StageEntry(nodes=["n"], plan=ExecutionPlan(model="tiny-llama-s", gpus=(1,)), load_seconds=2.0,
                       finished_nodes=["n"])
    return Plan(app="app", cluster=cluster, planner=planner, estimated_seconds=seconds,
                stages=[Stage(start_seconds=0, end_seconds=seconds, entries=[entry])])


def test_a_plan_on_cores_says_cores_and_on_gpus_says_gpus():
    assert "tiny-llama-s TP1 on cores [1]" in _plan("2xcpu (pcie)").describe()
    assert "tiny-llama-s TP1 on GPUs [1]" in _plan("2xA100-80GB (nvswitch)").describe()
    assert ExecutionPlan(model="m", gpus=(0,)).short() == "m TP1 on GPUs [0]"
    assert ExecutionPlan(model="m", gpus=(0,)).short("2xcpu") == "m TP1 on cores [0]"


def _svg_text(plans: list[Plan], titles: list[str]) -> str:
    """The chart as SVG with its texts kept as text (matplotlib draws them as paths by default)."""
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        return gantt_image(plans, titles, "svg").decode()


def test_the_gantt_rows_are_cores_on_the_cpu_engine_and_gpus_on_gpus():
    cpu = _svg_text([_plan("2xcpu (pcie)")], ["t"])
    assert ">core 0<" in cpu and ">core 1<" in cpu and ">GPU" not in cpu
    gpu = _svg_text([_plan("2xA100-80GB (nvswitch)")], ["t"])
    assert ">GPU 0<" in gpu and ">core" not in gpu


def test_a_multi_node_cluster_draws_every_device():
    svg = _svg_text([_plan("2x4xA100-80GB (nvswitch)")], ["t"])
    assert ">GPU 7<" in svg


def test_a_comparison_is_two_panels_titled_with_planner_and_estimate(tmp_path: Path):
    plans = [_plan("2xcpu (pcie)", "search", 10.0), _plan("2xcpu (pcie)", "sequential", 14.5)]
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        svg = draw_gantt_comparison(plans, tmp_path / "versus.svg").read_text()
    assert "search: 10.0 s estimated, 1 stages" in svg and "sequential: 14.5 s estimated, 1 stages" in svg
    assert "app on 2xcpu (pcie)" in svg  # one heading above panels of one app on one cluster
    png = draw_gantt_comparison(plans, tmp_path / "versus.png")
    single = draw_gantt(plans[0], tmp_path / "one.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > single.stat().st_size


def test_a_comparison_needs_one_title_per_plan(tmp_path: Path):
    from samullm_lc.errors import ConfigError

    with pytest.raises(ConfigError, match="one title per plan"):
        draw_gantt_comparison([_plan("2xcpu")], tmp_path / "x.png", titles=["a", "b"])


def test_a_load_longer_than_its_first_stage_is_drawn_whole():
    from samullm_lc.planner.gantt import plan_bars

    engine = ExecutionPlan(model="big", gpus=(0,))
    other = ExecutionPlan(model="small", gpus=(1,))
    plan = Plan(app="a", cluster="2xA100-80GB", planner="p", estimated_seconds=100.0, stages=[
        Stage(start_seconds=0, end_seconds=20, entries=[StageEntry(nodes=["b"], plan=engine, load_seconds=60),
                                                        StageEntry(nodes=["s"], plan=other, finished_nodes=["s"])]),
        Stage(start_seconds=20, end_seconds=100, entries=[StageEntry(nodes=["b"], plan=engine, finished_nodes=["b"])]),
    ])
    assert {bar.plan.model: bar.load for bar in plan_bars(plan)} == {"big": 60, "small": 0}

