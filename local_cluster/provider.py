"""Ray's fake multi-node provider, plus what a cloud provider does when a machine is lost.

Loaded by the head's autoscaler (provider ``type: external``, ``module:`` this class), so it
runs in Ray's monitor process: it must import nothing from the project but this module.

Why: a cloud provider reports a lost instance as terminated, and the autoscaler forgets it and
launches a replacement when demand needs one. Ray's ``FakeMultiNodeProvider`` keeps a node whose
processes were killed in its list forever, and the v1 autoscaler never gives it up: its health
check (``terminate_unhealthy_nodes``) re-marks a node it has no heartbeat entry for as freshly
active, while ``prune_active_ips`` drops a dead node's entry every round, so the
"lost contact with raylet" timeout never fires. Meanwhile the dead node counts as a pending node
of its type, i.e. as capacity: measured here, a 2-worker STRICT_SPREAD training group whose
node was killed waited for a second cpu-workers node for 4 minutes (until the test gave up) with
the autoscaler launching nothing. This provider reports a node whose raylet process has exited
as terminated (and ends what is left of it), as EC2 reports a lost spot instance.
"""

from __future__ import annotations

from ray._private import ray_constants
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class LocalNodeProvider(FakeMultiNodeProvider):
    def non_terminated_nodes(self, tag_filters):
        self._forget_lost_nodes()
        return super().non_terminated_nodes(tag_filters)

    def is_running(self, node_id):
        self._forget_lost_nodes()
        return super().is_running(node_id)

    def _forget_lost_nodes(self) -> None:
        with self.lock:
            lost = [i for i, entry in self._nodes.items() if not raylet_running(entry)]
            for node_id in lost:
                self._terminate_node(self._nodes.pop(node_id))


def raylet_running(entry: dict) -> bool:
    """False only for a worker node started by this provider whose raylet process has exited
    (the head's entry has no "node": its raylet is not this provider's to watch)."""
    node = entry.get("node")
    if node is None:
        return True
    raylets = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET) or []
    return any(info.process.poll() is None for info in raylets)
