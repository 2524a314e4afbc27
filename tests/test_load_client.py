"""The suite's load client (tests/load.py) records every outcome, so "zero failures" means zero.

A stand-in server injects each failure the older load loops of the suite lost: a thread that
ended on a transport error (test_autoscaling, the swap test of test_serving_http), a non-JSON
error page that raised in the client (test_haproxy_fail_fast), answers nobody looked at
(test_serve_run_cli's traffic). Each must show up in ``failures()``."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.load import ClosedLoopLoad


class Injector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        kind = self.path.strip("/")
        if kind == "drop":  # the connection closed with no answer (a killed replica)
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind == "hang":
            time.sleep(1.0)
        if kind == "html502":
            self._send(502, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        elif kind == "garbage200":
            self._send(200, b"not json", "text/plain")
        elif kind == "overloaded":
            body = json.dumps({"error": "overloaded", "detail": "full"}).encode()
            self._send(503, body, "application/json", {"Retry-After": "1"})
        else:
            self._send(200, json.dumps({"model": {"version": "v1"}}).encode(), "application/json")

    def _send(self, status: int, body: bytes, media: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Injector)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/drop", "connection_error"),
        ("/hang", "timeout"),
        ("/html502", 502),
        ("/garbage200", "bad_body"),
        ("/overloaded", 503),
    ],
)
def test_every_injected_failure_is_counted(server, path, status):
    with ClosedLoopLoad(server, clients=2, path=path, timeout_s=0.3) as load:
        deadline = time.monotonic() + 10
        while load.count() < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    failures = load.failures()
    assert failures, load.describe_failures()
    assert {a.status for a in failures} == {status}
    assert len(failures) == load.count()  # every request, none lost


def test_a_client_side_exception_is_counted_and_the_client_goes_on(server):
    calls = []

    def flaky(http: httpx.Client, path: str, image: bytes) -> httpx.Response:
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("a bug in the test's own request code")
        return http.post(path, content=image)

    with ClosedLoopLoad(server, clients=1, path="/ok", request=flaky) as load:
        while load.count() < 6:
            time.sleep(0.02)
    statuses = {a.status for a in load.answers}
    assert statuses == {200, "client_error"}, statuses
    assert load.versions() and set(load.versions()) == {"v1"}


def test_healthy_answers_are_not_failures(server):
    with ClosedLoopLoad(server, clients=2, path="/ok") as load:
        while load.count() < 10:
            time.sleep(0.02)
    assert load.failures() == []
    assert load.result.statuses[200] == load.count()
