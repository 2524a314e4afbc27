# `make demo`: train a demo model on generated data and serve it. `make test`: the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export RAY_AUTH_MODE ?= token
# Ray Serve's fast path (serve.env, its paths made absolute); `make serve SERVE_ENV=` runs without.
SERVE_ENV ?= $(shell sed -e '/^ *\#/d' -e '/^ *$$/d' -e 's|=serve_app/|=$(CURDIR)/serve_app/|' serve.env)

# Local runs only (never serve.env, which clusters share): Ray on a one-machine node address,
# 127.0.0.1, so its own servers (GCS, raylet, workers' gRPC, agents, metrics exporters) listen
# on loopback instead of every interface (docs/deploy.md, "Which ports are reachable").
# RAY_gcs_rpc_server_reconnect_timeout_s: once Ray's GCS is gone (`ray stop --force`), every
# process of the run, `serve run` itself included, exits after 5 s instead of 60 (measured: a
# `serve run` started with `&`, SIGINT ignored, lived 53 s after `ray stop --force`; 0-5 s with it).
LOCAL_RAY_ENV ?= RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_gcs_rpc_server_reconnect_timeout_s=5

# The Serve config `make serve` runs: `make serve CONFIG=config.gpu.yaml` on a GPU machine.
CONFIG ?= config.yaml

DEMO_DATA ?= data/synthetic
DEMO_IMAGES ?= 3000
DEMO_STORE ?= models
DEMO_TRAIN_ARGS ?= --backbone resnet18 --image-size 64 --epochs 4 --batch-size 32 \
	--num-workers 2 --dataloader-workers 0 --lr 2e-3

.PHONY: install test test-fast test-reliability lint format demo data train serve serve-env bench gpu-check clean \
	cluster-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,haproxy]"
	touch $@

test: install
	$(PY) -m pytest

test-fast: install  ## everything but Ray Train runs
	$(PY) -m pytest -m "not train"

test-reliability: install  ## the reliability suite alone; figures in test-output/reliability.json
	$(PY) -m pytest tests/reliability

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

data: install
	test -f $(DEMO_DATA)/list_attr_celeba.csv || \
		$(PY) -m train_job.synthetic --out $(DEMO_DATA) --num-images $(DEMO_IMAGES) --seed 0

train: data
	test -f $(DEMO_STORE)/face-attributes/latest || \
		$(PY) -m train_job --data-dir $(DEMO_DATA) --model-store $(DEMO_STORE) $(DEMO_TRAIN_ARGS)
	$(PY) -m train_job.models list --model-store $(DEMO_STORE)

serve: install
	@echo ""
	@echo "  Serving     $(CONFIG)"
	@echo "  Web page    http://127.0.0.1:8000/"
	@echo "  API         curl -F image=@$(DEMO_DATA)/img_align_celeba/000001.jpg http://127.0.0.1:8000/classify"
	@echo "  OpenAPI     http://127.0.0.1:8000/openapi.json   (try it: http://127.0.0.1:8000/docs)"
	@echo "  Dashboard   http://127.0.0.1:8265  (Serve tab: replicas and autoscaling)"
	@echo "              asks for Ray's auth token: paste the output of"
	@echo "              RAY_AUTH_MODE=token $(BIN)/ray get-auth-token   (file: ~/.ray/auth_token)"
	@echo "  Ctrl-C stops everything."
	@echo ""
	env $(LOCAL_RAY_ENV) env $(SERVE_ENV) $(BIN)/serve run $(CONFIG)

serve-env:  ## the environment `make serve` gives `serve run`, one NAME=value a line (tests read it)
	@printf '%s\n' RAY_AUTH_MODE=$(RAY_AUTH_MODE) $(LOCAL_RAY_ENV) $(SERVE_ENV)

demo: train serve

# cluster.yaml's node types as many Ray nodes on this machine (local_cluster/): the demo model on
# config.gpu.yaml, gpu-workers nodes added and removed by Ray's autoscaler. Ctrl-C stops it all.
cluster-demo: train
	env $(LOCAL_RAY_ENV) env $(SERVE_ENV) $(PY) -m local_cluster --model-uri $(DEMO_STORE)/face-attributes/latest

bench: install  ## serving benchmark: table and plot in bench/results/ (about 12 minutes)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(PY) -m bench.run

gpu-check: install  ## the GPU path measured (docs/gpu.md); without CUDA a ~2-minute CPU smoke run
	$(PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) data models ray_results .pytest_cache
