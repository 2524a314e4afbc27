"""A rig for Serve's HAProxy without Ray: the config Ray 2.60 renders (its own template and
code, HAProxyApi), and stand-ins for an Ingress replica and Serve's fallback proxy."""

from __future__ import annotations

from pathlib import Path

from tests.harness import free_port

# A replica or fallback proxy stand-in: answers /-/healthz at once, every POST after argv[2] s.
UPSTREAM = r"""
import http.server, socketserver, sys, time
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.answer(b"success")
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(float(sys.argv[2]))
        self.answer(b'{"labels": []}')
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def render_rays_config(directory: Path, port: int, replica_port: int, fallback_port: int) -> Path:
    """haproxy.cfg as Ray 2.60's HAProxyApi writes it for one app, one Ingress replica and the
    head's Serve proxy as fallback (what a serve.env deployment runs)."""
    from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
    from ray.serve.config import HTTPOptions

    config = HAProxyConfig(
        socket_path=str(directory / "admin.sock"),
        server_state_base=str(directory),
        server_state_file=str(directory / "server-state"),
        stats_port=free_port(),
        metrics_port=free_port(),
        metrics_socket_path=str(directory / "metrics.sock"),
        http_options=HTTPOptions(host="127.0.0.1", port=port),
    )
    api = HAProxyApi(config, config_file_path=str(directory / "haproxy.cfg"))
    backend = BackendConfig(
        name="http-face-attributes",
        path_prefix="/",
        app_name="face-attributes",
        ingress_deployment_name="Ingress",
        servers=[
            ServerConfig("SERVE_REPLICA_face-attributes-Ingress-a", "127.0.0.1", replica_port)
        ],
        fallback_server=ServerConfig("SERVE_PROXY_ACTOR-fallback-head", "127.0.0.1", fallback_port),
    )
    api.set_backend_configs({backend.name: backend})
    api._generate_config_file_internal()
    return directory / "haproxy.cfg"
