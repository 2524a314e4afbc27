"""``python -m serve_app.rollout --to <store>/<name>/<version>``: shadow -> 5% -> 25% -> 100%,
judged at each step against the stable version, then promote or roll back, by itself.

It talks to Serve only through the dashboard's REST API (the one ``serve deploy`` uses, with the
token Ray's auth needs: RAY_AUTH_MODE=token and ~/.ray/auth_token or RAY_AUTH_TOKEN) and to the
application over HTTP (``/rollout``, ``/metadata``), so it runs the same against a local
``serve run`` and a remote cluster. Exit status: 0 promoted, 1 rolled back, 2 refused to start.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from serve_app.config import DEFAULT_MODEL_URI
from serve_app.rollout.config import CANDIDATE_DEPLOYMENT
from serve_app.rollout.policy import (
    Policy,
    StepFigures,
    Verdict,
    auroc_gate,
    compare_service,
    figures,
    judge,
)
from serve_app.rollout.serve_config import (
    deploy_config,
    rollout_of,
    stable_model_uri,
    with_candidate,
    with_rollout,
    with_stable_model,
    without_candidate,
)

PROMOTED, ROLLED_BACK, REFUSED = 0, 1, 2
# Serve's own word for a replica Ray cannot place (ray/serve/_private/deployment_state.py), set
# on the deployment's status message after RAY_SERVE_SLOW_STARTUP_WARNING_S (30 s).
PENDING_ALLOCATION = re.compile(
    r"taken more than \d+s to be scheduled.*?Resources required for each replica: "
    r"(?P<required>.+?), total resources available: (?P<available>.+?)\. Use",
    re.DOTALL,
)


class Unplaceable(Exception):
    """Ray cannot place the candidate's replica and no node is being added for it."""


@dataclass(frozen=True)
class Step:
    name: str  # shadow, canary-5, ...
    mode: str  # shadow | canary
    percent: float


def parse_steps(text: str, shadow_percent: float) -> list[Step]:
    """ "shadow,5,25,100" -> [Step(shadow 100%), Step(canary 5%), ...]; must end at 100."""
    steps = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "shadow":
            steps.append(Step("shadow", "shadow", shadow_percent))
            continue
        percent = float(part.rstrip("%"))
        if not 0 < percent <= 100:
            raise argparse.ArgumentTypeError(f"canary share {part!r} must be in (0, 100]")
        steps.append(Step(f"canary-{percent:g}", "canary", percent))
    if not steps or steps[-1].mode != "canary" or steps[-1].percent != 100:
        raise argparse.ArgumentTypeError("--steps must end with 100 (the candidate answers all)")
    return steps


class Rollout:
    """One rollout against one application; every Serve change goes through ``_deploy``."""

    def __init__(
        self,
        args: argparse.Namespace,
        serve_api: Any,
        app_http: httpx.Client,
        dashboard_http: httpx.Client | None = None,
    ):
        self.args = args
        self.serve_api = serve_api  # ray's ServeSubmissionClient (or a stand-in)
        self.http = app_http
        self.http_dashboard = dashboard_http or httpx.Client(base_url=args.dashboard)
        self.policy = Policy(
            min_requests=args.min_requests,
            min_agreement=args.min_agreement,
            max_error_rate=args.max_error_rate,
            max_p99_ratio=args.max_p99_ratio,
            p99_slack_ms=args.p99_slack_ms,
            max_auroc_drop=args.max_auroc_drop,
        )
        self.report: dict[str, Any] = {"to": args.to, "steps": []}
        self.started = time.monotonic()

    # ---- Serve and the application -----------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return deploy_config(self.serve_api.get_serve_details())

    def _deploy(self, config: dict[str, Any]) -> None:
        self.serve_api.deploy_applications(config)

    def snapshot(self) -> dict[str, Any]:
        response = self.http.get("/rollout")
        response.raise_for_status()
        return response.json()

    def serving(self) -> dict[str, Any]:
        response = self.http.get("/metadata")
        response.raise_for_status()
        return response.json()

    def candidate(self) -> dict[str, Any]:
        """The candidate deployment's entry in Serve's REST details ({} if none)."""
        app = self.serve_api.get_serve_details()["applications"].get(self.args.app) or {}
        return (app.get("deployments") or {}).get(CANDIDATE_DEPLOYMENT) or {}

    def candidate_replicas(self) -> tuple[str, int]:
        """(the candidate deployment's status, its RUNNING replicas)."""
        deployment = self.candidate()
        running = [r for r in deployment.get("replicas", []) if r.get("state") == "RUNNING"]
        return deployment.get("status", "MISSING"), len(running)

    def placement_problem(self) -> str | None:
        """Why Ray cannot place the candidate, from Ray's own state: Serve's message about a
        replica pending allocation, unless the autoscaler is adding nodes (then it may fit)."""
        found = PENDING_ALLOCATION.search(self.candidate().get("message") or "")
        if found is None or self.nodes_pending():
            return None
        return (
            f"{CANDIDATE_DEPLOYMENT} needs {found['required']} per replica; the cluster has "
            f"{found['available']} available and is adding no node (`ray status` says more)"
        )

    def nodes_pending(self) -> bool:
        """Whether Ray's autoscaler is launching nodes (GET /api/cluster_status)."""
        try:
            status = self.http_dashboard.get("/api/cluster_status", timeout=10).json()
            text = str((status.get("data") or {}).get("autoscalingStatus") or "")
        except (httpx.HTTPError, ValueError):
            return False
        pending = (
            text.split("Pending:", 1)[1].split("Recent failures:", 1)[0]
            if "Pending:" in text
            else ""
        )
        return bool(pending.strip()) and "no pending nodes" not in pending

    def wait_for_candidate(self) -> bool:
        """Until a candidate replica runs (True), or the ready timeout (False); raises
        Unplaceable as soon as Ray says it cannot place one."""

        def placed() -> bool:
            if self.candidate_replicas()[1] > 0:
                return True
            problem = self.placement_problem()
            if problem:
                raise Unplaceable(problem)
            return False

        return self._wait(placed, self.args.ready_timeout)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {text}", flush=True)

    # ---- the walk ----------------------------------------------------------------------------

    def run(self, candidate_meta: dict[str, Any]) -> int:
        version = candidate_meta["version"]
        self.report["version"] = version
        tag = f"{version[:40]}@{int(time.time()) % 100000}"
        for step in parse_steps(self.args.steps, self.args.shadow_percent):
            verdict, cand, stable = self.run_step(step, f"{tag}/{step.name}", version)
            self.report["steps"].append(
                {
                    "step": step.name,
                    "outcome": verdict.outcome,
                    "reasons": list(verdict.reasons),
                    "candidate": asdict(cand),
                    "stable": asdict(stable),
                    "at_s": round(time.monotonic() - self.started, 1),
                }
            )
            if verdict.outcome != "pass":
                self.roll_back("; ".join(verdict.reasons))
                return ROLLED_BACK
        self.promote(version)
        return PROMOTED

    def run_step(
        self, step: Step, label: str, version: str
    ) -> tuple[Verdict, StepFigures, StepFigures]:
        share = "copies to the candidate" if step.mode == "shadow" else "answered by the candidate"
        self.say(f"step {step.name}: {step.percent:g}% of requests {share}")
        if self.candidate_replicas()[1] == 0:  # first step: a replica, before any traffic
            self._deploy(with_candidate(self.config(), self.args.app, self.args.to))
            self.wait_for_candidate()
        sticky = self.args.sticky_header or None
        self._deploy(
            with_rollout(self.config(), self.args.app, step.mode, step.percent, label, sticky)
        )
        if not self._wait(lambda: self._step_live(label), self.args.ready_timeout):
            status, running = self.candidate_replicas()
            reason = f"the step did not take effect in {self.args.ready_timeout:.0f} s "
            reason += f"(candidate {status}, {running} running replicas)"
            return Verdict("fail", (reason,)), StepFigures(), StepFigures()
        deadline = time.monotonic() + self.args.step_timeout
        last_print = 0.0
        while True:
            entries = self.snapshot()["versions"]
            cand = figures(entries, label, "candidate", version)
            stable = figures(entries, label, "stable", None)
            verdict = judge(cand, stable, self.policy)
            if verdict.outcome == "wait":
                status, running = self.candidate_replicas()
                if running == 0:
                    verdict = Verdict("fail", (f"the candidate has no running replica ({status})",))
                elif time.monotonic() > deadline:
                    verdict = Verdict("fail", (self._short_of(cand),))
            if verdict.outcome != "wait":
                self.say(f"  candidate {version}: {cand.line()}")
                self.say(f"  stable: {stable.line()}")
                service = compare_service(cand, stable, self.policy.min_service_images)
                self.say(
                    f"  candidate {service.line()}"
                    if service
                    else "  pass time: not compared (no batch size with "
                    f"{self.policy.min_service_images} images on both versions)"
                )
                self.say(
                    f"  {verdict.outcome}"
                    + (": " + "; ".join(verdict.reasons) if verdict.reasons else "")
                )
                return verdict, cand, stable
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                self.say(f"  ... {cand.requests} answers, {cand.compared} compared")
            time.sleep(self.args.poll_s)

    def _short_of(self, cand: StepFigures) -> str:
        """Why a step timed out still waiting."""
        need, took = self.policy.min_requests, f"{self.args.step_timeout:.0f} s"
        if cand.requests < need or cand.compared < need:
            return f"only {cand.requests} answers / {cand.compared} comparisons in {took} (need {need})"
        return (
            f"no batch size had {self.policy.min_service_images} pass times of both versions "
            f"in {took}: the latency rule could not judge"
        )

    def _step_live(self, label: str) -> bool:
        """Three answers in a row from ingress replicas running the step, and a candidate
        replica running (replicas reconfigure one by one)."""
        for _ in range(3):
            if self.snapshot()["config"].get("step") != label:
                return False
        return self.candidate_replicas()[1] > 0

    def promote(self, version: str) -> None:
        """The stable loads the candidate's artifact while the candidate still answers all; then
        the rollout goes off and the candidate's replicas go."""
        self.say(f"promote: the stable deployment loads {self.args.to}")
        self._deploy(with_stable_model(self.config(), self.args.app, self.args.to))
        if not self._wait(
            lambda: self.serving().get("version") == version, self.args.ready_timeout
        ):
            self.roll_back(f"the stable deployment did not load {version}")
            raise SystemExit(ROLLED_BACK)
        self._turn_off()
        self.report["outcome"] = "promoted"
        self.say(f"promoted: {version} is the stable version; candidate off")

    def roll_back(self, reason: str) -> None:
        self.say(f"roll back: {reason}")
        self._turn_off()
        self.report.update(outcome="rolled back", reason=reason)
        self.say(f"rolled back: the stable version {self.serving().get('version')} answers all")

    def _turn_off(self) -> None:
        """Rollout off, the candidate's replicas going; back once the ingress says so."""
        self._deploy(without_candidate(self.config(), self.args.app))
        self._wait(lambda: self.snapshot()["config"]["mode"] == "off", self.args.ready_timeout)

    @staticmethod
    def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return True
            except (httpx.HTTPError, KeyError):
                pass  # a replica reconfiguring; ask again
            time.sleep(interval)
        return False


def resolve_target(to: str, config: dict[str, Any], app: str) -> str:
    """``--to`` -> the explicit version directory the rollout walks to, resolved once here (the
    candidate and the promote get that version, whatever the pointer says later). ``latest``:
    the ``latest`` pointer of the store the stable version is served from; a pointer path
    (``<store>/<name>/latest``): the version it names now. Raises ArtifactError."""
    from model_store import resolve_model_uri
    from model_store.store import LATEST_FILE

    if to == "latest":
        stable = (stable_model_uri(config, app) or DEFAULT_MODEL_URI).rstrip("/")
        version_dir = resolve_model_uri(stable)
        to = posixpath.join(posixpath.dirname(version_dir), LATEST_FILE)
    return resolve_model_uri(to)


def gate(
    args: argparse.Namespace, serving: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """(candidate metadata, None) or (None, why the rollout may not start)."""
    from model_store import load_artifact
    from model_store.store import ArtifactError

    try:
        artifact = load_artifact(args.to, trusted_public_key=args.trusted_public_key)
    except ArtifactError as e:
        return None, f"the candidate artifact is refused: {e}"
    meta = artifact.metadata.model_dump(mode="json")
    if meta["version"] == serving.get("version"):
        return None, f"{meta['version']} is already the serving version"
    if args.no_gate:
        return meta, None
    return meta, auroc_gate(meta, serving, args.max_auroc_drop)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serve_app.rollout",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--to",
        help="candidate artifact: <store>/<name>/<version> as Serve reads it; a pointer "
        "(<store>/<name>/latest) or `latest` (the pointer beside the serving version) is "
        "resolved once, here",
    )
    p.add_argument("--abort", action="store_true", help="roll back a rollout in progress and exit")
    p.add_argument("--dashboard", default="http://127.0.0.1:8265", help="Ray dashboard (REST API)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the application's HTTP address")
    p.add_argument("--app", default="face-attributes", help="Serve application name")
    p.add_argument("--steps", default="shadow,5,25,100", help="shadow, then canary shares (%%)")
    p.add_argument("--shadow-percent", type=float, default=100.0, help="share copied in shadow")
    p.add_argument("--sticky-header", default="X-Client-Id", help="'' for no stickiness")
    p.add_argument("--min-requests", type=int, default=200, help="answers and comparisons per step")
    p.add_argument("--min-agreement", type=float, default=0.90, help="share of label decisions")
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument(
        "--max-p99-ratio",
        type=float,
        default=1.5,
        help="fail when the candidate replicas' p99 time per forward pass is over this x the "
        "stable's at equal batch sizes (and over it by --p99-slack-ms)",
    )
    p.add_argument(
        "--p99-slack-ms", type=float, default=10.0, help="absolute room in the latency rule"
    )
    p.add_argument("--max-auroc-drop", type=float, default=0.01, help="gate: val AUROC margin")
    p.add_argument("--no-gate", action="store_true", help="skip the validation AUROC gate")
    p.add_argument("--trusted-public-key", default=None, help="require the artifact's signature")
    p.add_argument("--step-timeout", type=float, default=600.0, help="seconds to gather a step")
    p.add_argument(
        "--ready-timeout", type=float, default=300.0, help="seconds for a change to land"
    )
    p.add_argument("--poll-s", type=float, default=1.0)
    p.add_argument("--report", default=None, help="write the steps' figures here as JSON")
    p.add_argument(
        "--api-key",
        default=os.environ.get("FACE_API_KEY"),
        help="for an application with API keys (default: FACE_API_KEY); /rollout and /metadata "
        "need one there",
    )
    return p


def app_headers(args: argparse.Namespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.abort and not args.to:
        parser().error("--to is required (or --abort)")
    parse_steps(args.steps, args.shadow_percent)  # a bad --steps fails before anything changes
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    serve_api = ServeSubmissionClient(args.dashboard)
    dashboard_headers = get_auth_headers_if_auth_enabled({})  # Ray's token, as the SDK sends it
    with (
        httpx.Client(base_url=args.url, timeout=10, headers=app_headers(args)) as app_http,
        httpx.Client(base_url=args.dashboard, headers=dashboard_headers) as dashboard_http,
    ):
        rollout = Rollout(args, serve_api, app_http, dashboard_http)
        if args.abort:
            rollout.roll_back("--abort")
            return ROLLED_BACK
        in_progress = rollout_of(rollout.config(), args.app)
        if in_progress.get("mode", "off") != "off":
            print(f"refused: a rollout is in progress ({in_progress.get('step')}); "
                  "finish it or run with --abort", file=sys.stderr)  # fmt: skip
            return REFUSED
        from model_store import ArtifactError

        try:
            resolved = resolve_target(args.to, rollout.config(), args.app)
        except ArtifactError as e:
            print(f"refused: cannot resolve --to {args.to}: {e}", file=sys.stderr)
            return REFUSED
        if resolved != args.to:
            rollout.say(f"--to {args.to}: {resolved}")
            args.to = resolved
            rollout.report["to"] = resolved
        serving = rollout.serving()
        meta, refusal = gate(args, serving)
        if refusal:
            print(f"refused: {refusal}", file=sys.stderr)
            return REFUSED
        rollout.say(
            f"rollout {args.app}: {serving.get('version')} -> {meta['version']} ({args.to})"
        )
        signal.signal(signal.SIGTERM, _interrupt)  # a stopped job rolls back like Ctrl-C
        try:
            outcome = rollout.run(meta)
        except KeyboardInterrupt:
            rollout.roll_back("interrupted")
            outcome = ROLLED_BACK
        except Unplaceable as e:  # nothing was judged: the rollout could not start
            rollout.roll_back(f"cannot place the candidate: {e}")
            print(f"refused: cannot place the candidate: {e}", file=sys.stderr)
            outcome = REFUSED
        except Exception as e:  # Serve or the app stopped answering mid-step: stable it is
            rollout.roll_back(f"{type(e).__name__}: {e}")
            outcome = ROLLED_BACK
        finally:
            if args.report:
                with open(args.report, "w") as f:
                    json.dump(rollout.report, f, indent=1)
        return outcome
