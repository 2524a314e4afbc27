"""Deployment manifests, validated offline: KubeRay CRD schemas (strict), the operator's own
rules, Ray's cluster-launcher validator, and no drift from config.yaml or the training CLI."""

from __future__ import annotations

import copy
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from tests.config_diff import (
    KUBERAY_HTTP_OVERRIDES,
    KUBERAY_OVERRIDES,
    differing_keys,
    serve_env,
)
from tests.harness import ROOT, deployment
from tests.required import require

pytestmark = pytest.mark.deploy

CRD_DIR = Path(os.environ.get("KUBERAY_CRDS_DIR", ROOT.parent / "shared" / "kuberay-crds"))
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml"}
MANIFESTS = {"RayService": "kuberay/rayservice.yaml", "RayJob": "kuberay/rayjob.yaml"}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}


def strict(schema: dict) -> dict:
    """Reject unknown fields wherever an object lists its properties and does not say it keeps
    unknown ones (the API server prunes them silently: a typo would be lost, not rejected)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def missing_crds() -> str | None:
    """None when every CRD file is there, else what is missing and where to get it."""
    if all((CRD_DIR / name).is_file() for name in CRD_FILES.values()):
        return None
    return (
        f"KubeRay CRDs {sorted(CRD_FILES.values())} not found in {CRD_DIR} (every checkout has "
        "them at ../shared/kuberay-crds; elsewhere set KUBERAY_CRDS_DIR)"
    )


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict]:
    require("crds", missing_crds())
    out = {}
    for kind, name in CRD_FILES.items():
        crd = yaml.load(
            (CRD_DIR / name).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
        v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        out[kind] = strict(v1["schema"]["openAPIV3Schema"])
    return out


def manifest(kind: str) -> dict:
    return yaml.safe_load((ROOT / MANIFESTS[kind]).read_text())


def cluster_spec(doc: dict) -> dict:
    return (
        doc["spec"]["rayClusterConfig"]
        if doc["kind"] == "RayService"
        else doc["spec"]["rayClusterSpec"]
    )


def operator_rule_violations(doc: dict) -> list[str]:
    """What KubeRay's webhook/controller rejects but the schema does not say."""
    problems = []
    name = doc["metadata"]["name"]
    if not DNS_1035.match(name) or len(name) > 47:
        problems.append(f"metadata.name {name!r} must be DNS-1035 and at most 47 characters")
    spec = cluster_spec(doc)
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for group in groups:
        for key, value in group.get("rayStartParams", {}).items():
            if not isinstance(value, str):
                problems.append(f"rayStartParams.{key} must be a string, got {value!r}")
    for group in spec.get("workerGroupSpecs", []):
        gname = group["groupName"]
        if not DNS_1035.match(gname):
            problems.append(f"groupName {gname!r} must be DNS-1035")
        lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31)
        if not lo <= group.get("replicas", lo) <= hi:
            problems.append(f"{gname}: need minReplicas <= replicas <= maxReplicas")
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            res = container.get("resources", {})
            if res.get("requests") != res.get("limits"):
                problems.append(f"{container['name']}: resource requests must equal limits")
    if doc["kind"] == "RayService":
        strategy = doc["spec"].get("upgradeStrategy", {}).get("type")
        if strategy not in UPGRADE_TYPES:
            problems.append(f"upgradeStrategy.type {strategy!r} not in {sorted(UPGRADE_TYPES)}")
    return problems


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_manifest_validates_against_crd(schemas, kind):
    doc = manifest(kind)
    assert doc["kind"] == kind and doc["apiVersion"] == "ray.io/v1"
    jsonschema.Draft7Validator(schemas[kind]).validate(doc)
    assert operator_rule_violations(doc) == []


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        ("RayService", lambda d: d["spec"].update(serveConfgV2="typo"), "serveConfgV2"),
        (
            "RayJob",
            lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].update(rayStartParam={}),
            "rayStartParam",
        ),
        (
            "RayService",
            lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(minReplica=1),
            "minReplica",
        ),
    ],
)
def test_a_typo_is_caught(schemas, kind, mutate, expected):
    doc = manifest(kind)
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError, match=expected):
        jsonschema.Draft7Validator(schemas[kind]).validate(doc)


def test_operator_rules_are_enforced():
    doc = manifest("RayService")
    doc["metadata"]["name"] = "Face_Attributes-" + "x" * 40
    doc["spec"]["upgradeStrategy"]["type"] = "Rolling"
    spec = doc["spec"]["rayClusterConfig"]
    spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    spec["workerGroupSpecs"][0]["minReplicas"] = 9
    spec["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "memory"
    ] = "1Gi"
    problems = "\n".join(operator_rule_violations(doc))
    for fragment in (
        "DNS-1035",
        "upgradeStrategy",
        "rayStartParams.num-cpus",
        "minReplicas",
        "requests must equal limits",
    ):
        assert fragment in problems


def test_rayservice_serves_the_same_app_as_config_yaml():
    serve_config = yaml.safe_load(manifest("RayService")["spec"]["serveConfigV2"])
    local = yaml.safe_load((ROOT / "config.yaml").read_text())
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)
    (app,) = serve_config["applications"]
    assert differing_keys(local["applications"][0], app) == KUBERAY_OVERRIDES
    http_diff = {
        k
        for k in local["http_options"]
        if local["http_options"][k] != serve_config["http_options"].get(k)
    }
    assert http_diff == KUBERAY_HTTP_OVERRIDES
    assert {k: v for k, v in local.items() if k not in ("applications", "http_options")} == {
        k: v for k, v in serve_config.items() if k not in ("applications", "http_options")
    }
    # the import path imports, and its deployments are exactly the app's (Serve's own builder)
    from ray.serve._private.build_app import build_app as serve_build

    from serve_app.app import build_app
    from serve_app.config import AppArgs

    assert app["import_path"] == "serve_app.app:build_app"
    graph = build_app(AppArgs.model_validate(app["args"]))
    built = serve_build(graph, name=app["name"], default_runtime_env={})
    assert {d.name for d in built.deployments} == {d["name"] for d in app["deployments"]}


def test_rayjob_entrypoint_parses_with_the_training_cli():
    from train_job.config import build_parser, config_from_args

    job = manifest("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "train_job"]
    parser = build_parser()
    cfg = config_from_args(parser, parser.parse_args(argv[3:]))
    assert cfg.use_gpu and cfg.num_workers == 2
    service_app = yaml.safe_load(manifest("RayService")["spec"]["serveConfigV2"])["applications"][0]
    service_uri = deployment(service_app, "FaceAttributeModel")["user_config"]["model_uri"]
    assert (
        service_uri == f"{cfg.model_store}/{cfg.model_name}/latest"
    )  # the store the service reads
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus = int(
        workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert workers["replicas"] * gpus >= cfg.num_workers
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]


def test_cluster_yaml_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu-workers"]["min_workers"] == 0 and types["gpu-workers"]["max_workers"] > 0

    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu-workers"]["min_worker"] = 0  # typo
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


def test_ray_version_is_the_same_everywhere():
    version = ray.__version__
    texts = {
        p: (ROOT / p).read_text()
        for p in ("Dockerfile", "cluster.yaml", *MANIFESTS.values(), "pyproject.toml")
    }
    assert f"ARG RAY_VERSION={version}" in texts["Dockerfile"]
    assert f'"ray[serve,train]=={version}"' in texts["pyproject.toml"]
    tags = {
        m
        for text in texts.values()
        for m in re.findall(r"rayproject/ray:([0-9][0-9.]*[0-9])", text)
    }
    assert tags == {version}
    for kind in MANIFESTS:
        assert cluster_spec(manifest(kind))["rayVersion"] == version


def test_dockerfile_runs_as_non_root_without_secrets():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER ray$", text, re.M)
    instructions = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    )
    assert not re.search(r"(?i)(password|secret|aws_access|_key=)", instructions)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-", text, re.M)


def test_serve_env_is_the_same_everywhere():
    """serve.env's values reach every place Ray starts: image, cluster launcher, RayService."""
    env = serve_env()
    assert env, "serve.env is empty"
    dockerfile = (ROOT / "Dockerfile").read_text()
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    makefile = (ROOT / "Makefile").read_text()
    assert "env $(SERVE_ENV) $(BIN)/serve run $(CONFIG)" in makefile
    assert re.search(r"^CONFIG \?= config\.yaml$", makefile, re.M)
    for name, value in env.items():
        assert re.search(rf"^ENV .*\b{name}={value}\b", dockerfile, re.M), name
        assert f"--env {name}={value}" in cluster["docker"]["run_options"], name
    service = manifest("RayService")
    spec = cluster_spec(service)
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            found = {e["name"]: e["value"] for e in container.get("env", [])}
            assert {k: found.get(k) for k in env} == env, container["name"]


def test_the_rayservice_needs_api_keys_from_a_mounted_secret():
    """Keys on in the cluster (off on loopback in config.yaml): args.api_keys_file names a file
    of the Secret face-attributes-api-keys, mounted read-only where an Ingress can run."""
    import posixpath

    service = manifest("RayService")
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    path = app["args"]["api_keys_file"]
    cluster = cluster_spec(service)
    ingress_groups = [cluster["headGroupSpec"]] + [
        g for g in cluster["workerGroupSpecs"]
        if g.get("labels", {}).get("face-attributes/node-type") == "cpu-workers"
    ]  # fmt: skip
    for group in ingress_groups:
        pod = group["template"]["spec"]
        secret = next(v for v in pod["volumes"] if v.get("secret"))
        assert secret["secret"]["secretName"] == "face-attributes-api-keys"
        mount = next(
            m for c in pod["containers"] for m in c["volumeMounts"] if m["name"] == secret["name"]
        )
        assert mount["mountPath"] == posixpath.dirname(path) and mount["readOnly"]
    local = yaml.safe_load((ROOT / "config.yaml").read_text())["applications"][0]
    assert "api_keys_file" not in local["args"]  # off on loopback
