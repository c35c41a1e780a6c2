"""Requests are validated at the edge (the journal's tests are in test_journal.py)."""

import numpy as np
import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.runtime.requests import SamplingSpec, content_key, normalise_prompt


def test_sampling_spec_names_the_bad_field_and_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"temperature.*allowed fields: max_tokens"):
        SamplingSpec.parse({"temperature": -1})
    with pytest.raises(ConfigError, match="top_k"):
        SamplingSpec.parse({"top_k": 5})
    spec = SamplingSpec.parse({"max_tokens": 8, "seed": 3, "stop": ["\n"]})
    assert spec.vllm_kwargs() == {"max_tokens": 8, "temperature": 1.0, "top_p": 1.0, "stop": ["\n"], "seed": 3,
                                  "n": 1, "ignore_eos": False}


@pytest.mark.parametrize(("prompt", "messages", "problem"), [
    ("   ", None, "empty"),
    (None, None, "exactly one of"),
    ("hi", [{"role": "user", "content": "hi"}], "exactly one of"),
    (None, [{"content": "no role"}], "role"),
    ([], None, "non-empty"),
])
def test_bad_prompts_are_rejected_with_the_reason(prompt, messages, problem):
    with pytest.raises(ConfigError, match=problem):
        normalise_prompt(prompt, messages)


def test_content_key_is_stable_and_sensitive():
    spec = SamplingSpec(max_tokens=4)
    key = content_key("m", "tokens", np.array([1, 2, 3]), spec)
    assert key == content_key("m", "tokens", [1, 2, 3], spec)
    assert key != content_key("m", "tokens", [1, 2, 4], spec)
    assert key != content_key("m", "tokens", [1, 2, 3], SamplingSpec(max_tokens=5))
    assert key != content_key("other", "tokens", [1, 2, 3], spec)
