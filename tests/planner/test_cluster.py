"""Cluster: a spec that is not a cluster is a ConfigError naming it (never pydantic's ValidationError)."""

import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.planner.cluster import Cluster


@pytest.mark.parametrize(("spec", "expected"), [
    ("0xA100-80GB", "cluster '0xA100-80GB': devices in a cluster must be at least 1, got 0"),
    ("2000xA100-80GB", "devices in a cluster: 2,000 is over the limit of 1,024; planning time grows"),
    ("99999999999999999999xcpu", "over the limit of 1,024"),
    ("8xB9000", "unknown hardware 'B9000'"),
    ("eight", "is not COUNTxHARDWARE"),
])
def test_a_bad_spec_is_a_config_error_naming_it(spec, expected):
    with pytest.raises(ConfigError, match=expected):
        Cluster.parse(spec)


def test_direct_construction_and_json_validate_through_config_error():
    with pytest.raises(ConfigError, match="devices in a cluster must be at least 1"):
        Cluster(hardware="A100-80GB", num_gpus=0)
    with pytest.raises(ConfigError, match="invalid Cluster: topology"):
        Cluster(hardware="A100-80GB", num_gpus=2, topology="torus")
    with pytest.raises(ConfigError, match="invalid Cluster: num_gpus"):
        Cluster.model_validate_json('{"hardware": "A100-80GB", "num_gpus": "many"}')
    assert Cluster.parse("1024xA100-80GB").num_gpus == 1024
