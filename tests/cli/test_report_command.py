"""`samullm report RUN.json`: the summary or the JSON, the charts and the self-contained page, and errors that say
what to give instead (exit 2, no traceback)."""

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from samullm_lc.cli.main import app
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.runtime.app_runner import AppRun
from samullm_lc.runtime.pool import EnginePool

runner = CliRunner()
FILES = ("gantt.png", "throughput.png", "report.html")


@pytest.fixture(scope="module")
def run_json(tmp_path_factory) -> Path:
    """A report of a two-level app run on simulated GPUs, saved as `samullm run --report` saves it."""
    rng = np.random.default_rng(2)
    members = ["Llama-2-7b-hf", "Mistral-7B-Instruct-v0.2"]
    nodes = [LLMNode(name=m, model=m, input_tokens=rng.integers(50, 300, 60).tolist(), max_tokens=128)
             for m in members]
    nodes.append(LLMNode(name="fuse", model="Llama-2-13b-hf", input_tokens=[64] * 60, max_tokens=64,
                         depends_on=members))
    graph = AppGraph(name="ensemble", nodes=nodes)
    with EnginePool(graph, "4xA100-80GB", backend="sim", progress=False) as pool:
        AppRun(pool, graph, token_ids=np.arange(100, 200)).start().wait(120)
        assert pool.join(60)
    return pool.report().save(tmp_path_factory.mktemp("runs") / "run.json")


def _words(result) -> str:
    return " ".join(result.output.split())


def test_it_prints_plan_vs_actual_and_writes_the_charts_and_page_beside_the_report(run_json):
    result = runner.invoke(app, ["report", str(run_json)])
    assert result.exit_code == 0, result.output
    assert "sim on 4xA100-80GB (nvswitch) [search]: 180 requests done, 0 failed" in _words(result)
    assert "estimated" in result.stdout
    folder = run_json.parent / "run-report"
    for name in FILES:
        path = folder / name
        assert path.stat().st_size > 1_000 and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert str(path) in _words(result)  # the paths it wrote
    assert (folder / "gantt.png").read_bytes()[:4] == b"\x89PNG"


def test_json_prints_the_report_and_out_chooses_the_folder(run_json, tmp_path):
    result = runner.invoke(app, ["report", str(run_json), "--json", "--out", str(tmp_path / "charts")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload == json.loads(run_json.read_text())
    assert sorted(p.name for p in (tmp_path / "charts").iterdir()) == sorted(FILES)


def test_the_page_is_self_contained(run_json, tmp_path):
    assert runner.invoke(app, ["report", str(run_json), "--out", str(tmp_path)]).exit_code == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert 'src="http' not in page and "<script" not in page and "href=" not in page
    assert "Llama-2-13b-hf" in page and "Planning decisions" in page and "<th>GPUs</th>" in page


@pytest.mark.parametrize(("content", "expected"), [
    (None, "cannot read run report"),
    ("{not json", "is not a valid run report"),
    ('{"app": "router", "nodes": []}', "is not a valid run report"),
    ("folder", "cannot read run report"),
])
def test_a_missing_or_invalid_report_exits_2_with_the_fix_and_no_traceback(tmp_path, content, expected):
    path = tmp_path / "run.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2, result.output
    words = _words(result)
    assert expected in words and "samullm run --report FILE" in words
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not (tmp_path / "run-report").exists()


def test_an_out_folder_that_cannot_be_written_exits_2_before_printing(run_json, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(app, ["report", str(run_json), "--out", str(blocker / "charts")])
    assert result.exit_code == 2, result.output
    assert "a-file" in _words(result) and result.stdout == ""


def test_a_file_that_fails_to_write_exits_3_after_the_others(run_json, tmp_path, monkeypatch):
    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("samullm_lc.runtime.report.RunReport.save_throughput", disk_full)
    result = runner.invoke(app, ["report", str(run_json), "--out", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert "No space left on device" in _words(result)
    assert (tmp_path / "report.html").exists() and not (tmp_path / "throughput.png").exists()


def test_help_says_where_the_files_go():
    text = " ".join(runner.invoke(app, ["report", "--help"]).output.replace("│", " ").split())
    assert "RUN.json" in text and "-report/ beside the report" in text and "report.html" in text
    assert "Exit codes: 0" in text


def test_a_report_written_before_the_time_series_and_the_device_words_still_draws(tmp_path):
    """docs/results/runtime-real-report.json was saved by an earlier version (no tokens over time, "2xcpu (pcie)")."""
    old = Path(__file__).resolve().parents[2] / "docs" / "results" / "runtime-real-report.json"
    result = runner.invoke(app, ["report", str(old), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert all((tmp_path / name).stat().st_size > 0 for name in ("gantt.png", "throughput.png", "report.html"))
    assert "cores" in (tmp_path / "report.html").read_text()
