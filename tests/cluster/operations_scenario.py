"""Placement, scaling, node loss and training across nodes on one local cluster (issue #14
items 2-5).

    python -m tests.cluster.operations_scenario OUT.json [PHASE ...]

Run as a script (its own Ray: a LocalCluster, not the test session's). One cluster start is
shared by the phases, which run in this order (default: all):

- ``placement``: the cluster's application (the RayService's: num_gpus as shipped, device: auto)
  serves a real request;
  where Serve's replicas run, read from Serve's details and checked against Ray's own record
  of each actor, and the model replicas' "device: auto -> cpu" log lines (fake GPU nodes:
  torch sees no CUDA).
- ``scale``: under a closed-loop load the model deployment scales 1 -> 2, the autoscaler adds
  a second gpu-workers node for the new replica; after the load the replica, then the node
  (idle timeout shortened to IDLE_TIMEOUT_MINUTES), go away. A timeline of wall-clock events.
- ``model_node_loss``: with one model replica (max_replicas 1), the raylet of its node and
  every other process of that node are SIGKILLed under a bounded load (a lost machine; see
  kill_node); what clients saw, how long until every answer is a prompt 200 again, where the
  replacement replica landed.
- ``ingress_node_loss``: the same for the node of the only Ingress replica.
- ``cuda_refused``: redeployed with device: cuda, the model deployment must fail, and Serve's
  message must name the (GPU-type) node torch found no CUDA on.
- ``training``: ``python -m train_job`` with 2 workers, STRICT_SPREAD (two different
  cpu-workers nodes, read from Ray's state API), checkpoints under a local directory (every
  fake node is this machine, so a local dir is storage all of them reach: on a real cluster
  it must be a shared file system or a bucket); after the first registered checkpoint, one
  worker's node is lost (as above) mid-epoch; the run resumes from that checkpoint on a
  replacement node, finishes and exports to the model store.
- ``batch``: ``python -m batch_job`` with its two model actors on two ``gpu-workers`` nodes; one
  of them lost mid-run; every input written exactly once (tests/cluster/batch_scenario.py).

Each phase's result (or its error) goes under its name in OUT.json; a failed phase does not
stop the next. Wall-clock times are time.time(); "t" fields are seconds from the phase's
reference event (load start, node kill).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("RAY_AUTH_MODE", "token")  # before `import ray`: Ray reads it on import
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(ROOT))

from tests.config_diff import serve_env  # noqa: E402

# Replica request logs are buffered 1,000 records at a time on the fast path: the scale phase
# reads the new replica's first request from its log while it runs. One record.
os.environ.setdefault("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", "1")
# Serve's fast path (direct ingress) drains a stopping replica for >= 30 s by default: the scale
# phase's replica, and so its node, would stay that long after the downscale decision.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
for _name, _value in serve_env().items():
    _value = str(ROOT / _value) if _value.startswith("serve_app/") else _value
    os.environ.setdefault(_name, _value)

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient  # noqa: E402
from ray.util.state import list_actors, list_nodes  # noqa: E402

from local_cluster.cluster import (  # noqa: E402
    LABEL_NODE_TYPE,
    LocalCluster,
    cluster_app_config,
    free_port,
    pids_naming,
    wait_for,
)
from tests import images  # noqa: E402
from tests.artifacts import write_tiny_artifact  # noqa: E402
from tests.cluster import batch_scenario  # noqa: E402
from tests.load import ClosedLoopLoad, summarise  # noqa: E402
from train_job.face_detector import export as export_detector  # noqa: E402

APP = "face-attributes"
MODEL, INGRESS = "FaceAttributeModel", "Ingress"
PHASES = (
    "placement", "scale", "model_node_loss", "ingress_node_loss", "cuda_refused", "training",
    "batch",
)  # fmt: skip
AUTO_LOG = "device: auto -> cpu"
# cluster.yaml says 10 minutes; a test cannot wait that long for a node to go.
IDLE_TIMEOUT_MINUTES = 0.1
# cpu-workers: ingress node, its replacement, two training nodes and a replacement, minus the
# dead ones the autoscaler has terminated by then; gpu-workers (1 GPU each): the face
# detector's node (0.5 GPU: no model replica fits beside it) and two model replicas, or one
# replica and a lost node's replacement.
MAX_WORKERS = {"cpu-workers": 4, "gpu-workers": 3}
REQUEST_TIMEOUT_S = 10.0  # a client's bound: an answer later than this counts as a hang


def now() -> float:
    return time.time()


# ---------------------------------------------------------------------------------------------
# Reading the cluster: Ray's state API and Serve's details (the dashboard's REST API)


def node_types(alive_only: bool = False) -> dict[str, str]:
    """{node_id: cluster.yaml type} from Ray's state API (the label LocalCluster sets)."""
    return {
        n.node_id: n.labels.get(LABEL_NODE_TYPE, "?")
        for n in list_nodes(detail=True, limit=1000)
        if n.state == "ALIVE" or not alive_only
    }


def node_state(node_id: str) -> str:
    return next((n.state for n in list_nodes(limit=1000) if n.node_id == node_id), "?")


def alive_of_type(node_type: str) -> set[str]:
    return {i for i, t in node_types(alive_only=True).items() if t == node_type}


def replicas(client: ServeSubmissionClient, deployment: str) -> list[dict]:
    """Serve's replica details: [{replica_id, node_id, state, actor_id, ...}]."""
    app = client.get_serve_details()["applications"][APP]
    return app["deployments"][deployment]["replicas"]


def running(client: ServeSubmissionClient, deployment: str) -> list[dict]:
    return [r for r in replicas(client, deployment) if r["state"] == "RUNNING"]


def placement(client: ServeSubmissionClient) -> dict[str, list[dict]]:
    """Serve's replica details, each checked against Ray's own record of the actor."""
    types = node_types()
    actors = {a.actor_id: a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)}
    app = client.get_serve_details()["applications"][APP]
    return {
        name: [
            {
                "node_id": r["node_id"],
                "actor_node_id": actors[r["actor_id"]].node_id if r["actor_id"] in actors else None,
                "node_type": types.get(r["node_id"], "?"),
                "state": r["state"],
            }
            for r in deployment["replicas"]
        ]
        for name, deployment in app["deployments"].items()
    }


def auto_log_lines(temp_dir: str) -> list[str]:
    """Lines of the model replicas' logs that say device: auto fell back to CPU."""
    # session_latest only: it is a link to the session_* dir, which a wider glob would read twice.
    logs = Path(temp_dir).glob(f"session_latest/logs/serve/replica_*{MODEL}*.log")
    return [line for path in logs for line in path.read_text().splitlines() if AUTO_LOG in line]


def raylet_pids(cluster: LocalCluster, node_id: str) -> list[int]:
    """The raylet of this node: its command line names the node id and the cluster's temp dir."""
    mine = set(cluster.processes())
    return [p for p in pids_naming(f"--node_id={node_id}") if p in mine and is_raylet(p)]


def is_raylet(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip() == "raylet"
    return False


def node_pids(node_id: str) -> list[int]:
    """Every process of a fake node: the provider starts its raylet with the node id in
    RAY_OVERRIDE_NODE_ID_FOR_TESTING, and the raylet's workers and agents inherit it."""
    marker = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists() and not is_zombie(p)]


def is_zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def kill_node(cluster: LocalCluster, node_id: str) -> tuple[float, list[int]]:
    """SIGKILL the node's raylet and every other process of the node at the same instant, as a
    machine that vanished. -> (wall time, the node's pids before).

    The raylet alone is not a lost machine: with Ray's own fake provider, a model replica
    outlived its killed raylet by ~19 s and kept answering (Serve's direct gRPC transport needs
    no raylet), so clients saw nothing. LocalNodeProvider now ends such a node's processes
    within ~1 s of its raylet's exit (a cloud reports the instance gone); killing them all here
    takes out that second too."""
    pids = node_pids(node_id)
    (raylet,) = raylet_pids(cluster, node_id)
    for pid in [raylet] + [p for p in pids if p != raylet]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return now(), pids


LOG_LINE = re.compile(
    r"^\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .* CALL (predict|predict_files) OK"
)


def first_served(temp_dir: str, replica_id: str) -> float | None:
    """Wall time of the replica's first successful model call, from its request log."""
    logs = Path(temp_dir).glob(f"session_latest/logs/serve/replica_{APP}_{MODEL}_{replica_id}*.log")
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if m := LOG_LINE.match(line):
                return time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
    return None


# ---------------------------------------------------------------------------------------------
# The application


def app_config(model_uri: str, port: int, model_max_replicas: int) -> dict:
    """The cluster's application (the RayService's, local_cluster.cluster_app_config) on the
    local nodes, device: auto, short autoscaling delays; one Ingress replica (the ingress
    node-loss phase needs it to be the only one)."""
    config = cluster_app_config(
        model_uri, str(Path(model_uri).parents[1] / "face-detector" / "latest")
    )
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["device"] = "auto"
    for deployment in app["deployments"]:
        # CandidateModel (no replica until a rollout) and RolloutMonitor (one, fixed) as shipped.
        scaling = deployment.get("autoscaling_config", {})
        if deployment["name"] == MODEL:
            deployment["user_config"]["model_uri"] = model_uri
            scaling.update(
                min_replicas=1, initial_replicas=1, max_replicas=model_max_replicas,
                target_ongoing_requests=1, upscale_delay_s=1, downscale_delay_s=5,
                look_back_period_s=2, metrics_interval_s=0.5,
            )  # fmt: skip
        elif deployment["name"] == INGRESS:
            scaling.update(min_replicas=1, initial_replicas=1, max_replicas=1)
    return config


def deploy(client: ServeSubmissionClient, config: dict) -> None:
    client.deploy_applications(config)
    wait_for(
        lambda: (
            serve.status().applications[APP].status == "RUNNING"
            and len(running(client, MODEL)) == len(replicas(client, MODEL))
        ),
        300,
        "the application RUNNING",
    )


# ---------------------------------------------------------------------------------------------
# Phases


class Timeline:
    """First wall time each named condition held, each polled every `interval` s in its own
    thread (a state API call takes up to a second on the loaded box: one thread polling all
    of them in turn would see each event seconds late)."""

    def __init__(self, checks: dict, interval: float = 0.25):
        self.seen: dict[str, float] = {}
        self.notes: dict[str, object] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll, args=(name, check, interval), daemon=True)
            for name, check in checks.items()
        ]

    def __enter__(self) -> Timeline:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _poll(self, name: str, check, interval: float) -> None:
        while not self._stop.is_set():
            asked = now()
            try:
                value = check()
            except Exception as e:  # the dashboard busy: try again next round
                self.errors.append(f"{name}: {e!r}"[:200])
                value = None
            if value:
                self.notes[name] = value
                self.seen[name] = asked  # it held when asked (at the latest)
                return
            self._stop.wait(interval)

    def wait(self, name: str, timeout: float) -> float:
        wait_for(lambda: name in self.seen, timeout, name, interval=0.2)
        return self.seen[name]


def phase_placement(cluster: LocalCluster, client: ServeSubmissionClient, url: str) -> dict:
    with httpx.Client(base_url=url, timeout=30) as http:
        status = wait_for(
            lambda: (
                http.post("/classify", files={"image": ("a.jpg", images.solid())}).status_code
                == 200
                and 200
            ),
            60,
            "a 200 from /classify",
        )
    return {
        "status": status,
        "nodes": node_types(),
        "replicas": placement(client),
        "auto_log_lines": auto_log_lines(cluster.temp_dir),
    }


def phase_cuda_refused(client: ServeSubmissionClient, model_uri: str, port: int) -> dict:
    config = app_config(model_uri, port, 1)
    config["applications"][0]["args"]["device"] = "cuda"
    client.deploy_applications(config)

    def failed():
        status = serve.status().applications.get(APP)
        model = status and status.deployments.get(MODEL)
        return model if model and model.status == "DEPLOY_FAILED" else None

    model = wait_for(failed, 240, "device: cuda to fail")
    gpu_nodes = [i for i, t in node_types(alive_only=True).items() if t == "gpu-workers"]
    serve.delete(APP)  # its replicas would keep failing to start, on cores training needs
    return {"status": str(model.status), "message": model.message, "gpu_node_ids": gpu_nodes}


def phase_scale(cluster: LocalCluster, client: ServeSubmissionClient, url: str) -> dict:
    """Model replicas 1 -> 2 -> 1 and gpu-workers nodes n -> n + 1 -> n, as a timeline (n: the
    model replica's node and the face detector's, which holds half a GPU)."""
    (first_replica,) = running(client, MODEL)
    first_node = first_replica["node_id"]
    before = alive_of_type("gpu-workers")

    def new_replica() -> dict | None:
        return next(
            (r for r in replicas(client, MODEL) if r["replica_id"] != first_replica["replica_id"]),
            None,
        )

    def new_node() -> str | None:
        return next(iter(alive_of_type("gpu-workers") - before), None)

    def new_replica_running() -> dict | None:
        r = new_replica()
        return r if r and r["state"] == "RUNNING" else None

    def first_request_on_new() -> float | None:
        r = new_replica()
        return r and first_served(cluster.temp_dir, r["replica_id"])

    checks = {
        "replica_requested": lambda: (r := new_replica()) and r["replica_id"],
        "node_up": new_node,
        "replica_ready": lambda: (r := new_replica_running()) and r["node_id"],
        "first_request_on_new_replica": first_request_on_new,
    }
    image = images.solid(size=(800, 800))  # decode_on: model: decoding keeps the replica busy
    with Timeline(checks) as timeline:
        with ClosedLoopLoad(url, clients=8, images=image, max_seconds=150) as load:
            timeline.wait("first_request_on_new_replica", 150)
            # Its RUNNING state is seen by a poll of Serve's details, which a loaded dashboard
            # can answer late: the load goes on until that poll saw it too.
            timeline.wait("replica_ready", 60)
            time.sleep(2)
        load_stopped = now()
        replica_gone = wait_for(
            lambda: len(replicas(client, MODEL)) == 1 and now(), 120, "scale-down to one replica"
        )
        # Serve stops either replica (one run stopped the first), and the autoscaler then
        # removes whichever node it left idle: the count goes back, not the same set.
        node_removed = wait_for(
            lambda: len(alive_of_type("gpu-workers")) <= len(before) and now(),
            120,
            "an idle gpu-workers node removed",
        )
    t0 = load.started_at
    events = {
        "load_start": t0,
        **timeline.seen,
        # The log's own time stamp: when the replica served it, not when the poll saw it.
        "first_request_on_new_replica": timeline.notes["first_request_on_new_replica"],
        "load_stop": load_stopped,
        "scale_down_replica": replica_gone,
        "node_removed": node_removed,
    }
    gpu_nodes = {n for n, t in node_types().items() if t == "gpu-workers"}
    return {
        "timeline_s": {k: round(v - t0, 1) for k, v in sorted(events.items(), key=lambda e: e[1])},
        "first_node": first_node,
        "new_replica_node": timeline.notes["replica_ready"],
        "new_node": next(iter(gpu_nodes - before), None),
        "gpu_nodes_before": sorted(before),
        "gpu_nodes_seen": sorted(gpu_nodes),
        "load": summarise(load.answers, t0) | {"failures": None},
        "poll_errors": timeline.errors[:5],
    }


def phase_node_loss(
    cluster: LocalCluster,
    client: ServeSubmissionClient,
    url: str,
    deployment: str,
) -> dict:
    """Kill the node of the deployment's only replica under load; what clients saw."""
    (replica,) = running(client, deployment)
    victim = replica["node_id"]
    victim_type = node_types()[victim]
    before = alive_of_type(victim_type)
    with ClosedLoopLoad(url, clients=4, images=images.solid(), timeout_s=REQUEST_TIMEOUT_S,
                        max_seconds=240) as load:  # fmt: skip
        wait_for(lambda: len(load.answers) >= 20, 60, "answers before the kill")
        killed_at, pids = kill_node(cluster, victim)

        def replacement() -> dict | None:
            live = running(client, deployment)
            return live[0] if live and live[0]["node_id"] != victim else None

        checks = {
            "node_marked_dead": lambda: node_state(victim) == "DEAD",
            "replacement_node_up": lambda: sorted(alive_of_type(victim_type) - before),
            "replacement_replica_running": lambda: (r := replacement()) and r["node_id"],
            "old_replica_process_gone": lambda: replica["pid"] not in alive([replica["pid"]]),
            "node_processes_gone": lambda: not alive(pids),
        }
        with Timeline(checks) as timeline:
            timeline.wait("replacement_replica_running", 240)

            def recovered() -> bool:
                after = load.since(killed_at)
                tail = [a for a in after if a.end > now() - 5]
                return len(tail) >= 10 and all(a.status == 200 for a in tail)

            wait_for(recovered, 120, "5 s of only 200s after the replacement")
    new_node = timeline.notes["replacement_replica_running"]
    saw = summarise(load.since(killed_at), killed_at)
    return {
        "deployment": deployment,
        "killed_node": victim,
        "killed_node_type": victim_type,
        "node_processes": len(pids),
        "node_processes_alive_at_end": len(alive(pids)),
        "replacement_node": new_node,
        "replacement_node_type": node_types().get(new_node),
        "replacement_node_state": node_state(new_node),
        "replacement_on_new_node": new_node not in before,
        "timeline_s": {k: round(v - killed_at, 1) for k, v in sorted(timeline.seen.items())},
        "answers_before_kill": len(load.answers) - saw["answers"],
        **saw,
    }


def registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints Ray Train's controller has registered (its snapshot lists them)."""
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return len(state.get("checkpoint_results") or [])
    return 0


def train_workers() -> dict[str, str]:
    """{actor_id: node_id} of the alive Ray Train workers (Ray's state API)."""
    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return {a.actor_id: a.node_id for a in actors}


def controller_nodes() -> set[str]:
    return {
        a.node_id
        for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
        if "Controller" in a.class_name and "Serve" not in a.class_name
    }


def phase_training(cluster: LocalCluster, work: Path, result: dict) -> dict:
    """2 workers on 2 cpu-workers nodes; one node lost mid-epoch; resume; export. Fills
    ``result`` as it goes (the caller keeps what was there if a wait times out)."""
    from model_store import load_artifact
    from train_job.synthetic import generate

    data = generate(work / "celeba", 1200, seed=0)
    storage, store, run_name = work / "ray_results", work / "store", "cluster-train"
    epochs = 3
    cmd = [
        sys.executable, "-m", "train_job", "--data-dir", str(data), "--model-store", str(store),
        "--backbone", "small_cnn", "--image-size", "32", "--max-samples", "1024",
        "--epochs", str(epochs), "--patience", str(epochs), "--batch-size", "8",
        "--num-workers", "2", "--dataloader-workers", "0", "--placement-strategy", "STRICT_SPREAD",
        "--storage-path", str(storage), "--run-name", run_name, "--max-failures", "2",
    ]  # fmt: skip
    started = now()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "RAY_ADDRESS": cluster.address},
    )  # fmt: skip
    out_lines: list[str] = []
    result["output"] = out_lines
    reader = threading.Thread(target=lambda: out_lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        first = wait_for(lambda: len(w := train_workers()) == 2 and w, 240, "2 train workers")
        types = node_types()
        first_nodes = {n: types.get(n) for n in first.values()}
        wait_for(lambda: registered_checkpoints(storage / run_name) >= 1, 240, "a checkpoint")
        checkpoint_at = now()
        time.sleep(1.5)  # into the next epoch (~5 s each)
        result["checkpoints_before_kill"] = registered_checkpoints(storage / run_name)
        spared = controller_nodes()  # the controller's node is not a worker's node to lose
        victim = next(n for n in first.values() if n not in spared)
        killed_at, _ = kill_node(cluster, victim)
        resumed = wait_for(
            lambda: (
                len(w := train_workers()) == 2 and not set(w) & set(first) and victim not in
                w.values() and w
            ),
            240,
            "a new worker group without the lost node",
        )  # fmt: skip
        resumed_at = now()
        types = node_types()
        resumed_nodes = {n: types.get(n) for n in resumed.values()}
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
    output = "".join(result.pop("output"))
    finished = now()
    result |= {
        "returncode": proc.returncode,
        "output_tail": output[-3000:] if proc.returncode else output[-600:],
        "first_workers_nodes": first_nodes,
        "killed_node": victim,
        "killed_node_state": node_state(victim),
        "resumed_workers_nodes": resumed_nodes,
        # Each rank prints it (Ray's log dedup repeats it): one per distinct message.
        "resumed_from": sorted(
            {line[line.index("Resuming") :] for line in output.splitlines() if "Resuming" in line}
        ),
        "timeline_s": {
            "first_checkpoint_registered": round(checkpoint_at - started, 1),
            "node_killed": round(killed_at - started, 1),
            "new_worker_group": round(resumed_at - started, 1),
            "finished": round(finished - started, 1),
        },
        "storage": str(storage),
        "epochs": epochs,
    }
    with contextlib.suppress(Exception):
        meta = load_artifact(str(store / "face-attributes" / "latest")).metadata
        result["artifact"] = {
            "epochs_trained": meta.training["epochs_trained"],
            "val_auroc": meta.metrics.get("val_auroc"),
        }
    return result


# ---------------------------------------------------------------------------------------------


def main(out_path: str, phases: list[str]) -> None:
    t0 = now()
    result: dict = {"phases": phases, "timings_s": {}}
    work = Path(tempfile.mkdtemp(prefix="lc-ops-"))
    write_tiny_artifact(str(work / "store"), version="v1")
    export_detector(str(work / "store"), version="mtcnn-1")
    model_uri = str(work / "store" / APP / "v1")
    cluster = LocalCluster(max_workers=MAX_WORKERS, idle_timeout_minutes=IDLE_TIMEOUT_MINUTES)
    cluster.start()
    try:
        os.environ["RAY_ADDRESS"] = (
            cluster.address
        )  # the state API: auto-detection sees two addresses
        ray.init(cluster.address, log_to_driver=False)
        client = ServeSubmissionClient(cluster.dashboard_url)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serving = [p for p in phases if p not in ("training", "batch")]
        max_replicas = 2
        if serving:
            deploy(client, app_config(model_uri, port, max_replicas))
            result["timings_s"]["app_running"] = round(now() - t0, 1)
        for phase in phases:
            started = now()
            try:
                if phase == "placement":
                    result[phase] = phase_placement(cluster, client, url)
                elif phase == "cuda_refused":
                    result[phase] = phase_cuda_refused(client, model_uri, port)
                elif phase == "scale":
                    result[phase] = phase_scale(cluster, client, url)
                elif phase.endswith("_loss"):
                    if max_replicas > 1:  # one model replica from here on
                        max_replicas = 1
                        deploy(client, app_config(model_uri, port, max_replicas))
                    deployment = INGRESS if phase.startswith("ingress") else MODEL
                    result[phase] = phase_node_loss(cluster, client, url, deployment)
                elif phase == "training":
                    result[phase] = {}
                    phase_training(cluster, work, result[phase])
                elif phase == "batch":
                    result[phase] = {}
                    batch_scenario.phase_batch(
                        cluster, work, result[phase], kill_node, node_types, node_state, wait_for
                    )
            except Exception as e:
                partial = result.get(phase) or {}
                if "output" in partial:
                    partial["output"] = "".join(partial["output"])[-4000:]
                result[phase] = {
                    **partial,
                    "error": repr(e),
                    "traceback": traceback.format_exc()[-3000:],
                }
                result[phase]["diagnosis"] = diagnose(cluster)
            result["timings_s"][phase] = round(now() - started, 1)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
        failed = any("error" in result.get(p, {}) for p in phases)
        cluster.shutdown(keep_logs=failed)  # logs kept to debug a failure
        if not failed:
            shutil.rmtree(work, ignore_errors=True)
        result["temp_dir"] = cluster.temp_dir
        result["left_processes"] = cluster.processes()
        result["timings_s"]["total"] = round(now() - t0, 1)
        Path(out_path).write_text(json.dumps(result, indent=2, default=str))


def diagnose(cluster: LocalCluster) -> dict:
    out: dict = {}
    with contextlib.suppress(Exception):
        status = serve.status().applications.get(APP)
        out["app"] = status and {
            n: [str(d.status), d.message] for n, d in status.deployments.items()
        }
    with contextlib.suppress(Exception):
        out["nodes"] = [(n.node_id, n.state, n.labels.get(LABEL_NODE_TYPE)) for n in list_nodes()]
    with contextlib.suppress(Exception):
        out["actors"] = [(a.class_name, a.state, a.node_id) for a in list_actors(limit=1000)]
    with contextlib.suppress(Exception):
        out["ray_status"] = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "status", f"--address={cluster.address}"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or list(PHASES))
