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


@pytest.mark.parametrize("text", ["8xA100-80GB (nvswitch)", "2x8xA100-80GB (nvswitch)", "2xcpu", "2xcpu (pcie)",
                                  "4xA100-80GB (pcie) less lost devices [2, 3]"])
def test_the_text_of_a_cluster_reads_back_as_that_cluster(text):
    cluster = Cluster.from_text(text)
    assert str(cluster) == text.replace("cpu (pcie)", "cpu")  # older texts named a topology for CPU cores too
    assert Cluster.from_text(str(cluster)) == cluster


def test_text_that_is_no_cluster_is_refused():
    with pytest.raises(ConfigError, match="not a cluster as samullm_lc writes it"):
        Cluster.from_text("actual run")
