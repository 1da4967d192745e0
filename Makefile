# The two commands a newcomer needs: `make setup` once, then `make test`.
PY ?= python3
DEBIAN_PACKAGES := containerd runc containernetworking-plugins busybox-static iptables iproute2 \
	util-linux procps sqlite3 chromium fonts-dejavu-core tshark linux-perf gcc libc6-dev
IMAGE_DIR ?= $(CURDIR)/.cache/images

.PHONY: setup setup-debian setup-python images proto lint unit integration test bench clean

setup: setup-debian setup-python images

setup-debian:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES)

setup-python:
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'

# Offline OCI images for the harness (pause + busybox workload); no registry.
images:
	$(PY) -m integration.harness.images $(IMAGE_DIR)

proto:
	$(PY) proto/generate.py

lint:
	ruff check .
	mypy
	lint-imports

unit:
	$(PY) -m pytest tests -q

integration:
	$(PY) -m pytest integration -q

# Lint, then every test (unit + integration) in one pytest run.
test: lint
	$(PY) -m pytest -q

bench:
	$(PY) -m bench.discovery --pods 250 --output BENCHMARKS.md
	$(PY) -m bench.ops --output BENCHMARKS.md

clean:
	rm -rf .cache .mypy_cache .ruff_cache .pytest_cache
