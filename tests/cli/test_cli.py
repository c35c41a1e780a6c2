"""The `samullm` command line: JSON output, errors that name the problem."""

import json

from typer.testing import CliRunner

from samullm_lc.cli.main import app

runner = CliRunner()


def test_estimate_prints_one_json_object_with_seconds():
    result = runner.invoke(app, ["estimate", "--model", "Llama-2-7b-hf", "--hardware", "A100-80GB", "--num-requests",
                                 "200", "--input-len", "256", "--max-tokens", "128", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["seconds"] > 0
    assert payload["seconds_min"] <= payload["seconds"] <= payload["seconds_max"]
    assert payload["latency_source"] == "analytic"


def test_more_gpus_make_a_70b_faster():
    def seconds(tp):
        result = runner.invoke(app, ["estimate", "--model", "Llama-2-70b-hf", "--hardware", "A100-80GB", "--tp", str(tp),
                                     "--num-requests", "500", "--input-len", "512", "--max-tokens", "256", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["seconds"]

    assert seconds(8) < seconds(4) < seconds(2)


def test_unknown_model_error_names_it_and_the_fix():
    result = runner.invoke(app, ["estimate", "--model", "no-such-model", "--num-requests", "1", "--input-len", "1",
                                 "--max-tokens", "1"])
    assert result.exit_code == 2
    assert "no-such-model" in result.output and "config.json" in result.output


def test_cpu_without_profile_says_how_to_get_one():
    result = runner.invoke(app, ["estimate", "--model", "Llama-2-7b-hf", "--hardware", "cpu", "--num-requests", "1",
                                 "--input-len", "1", "--max-tokens", "1"])
    assert result.exit_code == 2
    assert "samullm profile" in result.output


def test_a_model_that_fits_nowhere_gets_the_memory_it_needs():
    result = runner.invoke(app, ["estimate", "--model", "Llama-2-70b-hf", "--hardware", "L40S", "--num-requests", "1",
                                 "--input-len", "1", "--max-tokens", "1"])
    assert result.exit_code == 2
    assert "GiB" in result.output and "Llama-2-70b-hf" in result.output


def test_every_subcommand_has_help():
    for command in ("estimate", "profile", "models", "hardware", "demo", "validate", "plan", "run"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
