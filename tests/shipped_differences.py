"""Where the suite does not run what ships, in one place, each with its reason.

tests/test_shipped_differences.py fails when the harness's baseline config (tests/harness.py
base_config) differs from config.yaml anywhere not listed here. The scenarios that must run what
ships (the shipped scenario: `serve run config.yaml` with `make serve`'s environment and Ray's
real CPU count; tests/reliability/test_shipped.py) change only the port and the model store's
paths.
"""

from __future__ import annotations

# The shared Ray of the session (tests/conftest.py) declares more CPUs than the box has: the
# Serve app stays deployed while Ray Train jobs (2 workers x 1 CPU) run on the same Ray, which
# Ray could not place beside the app's replicas on 2 logical CPUs. Replicas keep their shipped
# num_cpus; only the node is bigger.
SHARED_RAY_LOGICAL_CPUS = 8

# An Ingress replica being replaced (any change of the app's args rebuilds the app) stays up
# RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (Ray's default 30 s) so that load balancers in
# front can drop it; here HAProxy alone is in front and reloads in ~1 s. 5 s keeps the drain
# (and HAProxy's replay of what it took) and makes each rebuild ~25 s shorter: measured, a
# rebuild went live in 35 s with the default, the old replica stopping 30 s after its stop.
INGRESS_DRAIN_S = 5

# dotted key (tests/config_diff.py's flattening) -> why the harness changes it
HARNESS_CHANGES: dict[str, str] = {
    "http_options.port": "a free port: the shared Ray's Serve must not take 8000 from a user",
    "args.max_body_mb": "1 MB: the body-limit tests send bodies just over it quickly (the "
    "shipped 10 MB is tested once, tests/reliability/test_shipped.py)",
    "args.max_image_pixels": "4,000,000: the decompression-bomb tests stay small",
    "args.device": "cpu: the suite runs where there is no GPU",
    "FaceAttributeModel.user_config.model_uri": "the session's store (v1, v2 tiny models)",
    "FaceAttributeModel.autoscaling_config.max_replicas": "1: a test that wants two says so; "
    "an autoscaled second replica would make replica-kill tests racy",
    "CandidateModel.user_config.model_uri": "a candidate replica a rollout test left must find "
    "a model when a later redeploy restarts it (the stable's, not the code default)",
    "CandidateModel.user_config.max_batch_size": "as the stable's (the same copied user_config)",
    "CandidateModel.user_config.batch_wait_timeout_s": "as the stable's",
    "FaceDetector.user_config.model_uri": "the session's store's face detector",
    "FaceDetector.autoscaling_config.max_replicas": "1, as the model's",
    "Ingress.autoscaling_config.max_replicas": "1: replica-kill and canary tests count one",
}
