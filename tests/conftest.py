"""One real Ray instance per test session (ray.init costs ~9 s, Serve ~6 s), shared by every test.

Serving tests deploy the application declaratively, exactly as `serve deploy config.yaml` does
(through the dashboard's REST API), from config.yaml adjusted for a small test box.
"""

from __future__ import annotations

import json
import os
import sys

from tests.config_diff import local_serve_env
from tests.shipped_differences import SHARED_RAY_LOGICAL_CPUS

# `ray job submit -- python ...` runs `python` from the cluster's PATH: make it this venv's.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
# Ray 2.60 turns token authentication on by default; clients (CLI, SDK) need this to use it.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# The tests run Serve the way the project ships it (serve.env): HAProxy, direct ingress, with
# the HAProxy guard's path made absolute as `make serve` does (pytest runs from any directory).
os.environ.update({**local_serve_env(), **os.environ})

import pytest

from tests.figures import FIGURES
from tests.harness import ROOT, RayCluster, ServeTestbed, free_port


def pytest_collection_modifyitems(items):
    """Tests with a Ray of their own (`serve run`, `ray stop`, a local cluster) run first,
    before the session's shared Ray and Serve start: HAProxy binds fixed ports (8404, 9101)
    that a second Serve on the machine cannot take, and `ray stop` would end the shared one."""
    first = [i for i in items if "own_ray" in i.keywords]
    items[:] = first + [i for i in items if "own_ray" not in i.keywords]


@pytest.fixture
def figures(request):
    """figures["key"] = value, reported under the test's name (tests/figures.py)."""
    return FIGURES.setdefault(request.node.name, {})


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("figures")
    for test, values in FIGURES.items():
        terminalreporter.write_line(f"{test}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    (out / "figures.json").write_text(json.dumps(FIGURES, indent=2))


@pytest.fixture(scope="session")
def ray_cluster():
    cluster = RayCluster.start(num_cpus=SHARED_RAY_LOGICAL_CPUS)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """2,000 generated CelebA-format faces (1,600 train / 200 val / 200 test)."""
    from train_job.synthetic import generate

    return generate(tmp_path_factory.mktemp("celeba-synthetic"), 2000, seed=0)


@pytest.fixture(scope="session")
def trained_store(train_data, tmp_path_factory):
    """A store holding a model trained on ``train_data`` (face-attributes/trained, the latest)
    and the same architecture re-initialised (random/r1): tests/trained.py."""
    from tests.trained import train_and_export

    store = tmp_path_factory.mktemp("trained-store")
    train_and_export(train_data, store)
    return store


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """A store with two good versions of a tiny model, v1 (64x64) and v2 (48x48), and the face
    detector (face-detector/latest)."""
    from tests.artifacts import write_tiny_artifact
    from train_job.face_detector import export

    store = tmp_path_factory.mktemp("model-store")
    write_tiny_artifact(str(store), version="v1", input_size=(64, 64))
    write_tiny_artifact(str(store), version="v2", input_size=(48, 48), output_kind="probabilities")
    export(str(store), version="mtcnn-1")
    return store


@pytest.fixture(scope="session")
def serve_testbed(ray_cluster, model_store):
    testbed = ServeTestbed(ray_cluster, http_port=free_port(), model_store=model_store)
    yield testbed
    testbed.shutdown()


@pytest.fixture
def served(serve_testbed):
    """The application at its test baseline (model v1), redeployed if a test changed it."""
    serve_testbed.deploy(serve_testbed.base_config())
    return serve_testbed
