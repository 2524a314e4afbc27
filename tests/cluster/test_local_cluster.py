"""The local cluster (local_cluster/) against cluster.yaml (issue #14). What runs on it
(placement, scaling, node loss, training) is tests/cluster/test_cluster_operations.py, one
cluster start for all of it."""

from __future__ import annotations

import copy

import pytest
import yaml

from local_cluster.cluster import (
    CLUSTER_YAML,
    CPU_SCALE,
    LABEL_NODE_TYPE,
    LocalCluster,
    load_node_types,
    local_node_types,
    scale_serve_config,
)
from tests.harness import ROOT

# What AWS has in these instance types (vCPUs, GPUs): cluster.yaml states them as resources.
INSTANCE_TYPES = {"c6i.2xlarge": (8, 0), "g5.xlarge": (4, 1)}


def test_cluster_yaml_states_what_its_instance_types_have():
    head_name, types = load_node_types()
    assert types[head_name]["resources"] == {"CPU": 0}
    for name, spec in types.items():
        if name == head_name:
            continue
        cpus, gpus = INSTANCE_TYPES[spec["node_config"]["InstanceType"]]
        assert spec["resources"].get("CPU") == cpus, name
        assert spec["resources"].get("GPU", 0) == gpus, name


def test_local_node_types_are_cluster_yamls_scaled():
    head_name, types = load_node_types()
    head, workers = local_node_types()
    assert head == {"CPU": 0}
    assert set(workers) == set(types) - {head_name}
    for name, local in workers.items():
        declared = types[name]
        assert local["min_workers"] == declared["min_workers"], name
        assert local["max_workers"] == declared["max_workers"], name
        resources = dict(local["resources"])
        resources.pop("object_store_memory")
        assert resources["CPU"] == declared["resources"]["CPU"] * CPU_SCALE, name
        assert resources.get("GPU") == declared["resources"].get("GPU"), name
        assert set(resources) == set(declared["resources"]), name
    assert workers["gpu-workers"]["resources"]["GPU"] == 1
    assert "GPU" not in workers["cpu-workers"]["resources"]


def test_autoscaler_config_carries_cluster_yamls_types(tmp_path):
    cluster = LocalCluster(max_workers={"gpu-workers": 2}, idle_timeout_minutes=0.2)
    config = cluster.config
    assert config["provider"]["type"] == "external"
    assert config["provider"]["module"] == "local_cluster.provider.LocalNodeProvider"
    assert config["provider"]["gcs_address"] == cluster.address
    assert config["idle_timeout_minutes"] == 0.2
    assert config["available_node_types"]["gpu-workers"]["max_workers"] == 2
    assert config["available_node_types"]["cpu-workers"]["max_workers"] == 4
    # Ray's own validator accepts what the head's autoscaler will run with.
    from ray.autoscaler._private.util import validate_config

    validate_config(config)  # (prepare_config would read the example.yaml the wheel lacks)


def test_helper_refuses_a_type_without_stated_resources(tmp_path):
    """cluster.yaml's old `resources: {}` (AWS detects them) gives the helper nothing to map."""
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["available_node_types"]["gpu-workers"]["resources"] = {}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="gpu-workers"):
        local_node_types(path)


def test_helper_refuses_a_cap_above_cluster_yaml():
    _, types = load_node_types()
    above = types["gpu-workers"]["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        local_node_types(max_workers={"gpu-workers": above})


def test_helper_refuses_cpus_that_do_not_scale_to_whole_numbers(tmp_path):
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["available_node_types"]["cpu-workers"]["resources"] = {"CPU": 6}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="whole number"):
        local_node_types(path)


def test_serve_config_scaling_keeps_gpus_and_scales_cpus():
    config = yaml.safe_load((ROOT / "config.gpu.yaml").read_text())
    scaled = scale_serve_config(config)
    assert scaled["proxy_location"] == "HeadOnly"
    before = {d["name"]: d["ray_actor_options"] for d in config["applications"][0]["deployments"]}
    after = {d["name"]: d["ray_actor_options"] for d in scaled["applications"][0]["deployments"]}
    for name, options in before.items():
        assert after[name]["num_cpus"] == options["num_cpus"] * CPU_SCALE
        assert after[name].get("num_gpus") == options.get("num_gpus")
    assert config == yaml.safe_load((ROOT / "config.gpu.yaml").read_text())  # not mutated
    assert copy.deepcopy(scaled) == scale_serve_config(config)


def test_helper_refuses_a_type_without_its_node_type_label(tmp_path):
    """On a cluster the Ingress selects cpu-workers by label: a type cluster.yaml does not label
    would take no Ingress anywhere, silently."""
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    del config["available_node_types"]["cpu-workers"]["labels"]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=LABEL_NODE_TYPE):
        local_node_types(path)


def test_cluster_ingress_selects_the_label_cluster_yaml_and_the_rayservice_give_cpu_workers():
    """The lost-ingress-node scenario placed the Ingress's replacement on a gpu-workers node
    (it asked only for num_cpus); on a cluster it now selects cpu-workers (the RayService and
    the local cluster; config.gpu.yaml also serves one GPU machine, which has no such label)."""
    types = yaml.safe_load(CLUSTER_YAML.read_text())["available_node_types"]
    assert types["cpu-workers"]["labels"] == {LABEL_NODE_TYPE: "cpu-workers"}
    assert types["gpu-workers"]["labels"] == {LABEL_NODE_TYPE: "gpu-workers"}
    local = scale_serve_config(yaml.safe_load((ROOT / "config.gpu.yaml").read_text()))
    ingress = next(d for d in local["applications"][0]["deployments"] if d["name"] == "Ingress")
    assert ingress["ray_actor_options"]["label_selector"] == {LABEL_NODE_TYPE: "cpu-workers"}
    service = yaml.safe_load((ROOT / "kuberay" / "rayservice.yaml").read_text())["spec"]
    app = yaml.safe_load(service["serveConfigV2"])["applications"][0]
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    assert ingress["ray_actor_options"]["label_selector"] == {LABEL_NODE_TYPE: "cpu-workers"}
    groups = {g["groupName"]: g for g in service["rayClusterConfig"]["workerGroupSpecs"]}
    for name in ("cpu-workers", "gpu-workers"):
        assert groups[name]["labels"] == {LABEL_NODE_TYPE: name}
