"""CPU seconds spent by every process a server run started, grouped by role, read from /proc.

The process set is the server's root process and all its descendants at the time of each
snapshot: for `serve run` that is the driver, GCS, raylet, dashboard and its agents, the Serve
controller, the proxy, HAProxy (started by the proxy actor) and every replica; for the
hand-written baseline, the one uvicorn process. The load generator is not among them (it is
another process tree), so a figure here is the server's cost alone, not the box's.

A figure of a torch process is an upper bound: OpenMP threads spin for a while after each
parallel region, and /proc counts spinning as CPU time (compare with OMP_WAIT_POLICY=PASSIVE).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# First match wins; matched against the command line (Ray names its workers ray::<Actor>).
ROLES = (
    ("model replica", ("FaceAttributeModel",)),
    ("ingress replica", ("Ingress",)),
    ("haproxy", ("haproxy",)),
    ("serve proxy", ("ProxyActor",)),
    ("serve controller", ("ServeController",)),
    ("gcs", ("gcs_server",)),
    ("raylet", ("raylet",)),
    ("dashboard", ("dashboard",)),
    ("ray agents", ("runtime_env", "agent", "log_monitor", "monitor.py")),
    ("serve run driver", ("serve run", "bin/serve")),
    ("baseline server", ("bench.baseline_server",)),
)


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of one process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def role(cmdline: str) -> str:
    for name, needles in ROLES:
        if any(n in cmdline for n in needles):
            return name
    return "other ray workers" if cmdline.startswith("ray::") else "other"


def snapshot(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) for root and every descendant."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(int(entry))) is not None:
            stats[int(entry)] = s
    children = defaultdict(list)
    for pid, (ppid, _) in stats.items():
        children[ppid].append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = (role(_cmdline(pid)), stats[pid][1])
            todo += children[pid]
    return tree


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per role between two snapshots; a process born in between counts from 0
    (one that died in between is lost: rare, and only ever an under-count)."""
    spent: dict[str, float] = defaultdict(float)
    for pid, (name, seconds) in after.items():
        spent[name] += seconds - (before[pid][1] if pid in before else 0.0)
    return {name: round(s, 3) for name, s in sorted(spent.items(), key=lambda kv: -kv[1])}
