"""The reliability suite: run it alone with `make test-reliability` (pytest -m reliability).
Each scenario records its figures; they are printed at the end of the run and written to
test-output/reliability.json (docs/reliability.md quotes them)."""

from __future__ import annotations

import json

import pytest

from tests.figures import FIGURES
from tests.harness import ROOT

RELIABILITY_TESTS: set[str] = set()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)
            RELIABILITY_TESTS.add(item.name)


def pytest_terminal_summary(terminalreporter):
    mine = {t: v for t, v in FIGURES.items() if t in RELIABILITY_TESTS}
    if not mine:
        return
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    (out / "reliability.json").write_text(json.dumps(mine, indent=2))
