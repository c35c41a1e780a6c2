"""`samullm run`: an app graph through the engine pool (here the `sim` backend), report and Gantt written."""

import json

from typer.testing import CliRunner

from samullm_lc.cli.main import app
from samullm_lc.graph.app_graph import AppGraph, LLMNode

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
