"""The rollout's edits of the application's Serve config (what ``serve deploy`` takes).

Each edit touches only fields Serve applies in place: the RolloutMonitor's and the models'
``user_config`` (a reconfigure) and the candidate's ``autoscaling_config`` (replica count), so a
rollout restarts no replica and drops no request (and never reconfigures the Ingress: see
serve_app/rollout/monitor.py). The functions are pure: config in, config out.
"""

from __future__ import annotations

import copy
from typing import Any

from serve_app.rollout.config import CANDIDATE_DEPLOYMENT, STABLE_DEPLOYMENT

MONITOR_DEPLOYMENT = "RolloutMonitor"  # its user_config holds the rollout's settings
HTTP_OPTION_KEYS = ("host", "port", "root_path", "request_timeout_s", "keep_alive_timeout_s")


def deploy_config(details: dict[str, Any]) -> dict[str, Any]:
    """Serve's REST details (GET /api/serve/applications/) -> the declarative config deployed
    now, every application included (a PUT replaces them all)."""
    apps = [a.get("deployed_app_config") for a in details.get("applications", {}).values()]
    if not apps or any(a is None for a in apps):
        raise ValueError(
            "an application was not deployed from a config file (serve run/deploy config.yaml); "
            "the rollout edits the deployed config and needs one"
        )
    http = details.get("http_options") or {}
    return {
        "proxy_location": details.get("proxy_location") or "EveryNode",
        "http_options": {k: http[k] for k in HTTP_OPTION_KEYS if http.get(k) is not None},
        "applications": apps,
    }


def application(config: dict[str, Any], name: str) -> dict[str, Any]:
    for app in config["applications"]:
        if app["name"] == name:
            return app
    raise ValueError(
        f"no application {name!r} deployed (found {[a['name'] for a in config['applications']]})"
    )


def deployment_entry(app: dict[str, Any], name: str) -> dict[str, Any]:
    """The app's ``deployments:`` entry for ``name``, added if the config has none."""
    entries = app.setdefault("deployments", [])
    for entry in entries:
        if entry["name"] == name:
            return entry
    entries.append({"name": name})
    return entries[-1]


def rollout_of(config: dict[str, Any], app_name: str) -> dict[str, Any]:
    """The rollout settings as deployed ({} when the config says nothing)."""
    monitor = deployment_entry(copy.deepcopy(application(config, app_name)), MONITOR_DEPLOYMENT)
    return (monitor.get("user_config") or {}).get("rollout") or {}


def with_candidate(config: dict[str, Any], app_name: str, model_uri: str) -> dict[str, Any]:
    """The candidate deployment serving ``model_uri`` on at least one replica (the rollout
    settings unchanged: it is sent traffic only once it runs, by ``with_rollout``)."""
    config = copy.deepcopy(config)
    app = application(config, app_name)
    stable = deployment_entry(app, STABLE_DEPLOYMENT)
    candidate = deployment_entry(app, CANDIDATE_DEPLOYMENT)
    # The candidate's own settings where its entry has them, else the stable's.
    user_config = {**(stable.get("user_config") or {}), **(candidate.get("user_config") or {})}
    user_config["model_uri"] = model_uri
    candidate["user_config"] = user_config
    scaling = dict(candidate.get("autoscaling_config") or stable.get("autoscaling_config") or {})
    scaling["min_replicas"] = max(1, scaling.get("min_replicas", 0))
    scaling["initial_replicas"] = max(scaling["min_replicas"], scaling.get("initial_replicas") or 0)
    scaling["max_replicas"] = max(scaling["initial_replicas"], scaling.get("max_replicas", 1))
    candidate["autoscaling_config"] = scaling
    candidate.pop("num_replicas", None)
    if "ray_actor_options" not in candidate and "ray_actor_options" in stable:
        candidate["ray_actor_options"] = copy.deepcopy(stable["ray_actor_options"])
    return config


def with_rollout(
    config: dict[str, Any],
    app_name: str,
    mode: str,
    percent: float,
    step: str,
    sticky_header: str | None,
) -> dict[str, Any]:
    """Ingresses in ``mode`` for ``percent`` of requests, counts under ``step``."""
    config = copy.deepcopy(config)
    rollout = {"mode": mode, "percent": percent, "step": step, "sticky_header": sticky_header}
    _set_rollout(application(config, app_name), rollout)
    return config


def without_candidate(config: dict[str, Any], app_name: str) -> dict[str, Any]:
    """Rollout off: the Ingress sends the candidate nothing; its replicas go (min 0)."""
    config = copy.deepcopy(config)
    app = application(config, app_name)
    _set_rollout(app, {"mode": "off"})
    candidate = deployment_entry(app, CANDIDATE_DEPLOYMENT)
    scaling = dict(candidate.get("autoscaling_config") or {"max_replicas": 1})
    scaling["min_replicas"] = 0
    scaling["initial_replicas"] = 0
    candidate["autoscaling_config"] = scaling
    candidate.pop("num_replicas", None)
    return config


def with_stable_model(config: dict[str, Any], app_name: str, model_uri: str) -> dict[str, Any]:
    config = copy.deepcopy(config)
    stable = deployment_entry(application(config, app_name), STABLE_DEPLOYMENT)
    stable["user_config"] = {**(stable.get("user_config") or {}), "model_uri": model_uri}
    return config


def stable_model_uri(config: dict[str, Any], app_name: str) -> str | None:
    stable = deployment_entry(copy.deepcopy(application(config, app_name)), STABLE_DEPLOYMENT)
    return (stable.get("user_config") or {}).get("model_uri")


def _set_rollout(app: dict[str, Any], rollout: dict[str, Any]) -> None:
    monitor = deployment_entry(app, MONITOR_DEPLOYMENT)
    monitor["user_config"] = {**(monitor.get("user_config") or {}), "rollout": rollout}
