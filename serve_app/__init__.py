"""Ray Serve application: an HTTP ingress (decode -> predict -> encode) in front of a separately
autoscaled, micro-batched TorchScript model deployment. Never imports training code: the model
artifact (model_store) is the only contract."""
