"""Reading ``ray://`` addresses and naming a Ray node's GPUs (node tables as Ray's ``ray.nodes()`` gives them)."""

import pytest

from samullm_lc.errors import ConfigError
from samullm_lc.runtime.backends.ray_nodes import gpu_hardware_name, parse_address


def _node(accelerator: str | None, gpus: int = 8) -> dict:
    resources = {"GPU": float(gpus), "CPU": 64.0}
    if accelerator:
        resources[f"accelerator_type:{accelerator}"] = 1.0
    return {"NodeID": "ab" * 28, "Alive": True, "Resources": resources}


@pytest.mark.parametrize(("devices", "expected"), [
    ("ray://auto", ("auto", None)),
    ("ray://", ("auto", None)),
    ("ray://10.0.0.1:6379", ("10.0.0.1:6379", None)),
    ("ray://auto?hardware=A100-80GB", ("auto", "A100-80GB")),
])
def test_an_address_gives_ray_its_address_and_the_hardware_if_named(devices, expected):
    assert parse_address(devices) == expected


def test_gpus_are_named_by_ray_when_one_catalogue_entry_matches_else_the_user_is_asked():
    assert gpu_hardware_name([_node("L40S")], None) == "L40S"
    assert gpu_hardware_name([_node("A100")], "a100-80gb") == "A100-80GB"
    with pytest.raises(ConfigError, match=r"ray://auto\?hardware="):
        gpu_hardware_name([_node("A100")], None)  # 40 GB or 80 GB: Ray does not say
    with pytest.raises(ConfigError, match="unknown"):
        gpu_hardware_name([_node(None)], None)
    with pytest.raises(ConfigError, match="unknown hardware"):
        gpu_hardware_name([_node("L40S")], "B9000")
