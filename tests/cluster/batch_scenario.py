"""The batch job across nodes, and a node lost mid-run (issue 26 item 3): the ``batch`` phase of
tests/cluster/operations_scenario.py, on the same LocalCluster start as the other phases.

``python -m batch_job`` runs as its own driver (RAY_ADDRESS: the cluster, as `ray job submit`
starts it; the driver stays on the head, which holds no worker) over generated CelebA-format
faces, with two model actors of ``num_gpus: 1`` each: the fake GPU nodes have one GPU each, so
the actors share two ``gpu-workers`` nodes (device: auto -> CPU there, as the Serve phases),
and the decode tasks run on ``cpu-workers`` nodes. Once both actors have finished work and some
Parquet is written, one actor's node is lost (every process of it SIGKILLed at once, as the
node-loss phases do). Ray Data restarts the actor (``max_restarts: -1``) on a replacement
node the autoscaler adds, retries the tasks that were on it and re-executes, by lineage, the
blocks lost with that node's object store. The job must finish, its own read-back check must
pass, and the output read here must hold every input exactly once: one row per input_index,
its path the input's.

``check(result)`` holds the assertions (tests/cluster/test_cluster_operations.py calls it on
the phase's result).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The loss comes ~11 s in (both actors have done work, Parquet written) and the check asks only
# that work went on elsewhere after it: 4,000 images (~19 s of work for two 1-thread actors
# here) are enough; 8,000 made the phase 55 s.
IMAGES = 4000
BATCH = 16
PREDICTOR = "Predictor"
SUMMARY_HEADS = ("Model ", "  every input")
LOSS_WORDS = re.compile(
    r"(?i)died|lost|unavailable|retry|restart|reconstruct"
)  # in Ray Data's actor class name: MapWorker(MapBatches(Predictor))


def predictor_actors() -> dict[str, str]:
    """{actor_id: node_id} of the alive model actors (Ray's state API)."""
    from ray.util.state import list_actors

    return {
        a.actor_id: a.node_id
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        if PREDICTOR in a.class_name
    }


def finished_batches_by_node() -> dict[str, int]:
    """Model actor calls that finished, per node (the state API's task records)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(filters=[("state", "=", "FINISHED")], limit=10000, detail=True)
    calls = [t for t in tasks if PREDICTOR in (t.name or "") and t.name.endswith(".submit")]
    return dict(Counter(t.node_id for t in calls if t.node_id))


def phase_batch(
    cluster,
    work: Path,
    result: dict,
    kill_node: Callable[[object, str], tuple[float, list[int]]],
    node_types: Callable[[], dict[str, str]],
    node_state: Callable[[str], str],
    wait_for: Callable,
) -> dict:
    """Fills ``result`` as it goes (the caller keeps what was there if a wait times out)."""
    import pyarrow.parquet as pq

    from tests.artifacts import write_tiny_artifact
    from tests.images import encode

    images = work / "batch-images"
    images.mkdir(parents=True)
    from PIL import Image

    for i in range(IMAGES):  # small varied JPEGs: the model, not the disk, is the work
        colour = (i * 37 % 256, i * 91 % 256, i * 53 % 256)
        (images / f"{i:06d}.jpg").write_bytes(encode(Image.new("RGB", (178, 218), colour), "JPEG"))
    store, out = work / "batch-store", work / "batch-out"
    write_tiny_artifact(str(store), version="b1")
    cmd = [
        sys.executable, "-m", "batch_job", "--model-uri", str(store / "face-attributes" / "latest"),
        "--input", str(images), "--output", str(out), "--batch-size", str(BATCH),
        "--num-gpus", "1", "--actor-cpus", "1", "--min-actors", "2", "--max-actors", "2",
        # Small files, so some are written before the loss (the default, 10,000 rows, writes
        # these 4,000 in one file at the end): a loss after a write is the exactly-once case.
        "--rows-per-file", "256",
    ]  # fmt: skip
    started = time.time()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "RAY_ADDRESS": cluster.address},
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        both = wait_for(
            lambda: len(set((a := predictor_actors()).values())) == 2 and a,
            240,
            "two model actors on two nodes",
        )
        types = node_types()
        result["actors_before"] = {a: [n, types.get(n)] for a, n in both.items()}
        wait_for(
            lambda: len(finished_batches_by_node()) == 2 and list(out.glob("*.parquet")),
            240,
            "both actors done work and a file written",
        )
        result["files_before_kill"] = len(list(out.glob("*.parquet")))
        result["batches_before_kill"] = finished_batches_by_node()
        victim = next(iter(both.values()))
        killed_at, node_pids = kill_node(cluster, victim)
        result |= {"killed_node": victim, "killed_node_type": types.get(victim)}
        result["t_kill_s"] = round(killed_at - started, 1)
        result["killed_processes"] = len(node_pids)
        seen: set[tuple[str, str]] = set()  # (actor, node) while the job runs on
        deadline = time.time() + 400
        while proc.poll() is None and time.time() < deadline:
            with contextlib.suppress(Exception):  # the state API busy: next round
                seen |= set(predictor_actors().items())
            time.sleep(1.0)
        proc.wait(timeout=max(1.0, deadline - time.time()))
        result["actor_nodes_after_kill"] = sorted({n for _, n in seen} - {victim})
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
    finished = time.time()
    output = "".join(lines)
    rows = pq.read_table(str(out), columns=["input_index", "path", "error"]).to_pandas()
    expected = sorted(str(p) for p in images.iterdir())
    types = node_types()
    batches = finished_batches_by_node()
    result |= {
        "returncode": proc.returncode,
        "output_tail": output[-3000:] if proc.returncode else output[-1500:],
        # the job's closing summary, and what its driver said about the lost node
        "summary_lines": [x for x in output.splitlines() if x.startswith(SUMMARY_HEADS)],
        "loss_lines": [x[:300] for x in output.splitlines() if LOSS_WORDS.search(x)][:10],
        "inputs": len(expected),
        "rows": len(rows),
        "distinct_input_index": int(rows["input_index"].nunique()),
        "input_index_range": [int(rows["input_index"].min()), int(rows["input_index"].max())],
        "paths_match": sorted(rows["path"]) == expected,
        "errors": int(rows["error"].notna().sum()),
        "files": len(list(out.glob("*.parquet"))),
        "killed_node_state": node_state(result["killed_node"]),
        "batches_by_node": {n: [c, types.get(n)] for n, c in batches.items()},
        "batches_after_kill_by_node": {
            n: c - result["batches_before_kill"].get(n, 0) for n, c in batches.items()
        },
        "job_summary": json.loads((out / "_summary.json").read_text())
        if (out / "_summary.json").exists()
        else None,
        "t_finished_s": round(finished - started, 1),
    }
    return result


def check(result: dict) -> None:
    """What the phase must show (called by the cluster test on the JSON)."""
    assert result["returncode"] == 0, result["output_tail"]
    before = result["actors_before"]
    assert len(before) == 2 and len({n for n, _ in before.values()}) == 2, before
    assert {t for _, t in before.values()} == {"gpu-workers"}, before
    assert len(result["batches_before_kill"]) == 2  # both nodes had done work
    assert result["killed_node_type"] == "gpu-workers"
    assert result["killed_node_state"] == "DEAD"
    # every input exactly once
    assert result["rows"] == result["inputs"] == result["distinct_input_index"]
    assert result["input_index_range"] == [0, result["inputs"] - 1]
    assert result["paths_match"] and result["errors"] == 0
    summary = result["job_summary"]
    assert summary["missing_inputs"] == 0 and summary["duplicate_rows"] == 0
    # after the loss the model work went on, on nodes other than the lost one
    after = result["batches_after_kill_by_node"]
    assert sum(c for n, c in after.items() if n != result["killed_node"]) > 0, after
