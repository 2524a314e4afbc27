# syntax=docker/dockerfile:1
# The project's image, on the official Ray image of the Ray version pyproject.toml pins.
#   CPU (head, ingress workers):  docker build -t REGISTRY/face-attributes:0.1.0-cpu .
#   GPU (model and training):     docker build --build-arg RAY_IMAGE_VARIANT=py311-gpu \
#                                   -t REGISTRY/face-attributes:0.1.0-gpu .
# Runs as the image's non-root user `ray`; holds no secrets (credentials come from the cluster).
ARG RAY_VERSION=2.60.0
ARG RAY_IMAGE_VARIANT=py311-cpu
FROM rayproject/ray:${RAY_VERSION}-${RAY_IMAGE_VARIANT}

# Optional: a PyTorch wheel index (e.g. PyTorch's CPU-only index keeps the CPU image small).
ARG TORCH_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 RAY_AUTH_MODE=token
# Ray Serve's fast path: the values of serve.env (a test keeps them equal).
ENV RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 OMP_WAIT_POLICY=PASSIVE
# HAProxy through the guard (stats/metrics on loopback, private admin socket, no orphans);
# relative to WORKDIR, where Ray starts.
ENV RAY_SERVE_HAPROXY_BINARY_PATH=serve_app/haproxy_guard.py
WORKDIR /home/ray/app

# Dependencies first, in their own layer: code changes do not reinstall torch.
COPY --chown=ray:users pyproject.toml README.md ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(d['dependencies'] + d['optional-dependencies']['haproxy']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url ${TORCH_INDEX_URL}} -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY --chown=ray:users model_store ./model_store
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users train_job ./train_job
COPY --chown=ray:users config.yaml config.gpu.yaml ./
RUN pip install --no-cache-dir --no-deps .

USER ray
EXPOSE 8000 8265 6379
