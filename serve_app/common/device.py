"""Where a replica runs its tensors: the device it was given, and the one thread every device
step runs on (the model and the face detector deployments share these)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import ray
import torch

logger = logging.getLogger("ray.serve")
T = TypeVar("T")


def node_description() -> str:
    try:
        node_id = ray.get_runtime_context().get_node_id()
    except Exception:
        node_id = "?"
    return f"node {socket.gethostname()} (Ray node id {node_id})"


def choose_device(requested: str) -> torch.device:
    """auto: CUDA when torch sees one, else CPU (said once in the log); cuda: CUDA or refuse."""
    if torch.cuda.is_available() and requested in ("auto", "cuda"):
        return torch.device("cuda")
    if requested == "cuda":
        raise RuntimeError(
            f"device: cuda, but torch sees no CUDA device on {node_description()}: give the "
            "model deployment a GPU (ray_actor_options.num_gpus) on a node that has one, or "
            "set device: auto / cpu"
        )
    if requested == "auto":
        logger.info("device: auto -> cpu (no CUDA device visible on %s)", node_description())
    return torch.device("cpu")


def replica_cpu_share() -> int:
    """Ray sets OMP_NUM_THREADS=1 for actors; use the CPUs this replica was given instead."""
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:
        cpus = 1.0
    return max(1, int(cpus))


class InferenceThread:
    """The one thread a replica's device work runs on.

    One thread, not asyncio.to_thread's pool: OpenMP keeps a thread team per calling thread, and
    forwards hopping between pool threads measured 75 ms instead of 51 ms (resnet34, batch 1, 2
    threads) in a Ray actor. On CPU the thread count moved throughput several-fold on small
    boxes, so it is set on this thread explicitly.
    """

    def __init__(self, device: torch.device, torch_threads: int):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.thread_id: int = self._pool.submit(threading.get_ident).result()
        if device.type == "cpu":
            self._pool.submit(torch.set_num_threads, torch_threads).result()
            torch.set_num_threads(torch_threads)

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
