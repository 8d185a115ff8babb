# Every target bootstraps what it needs: its own virtualenv (.venv) with the project and its dev extras,
# and the local Kubernetes control plane binaries under a per-user cache, ~/.cache/frontier (make testbin),
# so a fresh clone reuses them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export FRONTIER_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/frontier
CACHE := $(FRONTIER_CACHE)
BIN := $(CACHE)/bin

.PHONY: help venv proto test unit envoy cluster image-test lint typecheck demo bench crds testbin epp image image-archive clean

help:
	@echo "make demo      simulated fleet + picker + Envoy + traffic -> frontier report"
	@echo "make test      lint, typecheck, then the unit, Envoy, cluster and image lanes (builds what they need)"
	@echo "make bench     full benchmark sweeps; results under bench/results/"
	@echo "make crds      regenerate crds/ from the API models"
	@echo "make proto     regenerate the picker's gRPC modules from proto/ (committed; a test checks them)"
	@echo "make testbin   build the local Kubernetes control plane into $(BIN)"
	@echo "make epp       build the real GIE EPP (v1.5.0, Go) the benchmark compares with into $(BIN)"
	@echo "make image     build the container image with buildah (base cached in $(CACHE)/image)"
	@echo "make image-archive  the image as an OCI archive, $(IMAGE_ARCHIVE)"

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing frontier[dev]"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Frontier's own gRPC API. The generated modules are committed so that installing the package (and building
# the image) needs no protoc; tests/picker/test_proto.py fails when they no longer match proto/.
PROTOS := $(shell find proto -name '*.proto')
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=picker --pyi_out=picker --grpc_python_out=picker $(PROTOS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Fast feedback first: a lint error shows in about a minute, before any Envoy or control-plane work.
unit: $(STAMP)
	$(VENV)/bin/pytest -m "not envoy and not cluster and not image"

envoy: $(STAMP)
	$(VENV)/bin/pytest -m "envoy and not cluster"

# The real-EPP cases (the gie-mode setup, gie-default pinned to the EPP's picks) need the EPP: built here,
# a no-op once current; without CI they skip when it is missing, under CI they fail.
cluster: $(STAMP) testbin epp
	PATH=$(BIN):$$PATH $(VENV)/bin/pytest -m cluster

# The image lane: builds the image first when buildah is here (the test itself skips without it, or fails
# under CI); the test reuses the image while the source tree hash it is labelled with still matches.
image-test: $(STAMP)
	@if command -v buildah >/dev/null; then $(MAKE) --no-print-directory image; \
	else echo "==> image: buildah missing; the image lane skips (fails under CI)"; fi
	$(VENV)/bin/pytest -m image

test: lint typecheck unit envoy cluster image-test

testbin:
	@bash hack/build.sh $(BIN)

# The real GIE endpoint picker, for the gie-mode benchmark; rebuilt only when missing or of another version.
epp:
	@bash hack/build-epp.sh $(BIN)

IMAGE_ARCHIVE ?= out/frontier-image.tar

image:
	@PYTHON=$(PYTHON) bash hack/image.sh build

image-archive:
	@PYTHON=$(PYTHON) bash hack/image.sh archive $(IMAGE_ARCHIVE)

crds: $(STAMP)
	$(PY) -m frontier_operator.crdgen crds/

demo: $(STAMP)
	$(VENV)/bin/frontier-bench demo --out out/demo

bench: $(STAMP) testbin epp
	$(VENV)/bin/frontier-bench all --out bench/results

clean:
	rm -rf $(VENV) out
