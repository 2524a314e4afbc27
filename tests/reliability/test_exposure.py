"""Exposure: loopback by default, no dashboard on the network, user bytes never unpickled or
written to disk."""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import yaml

from tests import images
from tests.harness import ROOT

SERVE_APP = ROOT / "serve_app"


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket LISTENing on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1


def test_default_config_and_running_service_bind_loopback(served):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"
    assert listening_addresses(served.http_port) <= LOOPBACK
    assert listening_addresses(served.http_port), "the Serve proxy should be listening"


def test_local_config_does_not_expose_the_dashboard(served):
    makefile = (ROOT / "Makefile").read_text()
    assert "dashboard-host" not in makefile and "0.0.0.0" not in makefile
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert "0.0.0.0" not in yaml.safe_dump(config) and "dashboard" not in yaml.safe_dump(config)
    dashboard_port = int(served.cluster.dashboard_url.rsplit(":", 1)[1])
    assert listening_addresses(dashboard_port) <= LOOPBACK


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return getattr(node, "id", "?")


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
    for path in SERVE_APP.glob("*.py"):
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
            if name in unpickling or name.rsplit(".", 1)[-1] in disk_writes or name == "open":
                problems.append(f"{path.name}:{node.lineno} {source[:60]}")
            # The one deserialisation: the operator's artifact, after its sha256 check.
            if name == "torch.jit.load" and not source.startswith(
                "torch.jit.load(io.BytesIO(artifact.model_bytes)"
            ):
                problems.append(f"{path.name}:{node.lineno} {source[:60]}")
    assert problems == []


def test_uploads_leave_no_trace_on_disk(served):
    marker = os.urandom(24)
    big = images.solid(size=(700, 700), fmt="BMP")[:-64] + marker + b"\x00" * 40  # ~1 MB
    start = time.time() - 1
    for kwargs in (
        {"files": {"image": ("a.bmp", images.solid(fmt="BMP") + marker, "image/bmp")}},
        {
            "files": {"image": ("b.bmp", big[: 1024 * 1000], "image/bmp")}
        },  # > Starlette's 1 MB spool
        {"content": marker * 10, "headers": {"content-type": "image/jpeg"}},
    ):
        served.http.post("/classify", **kwargs)
    hits = []
    for root in {"/tmp", os.environ.get("TMPDIR", "/tmp")}:
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                    if (
                        st.st_mtime >= start
                        and st.st_size < 50 * 1024 * 1024
                        and marker in Path(path).read_bytes()
                    ):
                        hits.append(path)
                except OSError:
                    continue
    assert hits == []
