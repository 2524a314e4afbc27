"""The reliability suite: run it alone with `make test-reliability` (pytest -m reliability).
Each scenario records its figures; they are printed at the end of the run and written to
test-output/reliability.json (docs/reliability.md quotes them)."""

from __future__ import annotations

import json

import pytest

from tests.harness import ROOT

FIGURES: dict[str, dict] = {}


@pytest.fixture
def figures(request):
    """figures["key"] = value, reported under the test's name."""
    entry = FIGURES.setdefault(request.node.name, {})
    return entry


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for test, values in FIGURES.items():
        terminalreporter.write_line(f"{test}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    (out / "reliability.json").write_text(json.dumps(FIGURES, indent=2))
