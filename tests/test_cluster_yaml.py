"""cluster.yaml passes Ray's own cluster-launcher schema validation."""
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in types.values())


def test_validation_rejects_a_broken_config():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["head_node_type"] = "nosuch"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(raw))


def test_cluster_yaml_keeps_auth_on_and_dashboard_private():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head = " ".join(raw["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token ray start" in " ".join(raw["worker_start_ray_commands"])
