"""Per (step, role, version) counters of a rollout, mergeable across ingress replicas.

Latency is kept as a histogram with fixed log-spaced buckets (not samples) so that replicas'
tallies add up exactly and p50/p99 of the merged one are those of all requests, within one
bucket (+15%), reported as the bucket's upper bound. Two latencies are kept: end to end at the
ingress (what a client waits, queueing included), and the model replica's own time per forward
pass (``ServiceTime``), per batch-size bucket, which the rollout judges (policy.py).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from serve_app.common.protocol import ServiceTime
from serve_app.rollout.compare import Comparison

# Upper bounds 0.25 ms .. ~60 s, each 15% above the previous; one more bucket past the last.
LATENCY_BOUNDS_S = tuple(0.00025 * 1.15**k for k in range(90))
# Forward passes are compared between versions at equal batch sizes: upper bounds of the
# batch-size buckets (1, 2, 3-4, 5-8, ...).
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def batch_bucket(batch: int) -> int:
    return bisect.bisect_left(BATCH_BOUNDS, batch)


def batch_label(bucket: int) -> str:
    low = BATCH_BOUNDS[bucket - 1] + 1 if bucket else 1
    high = BATCH_BOUNDS[bucket] if bucket < len(BATCH_BOUNDS) else None
    return str(high) if low == high else f"{low}-{high or ''}"


def _histogram() -> list[int]:
    return [0] * (len(LATENCY_BOUNDS_S) + 1)


def percentile_ms(counts: list[int], q: float) -> float | None:
    """The q-quantile of a LATENCY_BOUNDS_S histogram, as its bucket's upper bound in ms."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for bound, count in zip((*LATENCY_BOUNDS_S, float("inf")), counts):
        seen += count
        if seen >= rank:
            return round(min(bound, LATENCY_BOUNDS_S[-1]) * 1000, 2)
    return None  # unreachable


Key = tuple[str, str, str]  # (step, role, version)


@dataclass
class VersionTally:
    requests: int = 0  # answers this version gave or failed to give (copies included)
    errors: int = 0  # 5xx / unexpected failures among them (a bad image is not one)
    latency_counts: list[int] = field(default_factory=_histogram)
    # {batch bucket: histogram of the model replica's ms per forward pass}, one entry per image
    service_counts: dict[int, list[int]] = field(default_factory=dict)
    compared: int = 0  # images answered by both versions and compared
    decisions: int = 0  # label decisions compared
    agreed: int = 0
    abs_dp_sum: float = 0.0
    copies_skipped: int = 0  # comparison copies not sent: max_copies_in_flight reached

    def observe(self, seconds: float, error: bool, service: ServiceTime | None = None) -> None:
        self.requests += 1
        self.errors += error
        if not error:
            self.latency_counts[bisect.bisect_left(LATENCY_BOUNDS_S, seconds)] += 1
        if service is not None:
            counts = self.service_counts.setdefault(batch_bucket(service.batch), _histogram())
            counts[bisect.bisect_left(LATENCY_BOUNDS_S, service.ms / 1000)] += 1

    def add(self, comparison: Comparison) -> None:
        self.compared += 1
        self.decisions += comparison.decisions
        self.agreed += comparison.agreed
        self.abs_dp_sum += comparison.abs_dp_sum

    def merge(self, other: VersionTally) -> None:
        for name in ("requests", "errors", "compared", "decisions", "agreed", "copies_skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.abs_dp_sum += other.abs_dp_sum
        self.latency_counts = [a + b for a, b in zip(self.latency_counts, other.latency_counts)]
        for bucket, counts in other.service_counts.items():
            mine = self.service_counts.setdefault(bucket, _histogram())
            self.service_counts[bucket] = [a + b for a, b in zip(mine, counts)]

    def percentile_ms(self, q: float) -> float | None:
        return percentile_ms(self.latency_counts, q)

    def service_summary(self) -> list[dict[str, Any]]:
        """Per batch-size bucket: images counted, p50 and p99 of the pass times (ms)."""
        return [
            {
                "batch": batch_label(bucket),
                "images": sum(counts),
                "p50_ms": percentile_ms(counts, 0.50),
                "p99_ms": percentile_ms(counts, 0.99),
            }
            for bucket, counts in sorted(self.service_counts.items())
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.errors / self.requests, 6) if self.requests else None,
            "p50_ms": self.percentile_ms(0.50),
            "p99_ms": self.percentile_ms(0.99),
            "compared": self.compared,
            "agreement": round(self.agreed / self.decisions, 6) if self.decisions else None,
            "mean_abs_dp": round(self.abs_dp_sum / self.decisions, 6) if self.decisions else None,
            "copies_skipped": self.copies_skipped,
            "service": self.service_summary(),
        }


class Tally:
    """{(step, role, version): VersionTally}; keeps the ``max_steps`` most recent steps."""

    def __init__(self, max_steps: int = 16):
        self.entries: dict[Key, VersionTally] = {}
        self._max_steps = max_steps

    def __bool__(self) -> bool:
        return bool(self.entries)

    def of(self, step: str, role: str, version: str) -> VersionTally:
        return self.entries.setdefault((step, role, version), VersionTally())

    def merge(self, entries: dict[Key, VersionTally]) -> None:
        for key, tally in entries.items():
            self.of(*key).merge(tally)
        steps = list(dict.fromkeys(step for step, _, _ in self.entries))
        for old in steps[: -self._max_steps]:
            self.entries = {k: v for k, v in self.entries.items() if k[0] != old}

    def take(self) -> dict[Key, VersionTally]:
        """The counts so far, leaving this tally empty (what an ingress replica sends)."""
        entries, self.entries = self.entries, {}
        return entries

    def summaries(self) -> list[dict[str, Any]]:
        return [
            {"step": step, "role": role, "version": version, **tally.summary()}
            for (step, role, version), tally in self.entries.items()
        ]
