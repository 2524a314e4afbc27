"""What a rollout step must show before the candidate gets more traffic, and the training gate.

Every check compares the candidate with the stable version over the same step, so a slow box or
a busy hour moves both alike.
"""

from __future__ import annotations

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
    return out


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
    if candidate.p99_ms is not None and stable.p99_ms is not None:
        limit = policy.max_p99_ratio * stable.p99_ms + policy.p99_slack_ms
        if candidate.p99_ms > limit:
            reasons.append(
                f"p99 {candidate.p99_ms:.0f} ms > {limit:.0f} ms "
                f"({policy.max_p99_ratio}x stable's {stable.p99_ms:.0f} ms + "
                f"{policy.p99_slack_ms:.0f} ms)"
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
