"""The Gantt chart of a hand-made plan: a PNG that exists and holds a real picture."""

import stat
from pathlib import Path

import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.planner.gantt import draw_gantt, plan_bars
from samullm_lc.planner.plan import ExecutionPlan, Plan, Stage, StageEntry

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def hand_made_plan() -> Plan:
    """Three stages on 8 GPUs: a 70B on TP4, two 13Bs with replicas, two 7Bs sharing a GPU."""
    seventy = ExecutionPlan(model="Llama-2-70b-chat-hf", tp=4, gpus=(0, 1, 2, 3))
    vicuna = ExecutionPlan(model="vicuna-13b-v1.5", tp=1, replicas=2, gpus=(4, 5))
    mistral = ExecutionPlan(model="Mistral-7B-Instruct-v0.2", gpus=(6,), memory_fraction=0.5, time_sliced=True)
    mpt = ExecutionPlan(model="mpt-7b-chat", gpus=(6,), memory_fraction=0.5, time_sliced=True)
    wizard = ExecutionPlan(model="WizardLM-13B-V1.2", tp=2, replicas=2, gpus=(4, 5, 6, 7))
    return Plan(
        app="hand-made", cluster="8xA100-80GB (nvswitch)", planner="manual", estimated_seconds=300.0,
        stages=[
            Stage(start_seconds=0, end_seconds=100, entries=[
                StageEntry(nodes=["a"], plan=seventy, load_seconds=40),
                StageEntry(nodes=["b"], plan=vicuna, load_seconds=15, finished_nodes=["b"]),
                StageEntry(nodes=["c"], plan=mistral, load_seconds=10),
                StageEntry(nodes=["d"], plan=mpt, load_seconds=10),
            ]),
            Stage(start_seconds=100, end_seconds=180, entries=[
                StageEntry(nodes=["a"], plan=seventy, finished_nodes=["a"]),
                StageEntry(nodes=["e", "f"], plan=wizard, load_seconds=20),
            ]),
            Stage(start_seconds=180, end_seconds=300, entries=[
                StageEntry(nodes=["e", "f"], plan=wizard, finished_nodes=["e", "f"]),
            ]),
        ],
    )


def test_draw_gantt_writes_a_png(tmp_path: Path):
    path = draw_gantt(hand_made_plan(), tmp_path / "charts" / "plan.png")
    assert path.exists()
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 20_000


def test_draw_gantt_handles_an_empty_plan(tmp_path: Path):
    empty = Plan(app="empty", cluster="2xA100-80GB (nvswitch)", planner="manual", estimated_seconds=0.0, stages=[])
    assert draw_gantt(empty, tmp_path / "empty.png").stat().st_size > 1_000


def test_an_engine_running_on_unchanged_is_one_bar():
    bars = {(bar.plan.model, bar.start, bar.end) for bar in plan_bars(hand_made_plan())}
    assert ("Llama-2-70b-chat-hf", 0, 180) in bars
    assert ("WizardLM-13B-V1.2", 100, 300) in bars
    assert len(bars) == 5


def test_the_chart_is_private_and_its_format_follows_the_suffix(tmp_path):
    svg = draw_gantt(hand_made_plan(), tmp_path / "plan.svg")
    assert svg.read_bytes().lstrip().startswith(b"<?xml") and stat.S_IMODE(svg.stat().st_mode) == 0o600
    bare = draw_gantt(hand_made_plan(), tmp_path / "plan")
    assert bare.read_bytes().startswith(PNG_SIGNATURE)


def test_a_suffix_matplotlib_cannot_write_is_refused_before_drawing(tmp_path):
    with pytest.raises(ConfigError, match=r"no \.docx files; use one of .*\.png"):
        draw_gantt(hand_made_plan(), tmp_path / "plan.docx")
    assert not list(tmp_path.iterdir())
