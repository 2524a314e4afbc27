"""Every shipped Serve config can place the replica counts it documents on the machines the docs
name (tests/placement.py): the 2-core box of `make demo` (config.yaml), one GPU machine
(config.gpu.yaml), and the cluster's application (the RayService's serveConfigV2, which `ray up`
deploys too) on cluster.yaml's node types and on the RayService's worker groups.

The old config.yaml failed here as it failed a user: Ingress 0.5 + model 1.0 CPU left 0.5 on two
cores, so the second model replica and a rollout's candidate (1.0 each) waited forever."""

from __future__ import annotations

import pytest
import yaml

from tests.harness import ROOT, deployment
from tests.placement import NodeType, place, scenarios

INGRESS_LABEL = {"face-attributes/node-type": "cpu-workers"}
# The machines the docs name. A 2-core box: README (`make demo`); one GPU machine: the smallest
# GPU node the docs use (cluster.yaml's g5.xlarge: 4 vCPUs, one GPU).
TWO_CORE_BOX = [NodeType("2-core machine", {"CPU": 2.0}, 1)]
GPU_MACHINE = [NodeType("GPU machine", {"CPU": 4.0, "GPU": 1.0}, 1)]


def app_of(config: dict) -> dict:
    return config["applications"][0]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def cluster_yaml_nodes() -> list[NodeType]:
    cluster = load("cluster.yaml")
    return [
        NodeType(
            name,
            {k: float(v) for k, v in spec.get("resources", {}).items()},
            1 if name == cluster["head_node_type"] else spec.get("max_workers", 0),
            spec.get("labels") or {},
        )
        for name, spec in cluster["available_node_types"].items()
    ]


def rayservice() -> dict:
    return load("kuberay/rayservice.yaml")


def rayservice_nodes() -> list[NodeType]:
    """The head and worker groups as Ray sees them: CPUs from num-cpus or the container's CPU
    limit, GPUs from its nvidia.com/gpu limit, the group's labels, up to maxReplicas."""
    cluster = rayservice()["spec"]["rayClusterConfig"]

    def node(name: str, group: dict, count: int) -> NodeType:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        params = group.get("rayStartParams") or {}
        cpus = float(params.get("num-cpus", limits.get("cpu", 0)))
        resources = {"CPU": cpus, "GPU": float(limits.get("nvidia.com/gpu", 0))}
        return NodeType(name, resources, count, group.get("labels") or {})

    head = node("head", cluster["headGroupSpec"], 1)
    groups = [node(g["groupName"], g, g["maxReplicas"]) for g in cluster["workerGroupSpecs"]]
    return [head, *groups]


CASES = {
    "config.yaml on the 2-core box": (lambda: load("config.yaml"), TWO_CORE_BOX),
    "config.gpu.yaml on one GPU machine": (lambda: load("config.gpu.yaml"), GPU_MACHINE),
    # `ray up cluster.yaml` serves the cluster's application: the RayService's (docs/deploy.md).
    "the cluster's application on cluster.yaml's node types": (
        lambda: yaml.safe_load(rayservice()["spec"]["serveConfigV2"]),
        cluster_yaml_nodes(),
    ),
    "the RayService": (
        lambda: yaml.safe_load(rayservice()["spec"]["serveConfigV2"]),
        rayservice_nodes(),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_shipped_config_places_its_documented_replicas(case):
    make_config, nodes = CASES[case]
    unplaced = {
        name: [r.deployment for r in replicas]
        for name, replicas in scenarios(app_of(make_config())).items()
        if place(replicas, nodes) is None
    }
    assert unplaced == {}, f"{case}: these replica sets cannot be placed: {unplaced}"


@pytest.mark.parametrize("name", ["config.yaml", "config.gpu.yaml"])
def test_every_deployment_states_its_resources(name):
    """Serve's default is a whole CPU per replica: a config that leaves num_cpus out asks for
    more than its author may think (and the placement above would not see it)."""
    for entry in app_of(load(name))["deployments"]:
        assert "num_cpus" in (entry.get("ray_actor_options") or {}), entry["name"]


def test_the_check_fails_where_ray_could_not_place():
    """The config this round started from: its second model replica could not be placed on
    two cores (Ingress 0.5 + 2 x 1.0 CPU)."""
    config = load("config.yaml")
    for name in ("FaceAttributeModel", "CandidateModel"):
        deployment(app_of(config), name)["ray_actor_options"]["num_cpus"] = 1
    deployment(app_of(config), "Ingress")["ray_actor_options"]["num_cpus"] = 0.5
    unplaced = [
        name
        for name, replicas in scenarios(app_of(config)).items()
        if place(replicas, TWO_CORE_BOX) is None
    ]
    # 0.5 + 1 + 1 CPU: neither the rollout's candidate nor the second model replica fits.
    assert "minimum + a candidate" in unplaced
    assert "FaceAttributeModel at its maximum + a candidate" in unplaced
