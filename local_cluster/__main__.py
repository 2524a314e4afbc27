"""`make cluster-demo`: cluster.yaml's node types on this machine, serving the demo model.

    python -m local_cluster [--model-uri models/face-attributes/latest] [--port 8000]

Starts LocalCluster (see local_cluster/cluster.py for how sizes map), deploys config.gpu.yaml
(num_gpus as shipped, num_cpus scaled, device: auto: the fake GPU nodes have no CUDA) with the
demo model, prints the dashboard URL and a load command that makes the model deployment scale
(and the autoscaler add gpu-workers nodes), then waits. Ctrl-C (or SIGTERM) stops every process
this cluster started, and nothing else.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from local_cluster.cluster import LocalCluster, cluster_app_config, wait_for

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

APP = "face-attributes"
IMAGE = "data/synthetic/img_align_celeba/000001.jpg"


def demo_config(model_uri: str, port: int) -> dict:
    """The cluster's application (local_cluster.cluster_app_config) with the demo's model and
    the detector beside it in the store, device auto (the fake GPU nodes have no CUDA)."""
    model = Path(model_uri).resolve()
    detector = model.parent.parent / "face-detector" / "latest"
    config = cluster_app_config(str(model), str(detector))
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["device"] = "auto"
    config["applications"][0]["args"]["detector_device"] = "auto"
    return config


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m local_cluster", description=__doc__)
    parser.add_argument("--model-uri", default="models/face-attributes/latest")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--idle-timeout-minutes", type=float, default=1.0, help="cluster.yaml says 10"
    )
    args = parser.parse_args()
    if not Path(args.model_uri).exists():
        sys.exit(f"no model at {args.model_uri}: run `make train` first")

    cluster = LocalCluster(idle_timeout_minutes=args.idle_timeout_minutes)
    # Ctrl-C and SIGTERM both end in the finally below. SIGINT's handler is set explicitly: a
    # process started with `&` from a non-interactive shell inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler (seen: `make cluster-demo &` ignored Ctrl-C).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        cluster.start()
        import ray
        from ray import serve
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        os.environ["RAY_ADDRESS"] = cluster.address
        ray.init(cluster.address, log_to_driver=False)
        ServeSubmissionClient(cluster.dashboard_url).deploy_applications(
            demo_config(args.model_uri, args.port)
        )
        print("Starting: the model replica waits for the autoscaler to add a gpu-workers node")
        wait_for(lambda: serve.status().applications[APP].status == "RUNNING", 300, "the app")
        url = f"http://127.0.0.1:{args.port}"
        py = sys.executable
        print(
            f"""
  API         curl -F image=@{IMAGE} {url}/classify
  Dashboard   {cluster.dashboard_url}  (Cluster tab: nodes appearing and leaving; Serve tab)
              asks for Ray's auth token: RAY_AUTH_MODE=token {Path(py).parent}/ray get-auth-token
  Load        {py} -m bench.loadgen --url {url}/classify --image {IMAGE} --concurrency 32 --seconds 120
              (the model deployment scales 1 -> 2+ replicas; each needs a GPU: the autoscaler
              adds gpu-workers nodes, and removes them {args.idle_timeout_minutes} min after the load)
  Status      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token {Path(py).parent}/ray status --address {cluster.address}
              (without the first setting `ray status` turns 127.0.0.1 into this machine's
              network address, where this cluster does not listen)
  Ctrl-C stops every process this cluster started.
""",
            flush=True,
        )
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping the local cluster...", flush=True)
        cluster.shutdown()
        print(f"Stopped ({len(cluster.processes())} processes left).")


if __name__ == "__main__":
    main()
