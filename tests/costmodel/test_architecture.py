"""Reading a model's config.json: every malformed file is a ConfigError naming the file and the field."""

import json

import pytest

from samullm_lc.costmodel.architecture import ModelArchitecture, resolve_architecture
from samullm_lc.errors import ConfigError

LLAMA_LIKE = {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
              "num_hidden_layers": 2, "vocab_size": 320, "intermediate_size": 512}


def _config(tmp_path, content) -> str:
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (tmp_path / "config.json").write_bytes(data)
    return str(tmp_path)


def test_a_valid_config_reads_whole_numbers_written_as_floats(tmp_path):
    arch = ModelArchitecture.from_config_file(_config(tmp_path, {**LLAMA_LIKE, "hidden_size": 256.0}), name="m")
    assert arch.hidden_size == 256 and arch.head_dim == 64 and arch.family == "LlamaForCausalLM"


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfe\x00", "is not UTF-8 text"),
    (b"{oops", "is not JSON"),
    ([1, 2], "holds a JSON list, not an object"),
    ("just text", "holds a JSON str, not an object"),
    ({**LLAMA_LIKE, "hidden_size": "abc"}, "'hidden_size' is 'abc', not a number above 0"),
    ({**LLAMA_LIKE, "hidden_size": 256.5}, "'hidden_size' is 256.5, not a whole number"),
    ({**LLAMA_LIKE, "num_hidden_layers": 0}, "'num_hidden_layers' is 0"),
    ({**LLAMA_LIKE, "num_attention_heads": True}, "'num_attention_heads' is True"),
    ({**LLAMA_LIKE, "num_attention_heads": 512}, "smaller than num_attention_heads"),
    ({**LLAMA_LIKE, "intermediate_size": None, "expansion_ratio": "x"}, "'expansion_ratio' is 'x'"),
    ({**LLAMA_LIKE, "vocab_size": None}, "has none of"),
])
def test_a_malformed_config_is_a_config_error_naming_the_file(tmp_path, content, expected):
    folder = _config(tmp_path, content)
    with pytest.raises(ConfigError, match=expected) as caught:
        resolve_architecture(folder)
    assert "config.json" in str(caught.value)


def test_odd_architectures_fall_back_to_the_model_type(tmp_path):
    arch = ModelArchitecture.from_config_file(_config(tmp_path, {**LLAMA_LIKE, "architectures": 5,
                                                                 "model_type": "llama"}), name="m")
    assert arch.family == "llama"


def test_a_shape_pydantic_refuses_is_a_config_error_without_a_pydantic_dump():
    with pytest.raises(ConfigError, match="invalid ModelArchitecture: num_layers") as caught:
        ModelArchitecture(name="m", family="x", num_layers=-1, hidden_size=8, num_attention_heads=1, num_kv_heads=1,
                          head_dim=8, intermediate_size=8, vocab_size=8, max_model_len=8)
    assert "errors.pydantic.dev" not in str(caught.value)
