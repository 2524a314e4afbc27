"""Tools some tests need from outside the venv (a browser, the KubeRay CRDs).

A missing tool FAILS the test with how to install it, so a local run checks what CI checks.
A developer who knowingly goes without one opts out by name:
``FACE_ALLOW_SKIP=browser,crds`` (or ``all``) turns those failures into skips. Under ``CI=true``
the opt-out is ignored: CI never skips a check silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

ALLOW_SKIP_ENV = "FACE_ALLOW_SKIP"
TOOLS = {"browser", "crds"}
CI_VALUES = {"true", "1", "yes"}  # GitHub and most CIs set CI=true; some CI=1


def is_ci(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get("CI", "").strip().lower() in CI_VALUES


def skip_unless_ci(reason: str) -> None:
    """Skip with ``reason`` on a developer's box; under CI nothing may skip: fail instead."""
    if is_ci():
        pytest.fail(f"{reason} (CI: a check that cannot run fails instead of skipping)")
    pytest.skip(reason)


def allowed_to_skip(tool: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``tool`` (one of TOOLS) may be skipped: listed in FACE_ALLOW_SKIP, not CI."""
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}: one of {sorted(TOOLS)}")
    if is_ci(environ):
        return False
    listed = {t.strip() for t in environ.get(ALLOW_SKIP_ENV, "").split(",") if t.strip()}
    return tool in listed or "all" in listed


def require(tool: str, missing: str | None) -> None:
    """Fail (or, when opted out, skip) the calling test if ``missing`` says what is absent.

    missing: None when the tool is there, else what is missing and how to install it.
    """
    if missing is None:
        return
    if allowed_to_skip(tool):
        pytest.skip(f"{missing} ({ALLOW_SKIP_ENV} lists {tool!r})")
    pytest.fail(
        f"{missing}. Install or provide it, or opt out knowingly with {ALLOW_SKIP_ENV}={tool} "
        "(ignored under CI=true)",
        pytrace=False,
    )
