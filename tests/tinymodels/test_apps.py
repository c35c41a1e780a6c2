"""The tiny demo app: its size is bounded like every size a user gives."""

import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.tinymodels.apps import tiny_demo_app


def test_the_demo_app_refuses_more_questions_than_its_limit_before_building_them():
    with pytest.raises(ConfigError, match="questions in the demo app: 1,000,000,000 is over the limit of 10,000"):
        tiny_demo_app(10**9)
    assert sum(node.num_requests for node in tiny_demo_app(3).nodes) == 9
