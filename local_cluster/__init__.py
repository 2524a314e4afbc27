"""Many Ray nodes on one machine, built from cluster.yaml's node types (issue #14).

``LocalCluster`` starts Ray's fake multi-node autoscaler (``ray.cluster_utils.AutoscalingCluster``,
the provider Ray's own autoscaler tests use): a head and worker nodes that come and go, each a
real raylet with the resources its cluster.yaml node type declares, GPU included, on a box with
no GPU and two cores. See local_cluster/cluster.py for how the sizes map.
"""

from local_cluster.cluster import (
    CPU_SCALE,
    HEAD_TYPE,
    LocalCluster,
    load_node_types,
    local_node_types,
    scale_serve_config,
)

__all__ = [
    "CPU_SCALE",
    "HEAD_TYPE",
    "LocalCluster",
    "load_node_types",
    "local_node_types",
    "scale_serve_config",
]
