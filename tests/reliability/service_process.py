"""The service as a user starts it (`make serve`: a real `serve run` subprocess with the Makefile's
environment), and what it leaves on the machine: processes, LISTEN sockets, files.

Processes: `serve run` starts Ray's node processes (GCS, raylet, dashboard, agents), the raylet
starts the workers, and Serve's HAProxy manager (a worker) starts `haproxy` — each reload a new
pid, in the worker's process group, not `serve run`'s. `ServeRun.processes()` walks the parent
links down from the `serve run` pid and remembers every pid it has seen (with its start time, so
a recycled pid is not mistaken for ours); after a stop, `survivors()` says which still run, and
`stray_haproxies()` finds an haproxy of this run's node that was reparented away from the tree.

Sockets: /proc/<pid>/fd -> `socket:[inode]` -> the inode's row in /proc/net/tcp{,6}.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from tests.harness import INGRESS_DRAIN_ENV, ROOT, deployment, wait_for

SERVE_BIN = Path(sys.executable).with_name("serve")
HAPROXY_DIR = Path("/tmp/haproxy-serve")  # Ray's default for its config and admin socket
LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"


@dataclass(frozen=True)
class Proc:
    pid: int
    started: int  # clock ticks after boot (field 22 of /proc/<pid>/stat): tells reuse apart
    name: str  # comm, e.g. "raylet", "gcs_server", "haproxy", "ray::HAProxyMan"
    cmdline: str
    state: str = "R"  # "Z": exited, waiting for its parent to reap it

    def alive(self) -> bool:
        current = read_proc(self.pid)
        return current is not None and current.started == self.started and current.state != "Z"


@dataclass(frozen=True)
class Listener:
    address: str  # "127.0.0.1", "0.0.0.0", "::", "::1", or a node address
    port: int
    proc: Proc

    @property
    def loopback(self) -> bool:
        return self.address.startswith("127.") or self.address == LOOPBACK_V6

    def __str__(self) -> str:
        return f"{self.proc.name}({self.proc.pid}) {self.address}:{self.port}"


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces; the fields after it are space separated.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return Proc(pid, int(fields[19]), name, cmdline.strip(), fields[0])


def parent_links() -> dict[int, int]:
    """pid -> parent pid, for every process now."""
    links = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            links[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return links


def descendants(root: int) -> list[Proc]:
    """`root` and every process below it, by parent links."""
    children: dict[int, list[int]] = {}
    for pid, parent in parent_links().items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        proc = read_proc(pid)
        if proc is not None:
            found.append(proc)
        todo.extend(children.get(pid, []))
    return found


def _decode_address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    # IPv6: four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    import ipaddress

    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped) if address.ipv4_mapped else str(address)


def listening_sockets() -> dict[int, tuple[str, int]]:
    """socket inode -> (local address, port) of every TCP socket in state LISTEN."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            found[int(fields[9])] = (_decode_address(address), int(port, 16))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listeners(procs: list[Proc]) -> list[Listener]:
    """Every LISTEN socket held by one of `procs` (a socket shared by several is listed once,
    under the first)."""
    table = listening_sockets()
    found, seen = [], set()
    for proc in procs:
        for inode in socket_inodes(proc.pid) & table.keys():
            if inode not in seen:
                seen.add(inode)
                found.append(Listener(*table[inode], proc))
    return found


def port_is_listening(port: int) -> bool:
    return any(p == port for _, p in listening_sockets().values())


def make_serve_env() -> dict[str, str]:
    """The environment `make serve` gives `serve run` (Makefile target `serve-env`)."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-s", "serve-env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def write_config(
    tmp_path: Path, model_uri: str, http_port: int, detector_uri: str | None = None
) -> Path:
    """config.yaml as shipped, but on a free port and with a test model (and detector: without
    one, POST /faces answers 503 and the rest works)."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["http_options"]["port"] = http_port
    model = deployment(config["applications"][0], "FaceAttributeModel")
    model["user_config"]["model_uri"] = model_uri
    if detector_uri:
        deployment(config["applications"][0], "FaceDetector")["user_config"]["model_uri"] = (
            detector_uri
        )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class ServeRun:
    """One `serve run config.yaml` in its own session, as a terminal runs a foreground job:
    Ctrl-C there is SIGINT to the job's process group, which `interrupt()` sends."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str],
        log: Path,
        http_port: int,
        ignore_sigint: bool = False,
    ):
        """ignore_sigint: as a `serve run ... &` from a non-interactive shell starts."""
        self.config, self.env, self.log_path, self.http_port = config, env, log, http_port
        self.seen: dict[tuple[int, int], Proc] = {}
        self.ports: set[int] = set()
        self.node_dirs: set[Path] = set()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(SERVE_BIN), "run", str(config)],
                cwd=ROOT,
                env={**shipped_environ(), **env, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # A terminal's foreground job gets Ctrl-C; a pytest started with `&` from a
                # non-interactive shell passes SIGINT down ignored (the test would then see a
                # `serve run` that never stops: a fresh clone's run in the background did).
                preexec_fn=ignored_sigint if ignore_sigint else default_sigint,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def dashboard_url(self) -> str:
        found = re.search(
            r"View the dashboard at \S*?(http://[\d.]+:\d+)", self.log_path.read_text()
        )
        assert found, self.log()
        return found[1]

    def wait_ready(self, timeout: float = 240) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve run exited {self.proc.returncode}:\n{self.log()}")
            # HAProxy's own health check (200 once a replica is up; on the head node also
            # before), and both deployments' replicas running, so their ports are listed too.
            # The app's own routes are not what these tests are about.
            replicas = [p for p in self.processes() if p.name.startswith("ray::ServeRepli")]
            healthy = httpx.get(f"{self.url}/-/healthz", timeout=5).status_code == 200
            return healthy and len(replicas) >= 2

        try:
            wait_for(ready, timeout, "serve run to answer /-/healthz", interval=1)
        except AssertionError:
            raise
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{self.log()}") from e
        self.processes()

    def processes(self) -> list[Proc]:
        """Every process this run has now (and remember them, their ports, haproxy's dir)."""
        procs = descendants(self.proc.pid)
        for proc in procs:
            self.seen[(proc.pid, proc.started)] = proc
            # A reloaded haproxy that exited but is not reaped yet (a zombie) has no command
            # line, hence no config path: it names no directory.
            if proc.name == "haproxy" and haproxy_config(proc):
                self.node_dirs.add(Path(haproxy_config(proc)).parent)
        self.ports |= {listener.port for listener in listeners(procs)}
        return procs

    def haproxy(self) -> list[Proc]:
        return [p for p in self.processes() if p.name == "haproxy"]

    def interrupt(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def survivors(self) -> list[Proc]:
        """Processes of this run still alive: seen in the tree, or haproxy of its node."""
        self.proc.poll()  # reap `serve run` itself once it has exited
        alive = [p for p in self.seen.values() if p.alive()]
        return alive + [p for p in self.stray_haproxies() if p not in alive]

    def stray_haproxies(self) -> list[Proc]:
        strays = []
        for entry in os.listdir("/proc"):
            proc = read_proc(int(entry)) if entry.isdigit() else None
            if (
                proc
                and proc.name == "haproxy"
                and Path(haproxy_config(proc)).parent in (self.node_dirs)
            ):
                strays.append(proc)
        return strays

    def bound_ports(self) -> set[int]:
        return {port for port in self.ports if port_is_listening(port)}

    def serve_ports(self) -> set[int]:
        """Ports of Serve's processes (HAProxy, proxy, controller, replicas), not Ray's."""
        serve = ("haproxy", "ray::HAProxyMan", "ray::ProxyActor", "ray::Serve")
        procs = [p for p in self.processes() if p.name.startswith(serve)]
        return {listener.port for listener in listeners(procs)}

    def wait_gone(
        self,
        timeout: float = 60,
        ports: set[int] | None = None,
        processes: Callable[[], list[Proc]] | None = None,
    ) -> None:
        """Until none of `processes()` (default: survivors) and none of `ports` (default: every
        port this run listened on) is left, or the timeout."""
        processes = processes or self.survivors
        ports = self.ports if ports is None else ports
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (
            processes() or any(port_is_listening(p) for p in ports)
        ):
            time.sleep(0.5)

    def kill_everything(self) -> None:
        """Test cleanup: whatever a failed stop left behind."""
        for proc in self.survivors():
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def shipped_environ() -> dict[str, str]:
    """This process's environment without what the shared test Ray alone sets
    (tests/shipped_differences.py): a `serve run` here runs as a user's would."""
    return {k: v for k, v in os.environ.items() if k != INGRESS_DRAIN_ENV}


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ignored_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def haproxy_config(proc: Proc) -> str:
    """The `-f` argument of an haproxy command line ('' when it has none)."""
    args = proc.cmdline.split()
    return args[args.index("-f") + 1] if "-f" in args[:-1] else ""
