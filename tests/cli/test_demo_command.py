"""`samullm demo`: inputs checked before any engine or profile starts; the exit code says how the run went.

No test here starts an engine: the run itself is replaced by a report, and profiling fails the test if reached.
"""

import json

import pytest
from typer.testing import CliRunner

from samullm_lc.cli import run_command
from samullm_lc.cli.main import app
from samullm_lc.runtime.report import ModelRecord, RunReport

runner = CliRunner()


@pytest.fixture
def no_engines(monkeypatch):
    """Profiling (which starts real engines on cpu clusters) and the run itself fail the test if reached."""
    def refuse(*args, **kwargs):
        raise AssertionError("the demo started work before checking its inputs")

    monkeypatch.setattr("samullm_lc.profiling.pool_profiles.pool_profiles", refuse)
    monkeypatch.setattr(run_command, "run_app", refuse)


def _words(result) -> str:
    return " ".join(result.output.split())


@pytest.mark.parametrize(("extra", "expected"), [
    (["--backend", "nope"], "unknown backend 'nope'; choose one of vllm, sim"),
    (["--n", "1000000000"], "questions in the demo app: 1,000,000,000 is over the limit of 10,000"),
])
def test_bad_options_exit_2_before_anything_runs(tmp_path, no_engines, extra, expected):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), *extra])
    assert result.exit_code == 2, result.output
    assert expected in _words(result)


def test_an_out_folder_that_cannot_be_written_exits_2_before_anything_runs(tmp_path, no_engines):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(app, ["demo", "--backend", "sim", "--out", str(blocker / "demo")])
    assert result.exit_code == 2, result.output
    assert "cannot write the run report" in _words(result) and "a-file" in _words(result)


def _report(failed: int, errors: list[str]) -> RunReport:
    return RunReport(backend="sim", cluster="2xcpu", planner="search", seconds=1.0,
                     models=[ModelRecord(model="tiny-llama-s", requests_expected=4, requests_done=4 - failed,
                                         requests_failed=failed)], errors=errors)


@pytest.mark.parametrize(("failed", "errors", "code"), [(0, [], 0), (2, [], 1), (0, ["planning failed: x"], 1)])
def test_the_exit_code_says_whether_every_request_was_answered(tmp_path, monkeypatch, failed, errors, code):
    monkeypatch.setattr(run_command, "run_app", lambda *args, **kwargs: _report(failed, errors))
    result = runner.invoke(app, ["demo", "--backend", "sim", "--out", str(tmp_path), "--json"])
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["models"][0]["requests_failed"] == failed
    assert json.loads((tmp_path / "run.json").read_text())["errors"] == errors
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"


def test_help_documents_the_exit_codes():
    text = " ".join(runner.invoke(app, ["demo", "--help"]).output.split())
    assert "Exit codes: 0" in text and "1 the run finished but requests failed" in text
