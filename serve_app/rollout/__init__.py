"""Shadow and canary rollouts of a candidate model version inside the running application.

The application holds two model deployments: ``FaceAttributeModel`` (stable) and
``CandidateModel`` (the same class, no replicas until a rollout gives it an artifact). The
Ingress's ``user_config`` (``rollout:``, :class:`serve_app.rollout.config.RolloutConfig`) says what
the candidate gets: nothing (``off``), a shadow copy of a share of requests (its answers only
compared with the stable's), or a share of the requests themselves (``canary``). Every one of
these is a lightweight ``serve deploy`` change (user_config, autoscaling), so no replica restarts
and no request is dropped while a rollout walks its steps.

- ``config``: the Ingress's rollout settings.
- ``traffic``: per request: which version answers, which one gets a copy, the fallback to
  stable when the candidate fails, the tally of both.
- ``compare``: agreement of two versions' answers on one image.
- ``stats``: per (step, role, version) counters and latency histograms, merged across ingress
  replicas by ``monitor`` (a one-replica deployment) and served at ``/rollout`` and ``/metadata``.
- ``policy`` / ``cli``: ``python -m serve_app.rollout --to <store>/<name>/<version>`` walks
  shadow -> 5% -> 25% -> 100% through Serve's REST API and promotes or rolls back by itself.
"""
