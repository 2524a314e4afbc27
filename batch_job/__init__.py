"""Offline batch inference with Ray Data: label a collection of images with a model artifact.

    python -m batch_job --model-uri models/face-attributes/latest --input photos/ --output out/

Started like training: locally (``ray.init()`` starts a Ray, or joins the one ``RAY_ADDRESS``
names) or on a cluster with ``ray job submit -- python -m batch_job ...``. The same artifact,
decode, preprocessing, forward pass and thresholds as serving, by importing serving's code
(serve_app.common.decode, serve_app.model.inference, serve_app.ingress.faces,
serve_app.detector.cascade): one implementation, so the job's answers are /classify's.

- ``inputs``: --input -> the listed image paths; path -> bytes (model_store's filesystems);
- ``stages``: the Ray Data stages (decode tasks, face finder and model actor pools);
- ``schema``: the Parquet columns;
- ``job``: the driver (pipeline, write, read-back check and summary); ``config``: the options.
"""
