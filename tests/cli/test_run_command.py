"""`samullm run`: an app graph through the engine pool (here the `sim` backend), report and Gantt written;
inputs checked before anything runs, and an exit code that says whether every request was answered."""

import json
import stat

import pytest
from typer.testing import CliRunner

from samullm_lc.cli.main import app
from samullm_lc.errors import PoolError
from samullm_lc.graph.app_graph import AppGraph, LLMNode
from samullm_lc.runtime.pool import EnginePool
from samullm_lc.runtime.report import RunReport

runner = CliRunner()


def _app_file(tmp_path):
    nodes = [LLMNode(name="draft", model="Llama-2-7b-hf", input_tokens=[100] * 60, max_tokens=128),
             LLMNode(name="review", model="Llama-2-13b-hf", input_tokens=[30] * 60, max_tokens=64, depends_on=["draft"])]
    return AppGraph(name="draft-review", nodes=nodes).save(tmp_path / "app.json")


def test_run_on_the_sim_backend_writes_the_report_and_the_gantt(tmp_path):
    result = runner.invoke(app, ["run", str(_app_file(tmp_path)), "--cluster", "2xA100-80GB", "--backend", "sim",
                                 "--report", str(tmp_path / "r.json"), "--gantt", str(tmp_path / "g.png"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {m["model"]: m["requests_done"] for m in report["models"]} == {"Llama-2-7b-hf": 60, "Llama-2-13b-hf": 60}
    assert report["replans"][0]["reason"] == "start" and report["seconds"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["seconds"] == report["seconds"]
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_run_names_a_bad_backend_and_a_missing_app(tmp_path):
    result = runner.invoke(app, ["run", str(_app_file(tmp_path)), "--cluster", "2xA100-80GB", "--backend", "gpu"])
    assert result.exit_code == 2 and "unknown backend 'gpu'" in " ".join(result.output.split())
    result = runner.invoke(app, ["run", str(tmp_path / "nope.json"), "--cluster", "2xA100-80GB", "--backend", "sim"])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())


def _run(tmp_path, *extra, app_file=None):
    app_file = app_file or _app_file(tmp_path)
    return runner.invoke(app, ["run", str(app_file), "--cluster", "2xA100-80GB", "--backend", "sim", *extra])


def _words(result) -> str:
    return " ".join(result.output.split())


def test_an_unknown_planner_exits_2_before_anything_runs_and_lists_the_choices(tmp_path):
    result = _run(tmp_path, "--planner", "foo")
    assert result.exit_code == 2, result.output
    assert "unknown planner 'foo'" in _words(result) and "sequential" in _words(result)
    assert "requests done" not in result.output  # nothing ran


def test_a_model_that_fits_no_gpu_fails_its_requests_and_exits_1_with_the_report_written(tmp_path):
    huge = AppGraph(name="huge", nodes=[LLMNode(name="big", model="Llama-2-70b-hf", input_tokens=[100] * 3,
                                                max_tokens=64)]).save(tmp_path / "huge.json")
    result = runner.invoke(app, ["run", str(huge), "--cluster", "1xA100-40GB", "--backend", "sim", "--json",
                                 "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    report = RunReport.model_validate_json((tmp_path / "r.json").read_text())
    assert report.requests_failed == 3 and report.errors and "does not fit" in report.errors[0]
    assert json.loads(result.stdout)["errors"] == report.errors


@pytest.mark.parametrize(("option", "name", "expected"), [
    ("--report", "folder", "is a folder"),
    ("--report", "a-file/r.json", "cannot write the run report"),
    ("--gantt", "chart.xyz", "matplotlib writes no .xyz files"),
    ("--journal", "folder", "the journal path"),
])
def test_an_output_that_cannot_be_written_exits_2_before_the_run(tmp_path, option, name, expected):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("")
    result = _run(tmp_path, option, str(tmp_path / name))
    assert result.exit_code == 2, result.output
    assert expected in _words(result) and "requests done" not in result.output


def test_parent_folders_of_the_outputs_are_created(tmp_path):
    result = _run(tmp_path, "--report", str(tmp_path / "new" / "deeper" / "r.json"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "deeper" / "r.json").is_file()


def test_a_report_that_fails_to_write_after_the_run_exits_3_with_the_results_printed(tmp_path, monkeypatch):
    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunReport, "save", disk_full)
    result = _run(tmp_path, "--report", str(tmp_path / "r.json"), "--gantt", str(tmp_path / "g.png"), "--json")
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)["seconds"] > 0  # the results are on stdout, not lost
    assert "r.json" in _words(result) and "No space left on device" in _words(result)
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"  # the other file is still written


def test_the_report_and_the_chart_are_private_to_their_owner(tmp_path):
    result = _run(tmp_path, "--report", str(tmp_path / "r.json"), "--gantt", str(tmp_path / "g.png"))
    assert result.exit_code == 0, result.output
    for name in ("r.json", "g.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_help_documents_the_exit_codes():
    text = " ".join(runner.invoke(app, ["run", "--help"]).output.split())
    assert "Exit codes: 0" in text and "2 bad input, nothing ran" in text and "3 the run finished" in text


def test_a_driver_failure_mid_run_is_in_the_report_and_exits_1(tmp_path, monkeypatch):
    close = EnginePool.close

    def close_then_fail(self, **kwargs):
        close(self, **kwargs)
        raise PoolError("the engine pool's driver failed: RuntimeError: boom")

    monkeypatch.setattr(EnginePool, "close", close_then_fail)
    result = _run(tmp_path, "--report", str(tmp_path / "r.json"))
    assert result.exit_code == 1, result.output
    assert "driver failed: RuntimeError: boom" in _words(result)
    assert RunReport.model_validate_json((tmp_path / "r.json").read_text()).errors[-1].endswith("boom")
