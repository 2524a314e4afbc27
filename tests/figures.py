"""Figures the scenarios measure (recall, 503 counts, timings), reported at the end of the run
and written to test-output/figures.json (tests/reliability's also to reliability.json): the docs
quote them."""

from __future__ import annotations

FIGURES: dict[str, dict] = {}  # test name -> {figure: value}
