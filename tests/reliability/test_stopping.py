"""Every way a user stops `make serve` leaves no process and no bound port behind, and the next
start works.

Each case starts `serve run` as `make serve` does (tests/reliability/service_process.py), stops
it one way, then checks that no process it started (HAProxy included: it runs outside
`serve run`'s process group and gets a new pid at each reload) and no port it listened on is
left. The cases run in order, so each start after the first is also the "next start" check of
the way before it: HAProxy's stats (8404) and Prometheus (9101) ports are fixed, and an
orphaned haproxy holding them made the next start fail with "Address already in use".
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.artifacts import write_tiny_artifact
from tests.harness import free_port
from tests.reliability.service_process import (
    SERVE_BIN,
    ServeRun,
    make_serve_env,
    port_is_listening,
    read_proc,
    write_config,
)
from tests.required import skip_unless_ci

pytestmark = [pytest.mark.serve, pytest.mark.slow]

RAY_BIN = SERVE_BIN.with_name("ray")


def other_ray_instances(run: ServeRun) -> list[int]:
    """GCS servers on this machine that are not this run's (`ray stop` stops them all)."""
    ours = {p.pid for p in run.processes()}
    pids = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) not in ours]
    return [pid for pid in pids if (p := read_proc(pid)) and p.name == "gcs_server"]


def ctrl_c(run: ServeRun) -> None:
    run.interrupt()  # SIGINT to the foreground process group, as a terminal's Ctrl-C


def sigterm(run: ServeRun) -> None:
    run.proc.send_signal(signal.SIGTERM)  # systemd, `docker stop`, `kill <pid>`


def sigkill(run: ServeRun) -> None:
    run.proc.kill()  # `kill -9`, the OOM killer


def serve_shutdown(run: ServeRun) -> None:
    """`serve shutdown -y`: Serve goes, `serve run` and Ray stay until Ctrl-C."""
    serve_ports = run.serve_ports()
    subprocess.run(
        [str(SERVE_BIN), "shutdown", "-y", "--address", run.dashboard_url()],
        env={**os.environ, "RAY_AUTH_MODE": "token"},
        check=True,
        timeout=120,
    )
    run.wait_gone(60, ports=serve_ports, processes=run.stray_haproxies)
    assert run.stray_haproxies() == [], "haproxy outlived `serve shutdown`"
    assert {p for p in serve_ports if port_is_listening(p)} == set(), "Serve ports still bound"
    ctrl_c(run)


def ray_stop(run: ServeRun) -> None:
    others = other_ray_instances(run)
    if others:
        skip_unless_ci(
            f"`ray stop` would also stop the other Ray instances here (GCS pids {others})"
        )
    subprocess.run(
        [str(RAY_BIN), "stop"], env={**os.environ, "RAY_AUTH_MODE": "token"}, timeout=120
    )


def sigterm_group_then_force_stop(run: ServeRun) -> None:
    """The way issue #11 saw an orphan: SIGTERM to `serve run`'s process group (GCS and raylet
    are in it, the workers are not), then `ray stop --force` (SIGKILL to Ray's processes by
    name; haproxy is not one of them)."""
    others = other_ray_instances(run)
    if others:
        skip_unless_ci(
            f"`ray stop` would also stop the other Ray instances here (GCS pids {others})"
        )
    os.killpg(run.proc.pid, signal.SIGTERM)
    time.sleep(2)
    subprocess.run(
        [str(RAY_BIN), "stop", "--force"],
        env={**os.environ, "RAY_AUTH_MODE": "token"},
        timeout=120,
    )


def background_then_ray_stop_force(run: ServeRun) -> None:
    """`serve run config.yaml &` from a script (SIGINT ignored: Ctrl-C cannot stop it), then
    `ray stop --force`. Ray's processes go at once; `serve run` itself (a driver) waited for
    the GCS for 60 s and kept a loopback listener meanwhile (53 s measured); `make serve`'s
    environment makes it give up after 5 s (Makefile, LOCAL_RAY_ENV)."""
    others = other_ray_instances(run)
    if others:
        skip_unless_ci(
            f"`ray stop` would also stop the other Ray instances here (GCS pids {others})"
        )
    subprocess.run(
        [str(RAY_BIN), "stop", "--force"],
        env={**os.environ, "RAY_AUTH_MODE": "token"},
        timeout=120,
    )
    stopped_at = time.monotonic()
    while run.proc.poll() is None and time.monotonic() - stopped_at < 20:
        time.sleep(0.5)
    assert run.proc.poll() is not None, "serve run outlived `ray stop --force` by 20 s"


# Ctrl-C: the shipped scenario (tests/reliability/test_shipped.py) ends with it, and checks the same.
WAYS = [
    sigterm,
    serve_shutdown,
    ray_stop,
    sigterm_group_then_force_stop,
    background_then_ray_stop_force,
    sigkill,
]
BACKGROUND = {background_then_ray_stop_force}


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stopping")
    write_tiny_artifact(str(tmp / "store"), version="v1", input_size=(64, 64))
    return str(tmp / "store" / "face-attributes" / "v1")


@pytest.mark.own_ray  # collected first (tests/conftest.py), before the session's shared Ray
@pytest.mark.parametrize("stop", WAYS, ids=[w.__name__ for w in WAYS])
def test_stopping_leaves_nothing_behind(stop, model_uri, tmp_path):
    port = free_port()
    config = write_config(tmp_path, model_uri, port)
    run = ServeRun(
        config, make_serve_env(), tmp_path / "serve.log", port, ignore_sigint=stop in BACKGROUND
    )
    try:
        run.wait_ready()  # also the previous way's "the next start works"
        assert httpx.get(f"{run.url}/-/routes", timeout=10).status_code == 200
        assert run.haproxy(), "the run should be serving through HAProxy (serve.env)"
        stop(run)
        run.wait_gone(90)
        left = [f"{p.name}({p.pid})" for p in run.survivors()]
        assert left == [], f"processes left after {stop.__name__}: {left}"
        assert run.bound_ports() == set(), f"ports left bound after {stop.__name__}"
    finally:
        run.kill_everything()
