"""Can a shipped Serve config place its own replica counts on the machines the docs name?

Ray places a replica on a node with enough free logical resources (``num_cpus``, ``num_gpus``,
custom ones) whose labels match its ``label_selector``; an autoscaling node type adds nodes up to
its maximum. This module packs a scenario's replicas first-fit, largest first, onto the node
types (each up to its maximum count): a packing found is a placement Ray can also find; none
found means a replica would wait forever (as the second model replica of the old config did on
the 2-core box: 0.5 + 1.0 + 1.0 CPU asked of 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Replica:
    deployment: str
    resources: dict[str, float]
    labels: dict[str, str]  # label_selector

    def fits(self, node: NodeType, free: dict[str, float]) -> bool:
        if any(node.labels.get(k) != v for k, v in self.labels.items()):
            return False
        return all(free.get(k, 0.0) + 1e-9 >= v for k, v in self.resources.items() if v)


def replica_of(entry: dict[str, Any]) -> Replica:
    """A deployments: entry of a Serve config -> one replica's demand (Serve's default
    num_cpus is 1; shipped configs state it, tests/test_placement.py checks)."""
    options = entry.get("ray_actor_options") or {}
    resources = {
        "CPU": float(options.get("num_cpus", 1)),
        "GPU": float(options.get("num_gpus", 0)),
        **{k: float(v) for k, v in (options.get("resources") or {}).items()},
    }
    return Replica(entry["name"], resources, dict(options.get("label_selector") or {}))


def replica_counts(entry: dict[str, Any]) -> tuple[int, int]:
    """(min, max) replicas of a deployments: entry."""
    scaling = entry.get("autoscaling_config")
    if scaling:
        return int(scaling.get("min_replicas", 1)), int(scaling.get("max_replicas", 1))
    n = int(entry.get("num_replicas", 1))
    return n, n


def place(replicas: list[Replica], node_types: list[NodeType]) -> dict[str, list[str]] | None:
    """First-fit decreasing: {node instance: [deployments]} or None when one cannot be placed."""
    nodes: list[tuple[NodeType, dict[str, float], list[str]]] = []
    used: dict[str, int] = {}
    order = sorted(replicas, key=lambda r: (-r.resources.get("GPU", 0), -r.resources["CPU"]))
    for replica in order:
        target = next((n for n in nodes if replica.fits(n[0], n[1])), None)
        if target is None:  # a new node of the first type that can take it and may still grow
            node_type = next(
                (
                    t
                    for t in node_types
                    if used.get(t.name, 0) < t.max_count and replica.fits(t, t.resources)
                ),
                None,
            )
            if node_type is None:
                return None
            used[node_type.name] = used.get(node_type.name, 0) + 1
            target = (node_type, dict(node_type.resources), [])
            nodes.append(target)
        _, free, held = target
        for k, v in replica.resources.items():
            free[k] = free.get(k, 0.0) - v
        held.append(replica.deployment)
    return {f"{node.name}#{i}": held for i, (node, _, held) in enumerate(nodes)}


def scenarios(app: dict[str, Any], candidate: str = "CandidateModel") -> dict[str, list[Replica]]:
    """The replica counts a config documents: every deployment at its minimum plus a rollout's
    candidate; each deployment at its maximum (the others at their minimum) with a candidate
    beside it; and the candidate at its own maximum (a 100% canary under load)."""
    entries = {d["name"]: d for d in app["deployments"]}
    mins = {name: replica_counts(e)[0] for name, e in entries.items()}
    maxes = {name: replica_counts(e)[1] for name, e in entries.items()}
    out: dict[str, list[Replica]] = {}

    def replicas(counts: dict[str, int]) -> list[Replica]:
        return [replica_of(entries[n]) for n, count in counts.items() for _ in range(count)]

    with_candidate = {**mins, candidate: max(1, mins.get(candidate, 0))}
    out["minimum + a candidate"] = replicas(with_candidate)
    for name in entries:
        if name != candidate and maxes[name] > mins[name]:
            out[f"{name} at its maximum + a candidate"] = replicas(
                {**with_candidate, name: maxes[name]}
            )
    out["the candidate at its maximum"] = replicas({**mins, candidate: maxes[candidate]})
    return out
