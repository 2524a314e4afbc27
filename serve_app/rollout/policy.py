"""What a rollout step must show before the candidate gets more traffic, and the training gate.

Every check compares the candidate with the stable version over the same step, so a slow box or
a busy hour moves both alike.

The latency rule compares what each version's own replicas spend per forward pass, at equal
batch sizes (serve_app/common/protocol.py ServiceTime), not the latency clients see. Measured on
the 2-core box (make demo's load, c=8): end to end, a healthy candidate's p99 was 312 ms against
the stable's 155 ms in shadow, because its copies arrive in bursts of up to
max_copies_in_flight and queue behind each other on cores the stable shares, and a fresh
replica's first passes of each batch size are slow (TorchScript re-optimises); per pass at equal
batch sizes, with those first passes left out, the same candidate matched the stable. A
candidate made twice as slow on purpose still fails it (tests/reliability/test_canary.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Policy:
    min_requests: int = 200  # candidate answers, and comparisons, a step needs before judging
    min_agreement: float = 0.90  # share of label decisions equal to the stable's
    max_error_rate: float = 0.01  # candidate failures (each answered by the stable instead)
    max_p99_ratio: float = 1.5  # candidate p99 <= this x the stable's p99 + p99_slack_ms
    p99_slack_ms: float = 10.0  # absolute room: a 4 ms vs 2 ms p99 is not a regression
    max_auroc_drop: float = 0.01  # the gate: candidate val AUROC >= serving's - this
    # a batch-size bucket is compared once both versions have this many images in it
    min_service_images: int = 20


@dataclass
class StepFigures:
    """One step's counts for one role, summed over its /rollout entries."""

    requests: int = 0
    errors: int = 0
    compared: int = 0
    agreement: float | None = None
    mean_abs_dp: float | None = None
    p99_ms: float | None = None
    versions: list[str] = field(default_factory=list)
    # {batch bucket: (images, p99 ms of the pass time)} of the version's replicas
    service: dict[str, tuple[int, float | None]] = field(default_factory=dict)

    def line(self) -> str:
        def pct(x: float | None) -> str:
            return "-" if x is None else f"{100 * x:.1f}%"

        rate = self.errors / self.requests if self.requests else None
        p99 = "-" if self.p99_ms is None else f"{self.p99_ms:.0f} ms"
        return (
            f"{self.requests} answers, {self.errors} errors ({pct(rate)}), p99 {p99}, "
            f"{self.compared} compared, agreement {pct(self.agreement)}"
        )


def figures(
    entries: list[dict[str, Any]], step: str, role: str, version: str | None
) -> StepFigures:
    """Sum a step's entries of ``role``; agreement and p99 from ``version``'s entry (the one the
    rollout is about; errors are charged to whatever version the role last answered with)."""
    mine = [e for e in entries if e["step"] == step and e["role"] == role]
    out = StepFigures(
        requests=sum(e["requests"] for e in mine),
        errors=sum(e["errors"] for e in mine),
        versions=[e["version"] for e in mine],
    )
    main = [e for e in mine if version is None or e["version"] == version]
    if main:
        best = max(main, key=lambda e: e["requests"])
        out.compared = best["compared"]
        out.agreement, out.mean_abs_dp, out.p99_ms = (
            best["agreement"],
            best["mean_abs_dp"],
            best["p99_ms"],
        )
        out.service = {b["batch"]: (b["images"], b["p99_ms"]) for b in best.get("service", [])}
    return out


@dataclass(frozen=True)
class ServiceComparison:
    """The candidate's pass times against the stable's over the batch buckets both have."""

    ratio: float  # image-weighted geometric mean of candidate p99 / stable p99
    excess_ms: float  # image-weighted mean of candidate p99 - stable p99
    images: int  # images compared (the smaller side's, summed over buckets)
    buckets: tuple[str, ...]

    def line(self) -> str:
        return (
            f"pass time {self.ratio:.2f}x the stable's ({self.excess_ms:+.1f} ms), batch sizes "
            f"{', '.join(self.buckets)}"
        )


def bucket_range(label: str) -> tuple[int, int]:
    """ "3-4" -> (3, 4); "1" -> (1, 1); "513-" -> (513, 513)."""
    low, _, high = label.partition("-")
    return int(low), int(high or low)


def compare_service(
    candidate: StepFigures, stable: StepFigures, min_images: int
) -> ServiceComparison | None:
    """The candidate's p99 pass times against the stable's, over the batch buckets where each
    has min_images images; None until there are such buckets on both sides.

    Equal buckets compare pass for pass. A candidate bucket the stable did not run is compared
    with the stable's nearest one, the way that favours the candidate: per pass when the
    candidate's batches are smaller (a smaller batch takes less), per image when they are larger
    (its time over its largest batch size against the stable's over its smallest), so batch
    sizes alone never fail a healthy candidate (a canary's small share runs small batches; a
    slow candidate's shadow copies pile up into large ones). Per image comparisons are stated
    as a pass of the candidate's largest batch (the stable's time per image times that size), so
    the slack stays milliseconds per pass: per image, a candidate 14x slower than a stable
    of 2 ms passes at 3-4 images was only 9 ms slower, and passed a shadow step."""
    stable_rows = {b: p99 for b, (n, p99) in stable.service.items() if n >= min_images and p99}
    if not stable_rows:
        return None
    rows = []
    for bucket, (c_images, c_p99) in candidate.service.items():
        if c_images < min_images or not c_p99:
            continue
        c_low, c_high = bucket_range(bucket)
        s_bucket = (
            bucket
            if bucket in stable_rows
            else min(stable_rows, key=lambda b: abs(bucket_range(b)[0] - c_low))
        )
        s_p99, s_low = stable_rows[s_bucket], bucket_range(s_bucket)[0]
        if s_bucket == bucket or c_high <= s_low:  # equal or smaller batches: pass for pass
            c_time, s_time = c_p99, s_p99
        else:  # larger batches: per image, scaled to a pass of the candidate's largest batch
            c_time, s_time = c_p99, s_p99 / s_low * c_high
        shown = bucket if s_bucket == bucket else f"{bucket} vs {s_bucket}"
        rows.append((shown, min(c_images, stable.service[s_bucket][0]), c_time, s_time))
    if not rows:
        return None
    weight = sum(w for _, w, _, _ in rows)
    log_ratio = sum(w * math.log(c / s) for _, w, c, s in rows) / weight
    excess = sum(w * (c - s) for _, w, c, s in rows) / weight
    return ServiceComparison(math.exp(log_ratio), excess, weight, tuple(b for b, *_ in rows))


@dataclass(frozen=True)
class Verdict:
    outcome: Literal["wait", "pass", "fail"]
    reasons: tuple[str, ...] = ()


def judge(candidate: StepFigures, stable: StepFigures, policy: Policy) -> Verdict:
    """fail as soon as the errors alone exceed the allowed rate of min_requests (no later
    traffic can bring the rate back); otherwise wait for min_requests answers and comparisons,
    then pass or fail on all checks."""
    allowed_errors = policy.max_error_rate * max(candidate.requests, policy.min_requests)
    if candidate.errors > allowed_errors:
        return Verdict(
            "fail",
            (
                f"candidate failed {candidate.errors} of {candidate.requests} requests "
                f"(allowed {policy.max_error_rate:.1%} of at least {policy.min_requests})",
            ),
        )
    if candidate.requests < policy.min_requests or candidate.compared < policy.min_requests:
        return Verdict("wait")
    reasons = []
    if candidate.agreement is None or candidate.agreement < policy.min_agreement:
        reasons.append(
            f"agreement {candidate.agreement:.1%} < {policy.min_agreement:.1%}"
            if candidate.agreement is not None
            else "no decisions compared"
        )
    service = compare_service(candidate, stable, policy.min_service_images)
    if service is None and not reasons:
        return Verdict("wait")  # the pass times, once enough of them came, judge it too
    slower = service is not None and service.ratio > policy.max_p99_ratio
    if slower and service.excess_ms > policy.p99_slack_ms:
        reasons.append(
            f"{service.line()}: over {policy.max_p99_ratio}x and {policy.p99_slack_ms:.0f} ms "
            "(p99 per forward pass at equal batch sizes)"
        )
    return Verdict("fail", tuple(reasons)) if reasons else Verdict("pass")


def auroc_gate(candidate: dict[str, Any], serving: dict[str, Any], max_drop: float) -> str | None:
    """None when the candidate may be rolled out, else why not. ``candidate`` / ``serving``:
    artifact metadata (``metrics.val_auroc``, written at export)."""
    new = (candidate.get("metrics") or {}).get("val_auroc")
    old = (serving.get("metrics") or {}).get("val_auroc")
    name = f"{candidate.get('name')}/{candidate.get('version')}"
    if new is None:
        return f"{name} has no validation AUROC in its metadata (export it with train_job)"
    if old is None:
        return None  # nothing to compare with: the serving artifact predates the metric
    if new < old - max_drop:
        return (
            f"{name}'s validation AUROC {new:.4f} is below the serving version "
            f"{serving.get('version')}'s {old:.4f} by {old - new:.4f}, more than the allowed "
            f"{max_drop:.4f} (--max-auroc-drop)"
        )
    return None
