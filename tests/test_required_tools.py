"""A missing browser or missing KubeRay CRDs fail the run unless the developer opts out by name;
CI (CI=true) never skips them. See tests/required.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.harness import ROOT
from tests.required import allowed_to_skip


@pytest.mark.parametrize(
    ("environ", "tool", "expected"),
    [
        ({}, "browser", False),
        ({"FACE_ALLOW_SKIP": "browser"}, "browser", True),
        ({"FACE_ALLOW_SKIP": "crds, browser"}, "crds", True),
        ({"FACE_ALLOW_SKIP": "crds"}, "browser", False),
        ({"FACE_ALLOW_SKIP": "all"}, "crds", True),
        ({"FACE_ALLOW_SKIP": "all", "CI": "true"}, "crds", False),
        ({"FACE_ALLOW_SKIP": "browser", "CI": "true"}, "browser", False),
        ({"FACE_ALLOW_SKIP": "all", "CI": "1"}, "crds", False),  # CI=1 is CI too
        ({"FACE_ALLOW_SKIP": "all", "CI": "false"}, "crds", True),
    ],
)
def test_only_a_named_opt_out_outside_ci_allows_a_skip(environ, tool, expected):
    assert allowed_to_skip(tool, environ) is expected


def test_unknown_tool_name_is_refused():
    with pytest.raises(ValueError, match="unknown tool"):
        allowed_to_skip("chromium", {"FACE_ALLOW_SKIP": "all"})


def run_manifest_tests(**env: str) -> subprocess.CompletedProcess:
    """The manifest tests in a child pytest with the CRDs pointed at a directory that is empty."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "FACE_ALLOW_SKIP")}
    environ.update(KUBERAY_CRDS_DIR=str(ROOT / "tests" / "no-such-crds-dir"), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_deploy_manifests.py", "-k", "validates_against_crd"],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_missing_crds_fail_a_local_run_with_the_hint():
    result = run_manifest_tests()
    assert result.returncode == 1, result.stdout
    assert "KUBERAY_CRDS_DIR" in result.stdout and "FACE_ALLOW_SKIP=crds" in result.stdout


def test_missing_crds_skip_only_when_opted_out():
    assert run_manifest_tests(FACE_ALLOW_SKIP="crds").returncode == 0
    assert run_manifest_tests(FACE_ALLOW_SKIP="crds", CI="true").returncode == 1
