"""cluster.yaml is a real AWS autoscaler config that Ray's own schema validation accepts."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

GPU = ("g5", "p4")  # A10G / A100 instance families
CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_ray_validation(raw: dict) -> None:
    # What `ray up` does before touching AWS: fill defaults, merge commands, check the schema.
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_types = [t for t, v in types.items() if v["node_config"]["InstanceType"][:2] in GPU]
    assert gpu_types, "needs a GPU worker type"
    for t in gpu_types:
        assert 0 <= types[t]["min_workers"] <= types[t]["max_workers"] <= cfg["max_workers"]
    # the project is shipped to every node and installed there from the lock, Ray run from it
    assert "~/speakertune" in cfg["file_mounts"]
    for key in ("worker_setup_commands", "head_setup_commands"):
        assert any("make venv" in c for c in cfg[key]), key
        assert not any("pip install" in c for c in cfg[key]), f"{key}: a resolve on the node"
    for key in ("worker_start_ray_commands", "head_start_ray_commands"):
        assert all("ray " not in c or ".venv/bin/ray" in c for c in cfg[key]), key
    images = {t["node_config"].get("ImageId") for t in types.values()}
    assert len(images) == 1 and "nvidia-driver" in images.pop()  # one named image everywhere
    assert any("--dashboard-host=0.0.0.0" in c for c in cfg["head_start_ray_commands"])


def test_validation_rejects_a_broken_config(raw: dict) -> None:
    # The check above is only worth something if the schema bites: a misspelt key must fail.
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu_g5"]["min_wrkers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wrkers"):
        validate_config(prepare_config(bad))
