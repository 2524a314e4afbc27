"""Ray Serve application: an HTTP ingress in front of separately autoscaled, micro-batched
TorchScript model deployments. Never imports training code: the model artifact (model_store) is
the only contract.

The folders are the layers, top down:

- ``app.py``: the application builder (``serve run config.yaml`` -> ``build_app``), and
  ``config.py``, the typed config it validates at deploy time;
- one package per deployment: ``ingress/`` (HTTP: decode -> predict -> encode), ``model/``
  (FaceAttributeModel and CandidateModel: batched inference), ``rollout/`` (RolloutMonitor and
  the rollout command);
- ``api/``: the HTTP contract (routes, query and response models, error codes, the OpenAPI
  document), importable without Ray or torch: the client (``client.py``) reads its types there;
- ``common/``: what the deployments share (the messages between them, image decoding, errors,
  metrics, batching).

``haproxy_guard.py`` wraps Serve's HAProxy (serve.env names its path).
"""
