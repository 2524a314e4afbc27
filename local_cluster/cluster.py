"""cluster.yaml's node types as a local autoscaling Ray cluster (Ray's fake multi-node provider).

How a cluster.yaml node type maps to a local node (one source of truth: cluster.yaml's
``available_node_types``; tests/cluster/test_local_cluster.py fails where the two disagree):

- ``resources``: ``CPU`` is multiplied by ``CPU_SCALE`` (1/4: one c6i.2xlarge, 8 vCPUs, is 2
  logical CPUs here, this box's 2 cores; a g5.xlarge, 4 vCPUs, is 1). A node's quantities must
  be whole numbers (Ray's node launcher refuses ``CPU: 0.5``), so a type whose scaled CPU is
  not whole is an error, not rounded. Every other resource (``GPU``, custom ones)
  is kept as declared: a ``gpu-workers`` node has ``GPU: 1`` exactly as on AWS, so placement by
  GPU is the real one. Worker types must declare their resources explicitly in cluster.yaml
  (the AWS provider could detect them from the instance type; this provider cannot, so
  cluster.yaml states them and both read the same numbers).
- ``min_workers`` / ``max_workers``: as declared. A test may lower ``max_workers`` (never raise
  it) to bound what it starts on a 2-core box.
- The head keeps ``CPU: 0`` (nothing scheduled there), as in cluster.yaml.
- Not in cluster.yaml, added locally: each node's object store is ``OBJECT_STORE_BYTES`` (every
  fake node shares this machine's /dev/shm; Ray's default, 30% of memory per node, would
  oversubscribe it).
- ``labels``: as declared; cluster.yaml must label each worker type with its own name under
  ``LABEL_NODE_TYPE`` (an error otherwise): the Ingress selects cpu-workers nodes by it
  (``scale_serve_config``, as kuberay/rayservice.yaml does), and tests read placement from Ray's state API by it. The head is labelled here.

A Serve config sized for the real nodes fits the local ones once its actors' ``num_cpus`` are
scaled by the same factor: ``scale_serve_config``. The fast path (serve.env: HAProxy, direct
ingress) runs as the project ships it; every fake node shares one IP and one set of ports, so
Serve's proxy runs on the head only (``proxy_location: HeadOnly``) instead of ``EveryNode``.

Ray's ``AutoscalingCluster`` reads a provider config, ``fake_multi_node/example.yaml``, that
the Ray 2.60 wheel does not ship, and its ``start``/``shutdown`` run ``ray stop --force``, which
would stop every Ray instance on the machine (other users' included). ``LocalCluster`` builds
the provider config itself (with ``LocalNodeProvider``, Ray's fake provider plus what a cloud
does with a lost machine: local_cluster/provider.py) and starts and stops only its own processes: its head runs on a
free GCS port with its own temp dir, and shutdown ends exactly the processes whose command
line names that temp dir (every node of this cluster uses the head's temp dir).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

# Ray 2.60 turns token auth on by default and reads RAY_AUTH_MODE when imported: set it before
# the first `import ray`, so this process's ray.init() and CLI calls reach the cluster.
os.environ.setdefault("RAY_AUTH_MODE", "token")

from ray.cluster_utils import AutoscalingCluster

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"

CPU_SCALE = 1 / 4
OBJECT_STORE_BYTES = 256 * 1024**2
HEAD_TYPE = "ray.head.default"  # the fake provider's fixed name for the head's type
# cluster.yaml labels every worker type with its name under this key (the cluster Ingress
# selects cpu-workers by it); the head, which cluster.yaml does not label, gets it here.
LABEL_NODE_TYPE = "face-attributes/node-type"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_node_types(cluster_yaml: Path = CLUSTER_YAML) -> tuple[str, dict[str, dict]]:
    """cluster.yaml -> (head type name, {type name: node type as declared})."""
    config = yaml.safe_load(Path(cluster_yaml).read_text())
    return config["head_node_type"], config["available_node_types"]


def scale_resources(resources: dict[str, float]) -> dict[str, float]:
    """A cluster.yaml node type's resources -> the local node's (CPU x CPU_SCALE, rest as is)."""
    scaled = dict(resources)
    if "CPU" in scaled:
        cpus = scaled["CPU"] * CPU_SCALE
        if cpus != int(cpus):
            raise ValueError(f"CPU {scaled['CPU']} x {CPU_SCALE} is not a whole number of CPUs")
        scaled["CPU"] = int(cpus)
    return scaled


def local_node_types(
    cluster_yaml: Path = CLUSTER_YAML, max_workers: dict[str, int] | None = None
) -> tuple[dict[str, float], dict[str, dict]]:
    """(head resources, worker node types for the fake provider), mapped as the module says.

    max_workers: per type, a lower bound than cluster.yaml's for a test (never higher)."""
    head_name, types = load_node_types(cluster_yaml)
    head = scale_resources(types[head_name].get("resources", {}))
    workers: dict[str, dict] = {}
    for name, spec in types.items():
        if name == head_name:
            continue
        declared = spec.get("resources") or {}
        if "CPU" not in declared:
            raise ValueError(
                f"cluster.yaml's node type {name!r} declares no CPU in resources: the local "
                "cluster takes sizes from cluster.yaml only (no instance-type detection)"
            )
        cap = spec.get("max_workers", 0)
        if max_workers and name in max_workers:
            if max_workers[name] > cap:
                raise ValueError(f"{name}: max_workers {max_workers[name]} > cluster.yaml's {cap}")
            cap = max_workers[name]
        labels = spec.get("labels") or {}
        if labels.get(LABEL_NODE_TYPE) != name:
            raise ValueError(
                f"cluster.yaml's node type {name!r} must be labelled {LABEL_NODE_TYPE}: {name} "
                "(label_selectors in config.gpu.yaml place replicas by it)"
            )
        workers[name] = {
            "resources": {
                **scale_resources(declared),
                "object_store_memory": OBJECT_STORE_BYTES,
            },
            "labels": dict(labels),
            "min_workers": min(spec.get("min_workers", 0), cap),
            "max_workers": cap,
            "node_config": {},
        }
    return head, workers


# Where each deployment must run on a cluster of cluster.yaml's types, as the RayService says it
# (kuberay/rayservice.yaml): config.gpu.yaml also serves one GPU machine, whose node carries no
# such label, so it cannot say it itself.
INGRESS_NODE_SELECTOR = {LABEL_NODE_TYPE: "cpu-workers"}


def cluster_app_config(model_uri: str, detector_uri: str | None = None) -> dict:
    """The cluster's Serve application (the RayService's serveConfigV2: one GPU per model
    replica, the Ingress on cpu-workers nodes) for this machine's local cluster: on loopback,
    with these artifacts, and no API keys (the RayService reads them from a Kubernetes Secret)."""
    service = yaml.safe_load((ROOT / "kuberay" / "rayservice.yaml").read_text())
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    config["http_options"]["host"] = "127.0.0.1"
    app = config["applications"][0]
    app["args"].pop("api_keys_file", None)
    for deployment in app["deployments"]:
        if deployment["name"] == "FaceAttributeModel":
            deployment["user_config"]["model_uri"] = model_uri
        if deployment["name"] == "FaceDetector" and detector_uri:
            deployment["user_config"]["model_uri"] = detector_uri
    return scale_serve_config(config)


def scale_serve_config(config: dict) -> dict:
    """A Serve config for cluster.yaml's nodes -> the same for the local nodes: every actor's
    num_cpus x CPU_SCALE (num_gpus unchanged), the proxy on the head only (one IP here), and
    the Ingress kept on cpu-workers nodes (INGRESS_NODE_SELECTOR)."""
    config = copy.deepcopy(config)
    config["proxy_location"] = "HeadOnly"
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            options = deployment.setdefault("ray_actor_options", {})
            if "num_cpus" in options:
                options["num_cpus"] = round(options["num_cpus"] * CPU_SCALE, 4)
            if deployment["name"] == "Ingress":
                options["label_selector"] = dict(INGRESS_NODE_SELECTOR)
    return config


PROVIDER_MODULE = "local_cluster.provider.LocalNodeProvider"


def provider_config(gcs_address: str) -> dict:
    """What fake_multi_node/example.yaml holds in Ray's source tree (absent from the wheel), with
    Ray's fake provider swapped for LocalNodeProvider (a lost node is reported terminated, as a
    cloud provider does: see local_cluster/provider.py)."""
    return {
        "type": "external",
        "module": PROVIDER_MODULE,
        "gcs_address": gcs_address,  # the provider's default is <this machine's IP>:6379
        "use_node_id_as_ip": True,  # node ids stand in for IPs: all nodes share one
        "disable_node_updaters": True,  # nothing to ssh into
        "disable_launch_config_check": True,
    }


class LocalCluster(AutoscalingCluster):
    """A head (CPU 0) and autoscaled workers of cluster.yaml's types, on this machine.

    Usage: ``with LocalCluster() as cluster: ray.init(cluster.address)``."""

    def __init__(
        self,
        cluster_yaml: Path = CLUSTER_YAML,
        max_workers: dict[str, int] | None = None,
        idle_timeout_minutes: float | None = None,
    ):
        head, workers = local_node_types(cluster_yaml, max_workers)
        self.cluster_yaml = Path(cluster_yaml)
        self.idle_timeout_minutes = idle_timeout_minutes
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.temp_dir = ""
        super().__init__(head_resources=head, worker_node_types=workers)

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **_):
        source = yaml.safe_load(self.cluster_yaml.read_text())
        idle = self.idle_timeout_minutes
        return {
            "cluster_name": "local-" + source["cluster_name"],
            "max_workers": source["max_workers"],
            "upscaling_speed": source.get("upscaling_speed", 1.0),
            "idle_timeout_minutes": source["idle_timeout_minutes"] if idle is None else idle,
            "provider": provider_config(self.address),
            "auth": {"ssh_user": "ubuntu"},
            "available_node_types": {
                **copy.deepcopy(worker_node_types),
                HEAD_TYPE: {
                    "resources": dict(head_resources),
                    "labels": {LABEL_NODE_TYPE: HEAD_TYPE},
                    "node_config": {},
                    "max_workers": 0,
                },
            },
            "head_node_type": HEAD_TYPE,
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }

    @property
    def config(self) -> dict:
        """The autoscaling config the head's autoscaler runs with."""
        return copy.deepcopy(self._config)

    def start(self, _system_config: dict | None = None, override_env: dict | None = None):
        """Start the head; the autoscaler then starts min_workers of each type. Stops nothing."""
        # Short: Unix socket paths under it must stay below 108 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="rlc-", dir="/tmp")
        config_path = os.path.join(self.temp_dir, "autoscaling.json")
        Path(config_path).write_text(json.dumps(self._config))
        head = dict(self._head_resources)
        cmd = [
            os.path.join(os.path.dirname(sys.executable), "ray"),
            "start",
            "--head",
            f"--port={self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--autoscaling-config={config_path}",
            f"--num-cpus={int(head.pop('CPU', 0))}",
            f"--num-gpus={int(head.pop('GPU', 0))}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--labels={json.dumps({LABEL_NODE_TYPE: HEAD_TYPE})}",
            "--disable-usage-stats",
        ]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        if _system_config:
            cmd.append(f"--system-config={json.dumps(_system_config, separators=(',', ':'))}")
        ensure_auth_token()
        env = {
            **os.environ,
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_FAKE_CLUSTER": "1",
            # The monitor process imports LocalNodeProvider from this checkout.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            # Every process of the cluster inherits it. Ray's own actors call the state API
            # without an address (Ray Train's PlacementGroupCleaner does); auto-detection finds
            # this head under two addresses (127.0.0.1 and the box's IP) and raises.
            "RAY_ADDRESS": self.address,
            **(override_env or {}),
        }
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)

    def processes(self) -> list[int]:
        """Pids of this cluster's processes: each names the temp dir on its command line."""
        return pids_naming(self.temp_dir) if self.temp_dir else []

    def shutdown(self, grace_s: float = 5.0, keep_logs: bool = False) -> None:
        """End this cluster's processes (SIGTERM, then SIGKILL after grace_s); nobody else's."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                _signal(pid, sig)
            deadline = time.monotonic() + grace_s
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
        if self.temp_dir and not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def pids_naming(text: str) -> list[int]:
    """Pids (not this one) whose command line contains ``text`` (/proc; no psutil here)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # not up yet
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def ensure_auth_token() -> None:
    """Ray 2.60's token auth: `ray start --head` refuses to start without a token (only
    ray.init makes one), so on a machine that never ran Ray the head would fail. Make the
    token Ray makes for a local cluster (~/.ray/auth_token), as `ray get-auth-token --generate`
    does, when auth is on and there is none."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "disabled":
        return
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run(
        [ray_bin, "get-auth-token", "--generate"],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )
