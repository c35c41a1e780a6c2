"""The `samullm` command line: JSON output, errors that name the problem."""

import json

import pytest
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


def _estimate(*extra: str, model: str = "Llama-2-7b-hf", sizes=("3", "10", "10")):
    requests, input_len, max_tokens = sizes
    return runner.invoke(app, ["estimate", "--model", model, "--num-requests", requests, "--input-len", input_len,
                               "--max-tokens", max_tokens, *extra])


def _words(result) -> str:
    return " ".join(result.output.split())


@pytest.mark.parametrize(("sizes", "extra", "expected"), [
    (("1000000000", "512", "256"), [], "requests in one estimate: 1,000,000,000 is over the limit of 1,000,000"),
    (("3", "10", "10"), ["--samples", "1000"], "over the limit of 100"),
    (("3", "10", "99999999999999999999"), [], "max_tokens"),
    (("3", "99999999999999999999", "10"), [], "input_tokens"),
    (("3", "10", "10"), ["--seed", "-1"], "--seed"),
])
def test_sizes_over_their_limit_exit_2_at_once_naming_the_limit(sizes, extra, expected):
    result = _estimate(*extra, sizes=sizes)
    assert result.exit_code == 2, result.output
    assert expected in _words(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (b"[1, 2]", "holds a JSON list, not an object"),
    (b'{"hidden_size": "abc", "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100}',
     "'hidden_size' is 'abc', not a number above 0"),
    (b'{"hidden_size": 64, "num_attention_heads": 0, "num_hidden_layers": 2, "vocab_size": 100}',
     "'num_attention_heads' is 0"),
    (b"{not json", "is not JSON"),
])
def test_a_bad_model_config_exits_2_naming_the_file(tmp_path, content, expected):
    (tmp_path / "config.json").write_bytes(content)
    result = _estimate(model=str(tmp_path))
    assert result.exit_code == 2, result.output
    assert expected in _words(result) and "config.json" in _words(result)


def test_a_non_utf8_profile_exits_2_naming_it(tmp_path):
    profile = tmp_path / "p.json"
    profile.write_bytes(b"\xff\xfe")
    result = _estimate("--hardware", "cpu", "--profile", str(profile))
    assert result.exit_code == 2, result.output
    assert "p.json is not UTF-8 text" in _words(result) and "samullm profile" in _words(result)


@pytest.fixture
def no_engine(monkeypatch):
    """`samullm profile` fails the test if it gets as far as resolving or starting an engine."""
    def refuse(*args, **kwargs):
        raise AssertionError("profile went on before checking its inputs")

    monkeypatch.setattr("samullm_lc.runtime.vllm_engine.engine_settings_for", refuse)
    monkeypatch.setattr("samullm_lc.profiling.profiler.profile_engine", refuse)


@pytest.mark.parametrize(("extra", "expected"), [
    (["--kv-cache-mib", "99999999999"], "is more than the"),
    (["--hardware", "B9000"], "unknown hardware 'B9000'"),
    (["--seed", "-1"], "--seed"),
])
def test_profile_refuses_bad_options_before_starting_an_engine(tmp_path, no_engine, extra, expected):
    result = runner.invoke(app, ["profile", "tiny-llama-s", "--out", str(tmp_path / "p.json"), *extra])
    assert result.exit_code == 2, result.output
    assert expected in _words(result)


def test_profile_refuses_an_out_path_it_cannot_write_before_starting_an_engine(tmp_path, no_engine):
    result = runner.invoke(app, ["profile", "tiny-llama-s", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "the engine profile path" in _words(result) and "is a folder" in _words(result)


def test_the_listing_commands_take_no_arguments():
    for command in ("models", "hardware"):
        assert runner.invoke(app, [command]).exit_code == 0
        refused = runner.invoke(app, [command, "--bogus"])
        assert refused.exit_code == 2 and "--bogus" in refused.output
